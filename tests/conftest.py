"""Shared fixtures: real servers on ephemeral loopback ports, real redis-server, time limits.

Monkey-patching comes first, as in gevent's own test suite, so that requests,
redis-py and subprocess all cooperate with the servers running in this process.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402

from geventcomet import Config  # noqa: E402
from geventcomet.server import make_server  # noqa: E402

from .helpers import Comet, RunningServer  # noqa: E402
from .services import RedisServer  # noqa: E402

#: Every test gets this many seconds unless it says otherwise: a hang fails, never stalls CI.
DEFAULT_TEST_TIMEOUT_S = 60
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT_S))


def require_binary(name: str) -> str:
    """Path of a service binary; a missing one skips the test, except in CI where it fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run: bash .ci/install-test-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def start_server():
    """Factory: start an in-process server with Config overrides; stopped gracefully after the test.

    ``backend`` is a Backend object, or a backend URL (then it is the ``backend`` setting)."""
    running: list[RunningServer] = []

    def start(backend=None, authorize=None, **overrides) -> RunningServer:
        if isinstance(backend, str):
            overrides["backend"], backend = backend, None
        overrides.setdefault("host", "127.0.0.1")
        overrides.setdefault("port", 0)
        config = Config(**overrides)
        from geventcomet import make_app
        server = make_server(config, make_app(config, backend, authorize=authorize))
        server.start()
        running.append(RunningServer(server))
        return running[-1]

    yield start
    for item in running:
        with gevent.Timeout(10):
            item.stop()


@pytest.fixture
def server(start_server) -> RunningServer:
    """A server on the memory backend with default settings."""
    return start_server()


@pytest.fixture
def comet(server) -> Comet:
    """An HTTP client for ``server``."""
    return Comet(server.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free loopback port, for the whole session."""
    binary = require_binary("redis-server")
    redis = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on the session's redis-server."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="module")
def chromium():
    from .chromium import Browser, require_browser
    require_browser()
    browser = Browser()
    yield browser
    browser.quit()


@pytest.fixture
def browser(chromium):
    yield chromium
    chromium.close_pages()

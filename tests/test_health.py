"""``/healthz`` and ``/readyz`` against a real Redis that stops and comes back.

``/healthz`` is liveness (the event loop answers, whatever the backend does); ``/readyz`` is
readiness: 503 with a reason while the backend does not answer, 200 again once it does.
The server notices Redis going and coming by itself (its pub/sub listener's connection breaks
and is retried), so the tests look at ``/readyz`` until it changes, within a bound.
"""
import gevent
import pytest
import requests

from geventcomet import Config
from geventcomet.backends import open_backend

from .conftest import require_binary
from .metrics_support import value, wait_scrape
from .services import RedisServer


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, which it may stop (the session's is shared)."""
    redis = RedisServer(require_binary("redis-server"), tmp_path)
    redis.start()
    yield redis
    redis.stop()


def wait_ready(url, status, timeout=20.0):
    """``/readyz`` until it answers ``status``; the reply. Re-asked every 100 ms, at most ``timeout``."""
    reply = None
    with gevent.Timeout(timeout, False):
        while True:
            reply = requests.get(url + "/readyz", timeout=10)
            if reply.status_code == status:
                return reply
            gevent.sleep(0.1)  # Redis's state is another process's: asking again is the only way to look
    raise AssertionError(f"/readyz never answered {status}; last: {reply and (reply.status_code, reply.text)}")


def test_readyz_is_503_with_a_reason_while_redis_is_down_and_200_after(start_server, own_redis):
    server = start_server(backend=open_backend(Config(backend=own_redis.url)))
    url = server.url
    assert requests.get(url + "/readyz", timeout=10).json() == {"ready": True}
    own_redis.stop()
    down = wait_ready(url, 503)
    assert down.json()["ready"] is False and "Redis" in down.json()["reason"]
    assert down.headers["Retry-After"] == "1"
    assert requests.get(url + "/healthz", timeout=10).json() == {"alive": True}  # alive all the same
    samples = wait_scrape(url + "/metrics", lambda s: value(s, "geventcomet_backend_up") == 0,
                          message="backend_up 0 while Redis is down")
    assert ("geventcomet_backend_clients", ()) not in samples
    notify = requests.post(url + "/notify", json={"channel": "c", "data": 1}, timeout=15)
    assert notify.status_code == 503 and "error" in notify.json()
    own_redis.start()
    assert wait_ready(url, 200).json() == {"ready": True}
    assert requests.post(url + "/notify", json={"channel": "c", "data": 2}, timeout=15).status_code == 200
    samples = wait_scrape(url + "/metrics", lambda s: value(s, "geventcomet_backend_up") == 1,
                          message="backend_up 1 once Redis is back")
    assert value(samples, "geventcomet_backend_clients") >= 0


def test_readyz_and_healthz_refuse_other_methods_and_answer_head(server):
    head = requests.head(server.url + "/readyz", timeout=10)
    assert head.status_code == 200 and head.content == b""
    post = requests.post(server.url + "/healthz", data=b"x", timeout=10)
    assert post.status_code == 405 and "error" in post.json()

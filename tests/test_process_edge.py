"""The process edge's shape: one process or a supervisor, chosen by the command; workers that
stop when their supervisor dies; backends that say whether they are shared; tune_gc once."""
import logging
import os
import select
import signal
import subprocess
import sys

import pytest

from geventcomet import Config, server
from geventcomet.backends import backend_class
from geventcomet.supervisor import check_shared_backend
from geventcomet.wsgi import create_app

from .helpers import ServerProcess


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_one_process_and_the_supervisor_are_apart():
    """server serves one process and imports no supervisor; a worker imports no supervisor."""
    done = run_python(
        "import sys, geventcomet.server, geventcomet.workers; "
        "assert 'geventcomet.supervisor' not in sys.modules, sorted(sys.modules); "
        "import geventcomet.supervisor")
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match="run_workers"):
        server.serve(Config(workers=2))


def test_workers_stop_when_their_supervisor_is_killed(redis_url):
    """SIGKILL leaves no supervisor to forward a stop: the heartbeat pipe's EPIPE tells them."""
    supervisor = ServerProcess("--workers", "2", "--backend", redis_url, ready_timeout=40)
    assert supervisor.ready is not None
    exits = [os.pidfd_open(pid) for pid in supervisor.ready.workers]  # readable once it exits
    try:
        supervisor.kill()
        pending = list(exits)
        while pending:
            readable, _, _ = select.select(pending, [], [], 20)
            assert readable, f"workers {supervisor.ready.workers} outlived their supervisor"
            pending = [fd for fd in pending if fd not in readable]
        supervisor.wait_log(r"the supervisor is gone")
    finally:
        for fd in exits:
            os.close(fd)
        for pid in supervisor.ready.workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        supervisor.stop()


def test_backends_say_whether_they_are_shared(tmp_path):
    assert backend_class("memory").shared is False
    assert backend_class(f"sqlite:///{tmp_path}/x.db").shared is False
    assert backend_class("redis://127.0.0.1:1/0").shared is True
    with pytest.raises(ValueError, match="unknown backend"):
        backend_class("nosuch://x")
    check_shared_backend(Config(workers=2, backend="redis://127.0.0.1:1/0"))
    with pytest.raises(ValueError, match="cannot use the memory backend.*needs a shared backend"):
        check_shared_backend(Config(workers=2, backend="memory"))


def test_the_wsgi_entry_point_warns_of_a_backend_that_is_not_shared(caplog):
    with caplog.at_level(logging.WARNING, logger="geventcomet.wsgi"):
        app = create_app(Config(backend="memory"))
    try:
        assert "not shared between processes" in caplog.text
        assert app.extra_headers == (("X-Geventcomet-Worker", str(os.getpid())),)
    finally:
        app.close()


def test_tune_gc_twice_counts_each_collection_once():
    """Each serve() calls tune_gc: a second call replaces the counter instead of adding one."""
    done = run_python(
        "import gc, types; from geventcomet.gctune import tune_gc\n"
        "first, second = (types.SimpleNamespace(gc_collections=0, gc_s=0.0) for _ in range(2))\n"
        "callbacks = len(gc.callbacks)\n"
        "tune_gc(first); tune_gc(second); tune_gc(second)\n"
        "assert len(gc.callbacks) == callbacks + 1, gc.callbacks\n"
        "gc.collect()\n"
        "assert (first.gc_collections, second.gc_collections) == (0, 1), (first, second)\n")
    assert done.returncode == 0, done.stderr

"""The readiness pipe (geventcomet.ready): a server says where it listens; one that fails says so.

The protocol itself in this process, then real ``geventcomet serve`` processes: one whose
log is thrown away (so nothing could be scraped from it), one that cannot listen, and a
supervisor whose worker dies before listening.
"""
import os
import socket
import subprocess
import sys

import gevent
import pytest
import requests

from geventcomet import ready
from geventcomet.ready import Announcement, ReadyPipe

from .helpers import ServerProcess

#: Bound for "reported at once": far below every start-up timeout in play (ready_timeout=120,
#: the supervisor's 30 s per worker), far above a loaded machine's process start.
AT_ONCE_S = 25


def test_an_announcement_reaches_the_parent_with_address_and_pid():
    pipe = ReadyPipe()
    childs_end = os.dup(pipe.write_fd)  # what a child inherits
    pipe.spawned()
    ready.announce(childs_end, "127.0.0.1", 8080, workers=(11, 12))
    got = pipe.wait(5)
    assert got == Announcement("127.0.0.1", 8080, os.getpid(), (11, 12))
    assert got.url == "http://127.0.0.1:8080"
    assert Announcement("::1", 80, 1).url == "http://[::1]:80"


def test_a_pipe_closed_without_a_line_means_never_ready_and_garbage_is_refused():
    closed = ReadyPipe()
    assert closed.wait(5) is None  # its only write end closed: end of file, no waiting
    garbage = ReadyPipe()
    os.write(garbage.write_fd, b'{"host": "h", "port": "80", "pid": 1}\n')
    with pytest.raises(ValueError, match="not a readiness announcement"):
        garbage.wait(5)


def test_a_silent_child_is_a_timeout_not_a_hang():
    pipe = ReadyPipe()
    keep = os.dup(pipe.write_fd)  # a child that holds the pipe open and never speaks
    try:
        with pytest.raises(TimeoutError):
            pipe.wait(0.2)
    finally:
        os.close(keep)


def test_the_fd_name_leaves_the_environment_so_children_never_inherit_it():
    environ = {ready.ENV: "7", "OTHER": "x"}
    assert ready.take_fd(environ) == 7 and environ == {"OTHER": "x"}
    assert ready.take_fd(environ) is None
    with pytest.raises(ValueError, match=ready.ENV):
        ready.take_fd({ready.ENV: "seven"})


def test_a_server_reports_its_port_through_the_pipe_with_its_log_thrown_away():
    pipe = ReadyPipe()
    proc = subprocess.Popen([sys.executable, "-m", "geventcomet", "serve", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **pipe.child_env()}, pass_fds=pipe.pass_fds)
    try:
        announced = pipe.wait(30)
        assert announced is not None and announced.pid == proc.pid and announced.host == "127.0.0.1"
        assert requests.get(announced.url + "/healthz", timeout=5).json() == {"alive": True}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_a_server_that_cannot_listen_is_reported_failed_at_once():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with gevent.Timeout(AT_ONCE_S, AssertionError("a failed start was waited for")):
            server = ServerProcess("--port", str(taken.getsockname()[1]), ready_timeout=120)
            assert server.ready is None and server.urls == []
            assert server.proc.wait(10) == 2  # a start-up mistake: exit 2 (issue 14)
        log = "".join(server.log)
        assert "cannot start" in log and "Address already in use" in log and "Traceback" not in log
    finally:
        taken.close()


def test_a_worker_that_dies_before_listening_fails_the_supervisors_start_at_once(redis_url, tmp_path):
    # Every worker process exits during interpreter start-up, before it could listen.
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nif 'GEVENTCOMET_WORKER_CONFIG' in os.environ:\n    os._exit(3)\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with gevent.Timeout(AT_ONCE_S, AssertionError("a failed worker was waited for")):
        server = ServerProcess("--workers", "2", "--backend", redis_url, env={"PYTHONPATH": path},
                               ready_timeout=120)
        assert server.ready is None
        assert server.proc.wait(15) == 1
    log = "".join(server.log)
    assert "failed before listening" in log and "cannot start: not every worker started listening" in log


def test_a_supervisor_announces_once_every_worker_listens(redis_url):
    server = ServerProcess("--workers", "2", "--backend", redis_url, ready_timeout=40)
    try:
        assert server.ready is not None and server.ready.pid == server.proc.pid
        workers = {str(pid) for pid in server.ready.workers}
        assert len(workers) == 2
        answered = {requests.get(server.url + "/stats", timeout=5).headers["X-Geventcomet-Worker"]
                    for _ in range(20)}
        assert answered <= workers  # fresh connections: only the announced workers answer
    finally:
        assert server.terminate(15) == 0
        server.stop()

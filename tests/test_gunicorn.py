"""gunicorn's gevent worker with geventcomet.wsgi's hooks drains like ``geventcomet serve``.

A poll held by a real gunicorn worker is answered at once with the reconnect reply (503,
``reconnect: true``, its cursor) when the worker is stopped (SIGTERM to the arbiter, a HUP
reload, SIGQUIT), instead of being held until ``--graceful-timeout`` and then cut off.
"""
import os
import re
import signal
import subprocess
import sys
import time

import gevent
import pytest
import requests

POLL_TIMEOUT_S, GRACEFUL_TIMEOUT_S = 25, 20


class Gunicorn:
    """``gunicorn -k gevent`` on an ephemeral port (read from its log), with or without the hooks."""

    def __init__(self, hooks: bool = True, workers: int = 1) -> None:
        config = ["-c", "python:geventcomet.wsgi"] if hooks else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "-b", "127.0.0.1:0",
             "--graceful-timeout", str(GRACEFUL_TIMEOUT_S), *config, "geventcomet.wsgi:app"],
            env={**os.environ, "GEVENTCOMET_BACKEND": "memory"}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        with gevent.Timeout(20, AssertionError("gunicorn did not boot")):
            port = None
            for line in self.proc.stderr:
                self.log.append(line)
                port = port or re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
                if port and "Booting worker" in line:
                    break
        self.url = f"http://127.0.0.1:{port.group(1)}"
        self.drainer = gevent.spawn(lambda: self.log.extend(self.proc.stderr))

    def held_poll(self) -> gevent.Greenlet:
        """A poll held by the worker (returns once the worker counts it as waiting)."""
        first = requests.get(self.url + "/register", params={"channel": "news", "timeout": 0.1}, timeout=10).json()
        held = gevent.spawn(requests.get, self.url + "/register", timeout=POLL_TIMEOUT_S + 10,
                            params={"channel": "news", "timeout": POLL_TIMEOUT_S, "since": first["cursor"],
                                    "client": first["client"]})
        with gevent.Timeout(10, AssertionError("the poll was never held")):
            while requests.get(self.url + "/stats", timeout=5).json()["waiting"] < 1:
                gevent.sleep(0.05)  # polling /stats with a deadline
        return held

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def gunicorn():
    started: list[Gunicorn] = []

    def start(**kwargs) -> Gunicorn:
        started.append(Gunicorn(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT], ids=["SIGTERM", "SIGQUIT"])
def test_a_stopping_worker_tells_held_polls_to_reconnect(gunicorn, signum):
    server = gunicorn()
    held = server.held_poll()
    stopped_at = time.monotonic()
    server.proc.send_signal(signum)
    reply = held.get(timeout=GRACEFUL_TIMEOUT_S - 5)  # far sooner than gunicorn's graceful timeout
    assert reply.status_code == 503 and reply.headers["Retry-After"]
    body = reply.json()
    assert body["reconnect"] is True and body["cursor"] and body["client"]
    assert server.proc.wait(15) == 0
    assert time.monotonic() - stopped_at < GRACEFUL_TIMEOUT_S


def test_a_hup_reload_moves_held_polls_to_the_new_worker(gunicorn):
    server = gunicorn()
    held = server.held_poll()
    old_worker = requests.get(server.url + "/stats", timeout=5).headers.get("X-Geventcomet-Worker")
    server.proc.send_signal(signal.SIGHUP)
    reply = held.get(timeout=GRACEFUL_TIMEOUT_S - 5)
    assert reply.status_code == 503 and reply.json()["reconnect"] is True
    with gevent.Timeout(15, AssertionError("no new worker answered")):
        while True:  # the old worker answers reconnect at once until gunicorn closes its listener
            again = requests.get(server.url + "/register", params={"channel": "news", "timeout": 0.1}, timeout=10)
            if again.status_code == 200:
                break
            assert again.status_code == 503 and again.json()["reconnect"] is True
            gevent.sleep(0.05)  # a client's pacing of its retry
    assert again.headers.get("X-Geventcomet-Worker") != old_worker


def test_without_the_hooks_a_held_poll_waits_for_the_graceful_timeout(gunicorn):
    """What the hooks fix: gunicorn alone holds the poll past the stop (here cut short by a kill)."""
    server = gunicorn(hooks=False)
    held = server.held_poll()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(gevent.Timeout):
        held.get(timeout=3)

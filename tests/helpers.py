"""Test helpers: an HTTP client for the protocol, and servers run in-process or as processes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import gevent
import requests
from gevent.event import Event

from geventcomet.ready import Announcement, ReadyPipe
from geventcomet.server import CometServer


class Changes:
    """Lets a test wait for a condition on state that other greenlets change, without polling.

    The greenlets call :meth:`changed` after each change; :meth:`wait_until` re-checks
    the condition only then, within a bound.
    """

    def __init__(self) -> None:
        self._event = Event()

    def changed(self) -> None:
        self._event.set()

    def wait_until(self, condition, timeout: float, message: str) -> None:
        with gevent.Timeout(timeout, AssertionError(message)):
            while True:
                self._event.clear()
                if condition():
                    return
                self._event.wait()


def wait_parked(hub, count: int, timeout: float = 5.0) -> None:
    """Block until exactly ``count`` requests are parked in ``hub``: woken by its changes, not polled."""
    with gevent.Timeout(timeout, AssertionError(f"never {count} waiting (now {hub.waiting})")):
        while True:
            changed = hub.next_change()
            if hub.waiting == count:
                return
            changed.wait()


class Clock:
    """A wall clock the test moves by hand (``clock.now += 60``), for code that takes ``clock=``."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Comet:
    """A small blocking client speaking the geventcomet protocol over real HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def register(self, *channels: str, timeout: float | None = 5, expect: int = 200, **params) -> dict:
        query = dict(params)
        if channels:
            query["channel"] = list(channels)
        if timeout is not None:
            query["timeout"] = timeout
        reply = self.http.get(self.url + "/register", params=query, timeout=(timeout or 0) + 10)
        assert reply.status_code == expect, (reply.status_code, reply.text)
        return reply.json()

    def notify(self, channel: str | None = None, data=None, *, client: str | None = None,
               expect: int = 200, headers: dict | None = None) -> dict:
        body = {"data": data}
        if channel is not None:
            body["channel"] = channel
        if client is not None:
            body["client"] = client
        reply = self.http.post(self.url + "/notify", json=body, headers=headers or {}, timeout=10)
        assert reply.status_code == expect, (reply.status_code, reply.text)
        return reply.json()

    def stats(self) -> dict:
        return self.http.get(self.url + "/stats", timeout=10).json()


class RunningServer:
    """An in-process server started by the ``start_server`` fixture."""

    def __init__(self, server: CometServer) -> None:
        self.server = server
        self.app = server.app
        self.hub = server.app.hub
        self.port = server.server_port
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_waiting(self, count: int, timeout: float = 5.0) -> None:
        """Block until exactly ``count`` requests are parked (woken by the hub, not polled)."""
        wait_parked(self.hub, count, timeout)

    def stop(self) -> None:
        if not self.server.closed:
            self.server.stop_gracefully()


class ServerProcess:
    """``python -m geventcomet serve`` in a child process, on an ephemeral port.

    It announces where it listens over a readiness pipe (:mod:`geventcomet.ready`), which
    the constructor waits for: ``ready`` is the announcement (a supervisor's carries its
    workers' pids), ``url`` its address. A server that fails before listening closes the
    pipe: the constructor returns at once with ``ready`` None and ``urls`` empty, its log
    complete. Its log is drained by a greenlet.
    """

    def __init__(self, *args: str, env: dict | None = None, ready_timeout: float = 40,
                 python_args: tuple[str, ...] = ("-m", "geventcomet")) -> None:
        self.log: list[str] = []
        self._new_line = Event()
        pipe = ReadyPipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *python_args, "serve", "--port", "0", *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env={**os.environ, **(env or {}), **pipe.child_env()}, pass_fds=pipe.pass_fds)
        except BaseException:
            pipe.close()
            raise
        self._reader = gevent.spawn(self._drain)
        try:
            self.ready: Announcement | None = pipe.wait(ready_timeout)
        except (TimeoutError, ValueError) as exc:
            self.kill()
            raise AssertionError(f"server did not start ({exc}):\n" + "".join(self.log)) from None
        self.urls = [self.ready.url] if self.ready else []
        if self.ready is None:  # it will not listen: let its last words reach the log
            self._reader.join(timeout=ready_timeout)

    @property
    def url(self) -> str:
        return self.urls[0]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self._new_line.set()
        self._new_line.set()

    def wait_log(self, pattern: str, timeout: float = 10, since: int = 0) -> str:
        """Block until a log line matches ``pattern`` (from line ``since`` on); return it."""
        deadline = gevent.Timeout(timeout)
        try:
            with deadline:
                seen = since
                while True:
                    self._new_line.clear()
                    for line in self.log[seen:]:
                        if re.search(pattern, line):
                            return line
                    seen = len(self.log)
                    if self.proc.poll() is not None and self._reader.dead:
                        raise AssertionError(f"server exited; no log line like {pattern!r}")
                    self._new_line.wait()
        except gevent.Timeout as expired:
            if expired is not deadline:
                raise
            raise AssertionError(f"no log line like {pattern!r}:\n" + "".join(self.log)) from None

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        self.proc.kill()
        return self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(timeout=5)

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
        with gevent.Timeout(timeout, AssertionError(f"never {count} waiting (now {self.hub.waiting})")):
            while True:
                changed = self.hub.next_change()
                if self.hub.waiting == count:
                    return
                changed.wait()

    def stop(self) -> None:
        if not self.server.closed:
            self.server.stop_gracefully()


_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)/")


class ServerProcess:
    """``python -m geventcomet serve`` in a child process, on an ephemeral port.

    Its log is drained by a greenlet; ``url`` is known once it logs that it listens.
    """

    def __init__(self, *args: str, env: dict | None = None, ready_timeout: float = 15,
                 python_args: tuple[str, ...] = ("-m", "geventcomet")) -> None:
        self.log: list[str] = []
        self.urls: list[str] = []
        self._ready = Event()
        self._new_line = Event()
        self.proc = subprocess.Popen(
            [sys.executable, *python_args, "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self._reader = gevent.spawn(self._drain)
        if not self._ready.wait(ready_timeout):
            self.kill()
            raise AssertionError("server did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return self.urls[0]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self._new_line.set()
            match = _LISTENING.search(line)
            if match:
                self.urls.append(f"http://{match.group(1)}:{match.group(2)}")
                self._ready.set()
        self._ready.set()
        self._new_line.set()

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        """Block until a log line matches ``pattern``; return it."""
        with gevent.Timeout(timeout, AssertionError(f"no log line like {pattern!r}:\n" + "".join(self.log))):
            seen = 0
            while True:
                self._new_line.clear()
                for line in self.log[seen:]:
                    if re.search(pattern, line):
                        return line
                seen = len(self.log)
                if self.proc.poll() is not None and self._reader.dead:
                    raise AssertionError(f"server exited; no log line like {pattern!r}")
                self._new_line.wait()

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

"""Support for the Bayeux tests: real faye and cometd clients in Node, and a raw Bayeux client.

:class:`Agent` runs ``tests/bayeux/agent.mjs`` (the unmodified npm clients, WebSocket
disabled): commands go to its stdin, its events are read by a greenlet, and a test
waits on them with a bound (never a sleep). :class:`Bayeux` speaks Bayeux with plain
HTTP requests, for the protocol tests and the hostile ones.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import gevent
import pytest
import requests
from gevent.event import Event

from .conftest import IN_CI

AGENT_DIR = Path(__file__).parent / "bayeux"


def require_agent() -> None:
    """Skip (fail in CI) unless node and the npm clients are installed."""
    missing = None
    if shutil.which("node") is None:
        missing = "node"
    elif not (AGENT_DIR / "node_modules" / "faye").is_dir() or not (AGENT_DIR / "node_modules" / "cometd").is_dir():
        missing = "the npm faye/cometd clients"
    if missing:
        message = f"{missing} not installed (run: bash .ci/install-test-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class Agent:
    """One real Bayeux client process (``kind``: ``faye`` or ``cometd``)."""

    def __init__(self, kind: str, url: str, token: str | None = None) -> None:
        require_agent()
        self.kind = kind
        self.events: list[dict] = []
        self._changed = Event()
        args = ["node", str(AGENT_DIR / "agent.mjs"), kind, url.rstrip("/") + "/bayeux", *([token] if token else [])]
        self.proc = subprocess.Popen(args, cwd=AGENT_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self.stderr: list[str] = []
        self._readers = [gevent.spawn(self._read), gevent.spawn(self._drain_stderr)]
        self.wait_for(lambda e: e["ev"] == "ready", 20, "ready")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.stderr.append("stdout: " + line)
            self._changed.set()
        self._changed.set()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, op: str, **fields) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def matching(self, predicate) -> list[dict]:
        return [event for event in self.events if predicate(event)]

    def wait_for(self, predicate, timeout: float, what: str, count: int = 1) -> list[dict]:
        """Block until ``count`` events match ``predicate`` (woken by each new event)."""
        with gevent.Timeout(timeout, False):
            while True:
                self._changed.clear()
                found = self.matching(predicate)
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None and self._readers[0].dead:
                    break
                failed = self.matching(lambda e: e["ev"] == "failed")
                if failed:
                    raise AssertionError(f"{self.kind}: {failed[0]}\n{''.join(self.stderr[-20:])}")
                self._changed.wait()
        got = len(self.matching(predicate))
        raise AssertionError(f"{self.kind}: {got}/{count} of {what}; last events {self.events[-5:]}\n"
                             + "".join(self.stderr[-20:]))

    def subscribe(self, channel: str, timeout: float = 15) -> None:
        self.send("subscribe", channel=channel)
        self.wait_for(lambda e: e["ev"] == "subscribed" and e["channel"] == channel, timeout, f"subscribe {channel}")

    def publish(self, channel: str, count: int = 1, data=None, timeout: float = 30) -> None:
        """Publish ``count`` messages ``{"n": i, "data": data}``, each acknowledged, and wait for the last."""
        before = len(self.matching(lambda e: e["ev"] == "published" and e["channel"] == channel))
        self.send("publish", channel=channel, count=count, data=data)
        self.wait_for(lambda e: e["ev"] == "published" and e["channel"] == channel, timeout,
                      f"publish to {channel}", count=before + 1)

    def messages(self, sub: str | None = None) -> list[dict]:
        return self.matching(lambda e: e["ev"] == "message" and (sub is None or e["sub"] == sub))

    def wait_messages(self, count: int, sub: str | None = None, timeout: float = 30) -> list[dict]:
        return self.wait_for(lambda e: e["ev"] == "message" and (sub is None or e["sub"] == sub),
                             timeout, f"messages of {sub or 'any'}", count)

    def handshakes(self) -> int:
        return len(self.matching(lambda e: e["ev"] == "handshake"))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.stdin.close()
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(timeout=5)


@pytest.fixture
def agents():
    """Factory of :class:`Agent`; every one is stopped after the test."""
    started: list[Agent] = []

    def start(kind: str, url: str, token: str | None = None) -> Agent:
        started.append(Agent(kind, url, token))
        return started[-1]

    yield start
    for agent in started:
        agent.close()


class Bayeux:
    """A raw Bayeux client over HTTP: no retries, no extensions, every reply returned."""

    def __init__(self, url: str, path: str = "/bayeux") -> None:
        self.url = url.rstrip("/") + path
        self.http = requests.Session()
        self.client_id: str | None = None
        self._id = 0

    def post(self, messages, expect: int = 200, **kwargs) -> list:
        reply = self.http.post(self.url, json=messages, timeout=30, **kwargs)
        assert reply.status_code == expect, (reply.status_code, reply.text)
        return reply.json()

    def message(self, channel: str, **fields) -> dict:
        self._id += 1
        message = {"channel": channel, "id": str(self._id), **fields}
        if self.client_id is not None and channel != "/meta/handshake":
            message["clientId"] = self.client_id
        return message

    def handshake(self, **fields) -> dict:
        [reply] = self.post([self.message("/meta/handshake", version="1.0",
                                          supportedConnectionTypes=["long-polling"], **fields)])
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        return reply

    def connect(self, timeout_ms: int | None = 0) -> list:
        advice = {} if timeout_ms is None else {"advice": {"timeout": timeout_ms}}
        return self.post([self.message("/meta/connect", connectionType="long-polling", **advice)])

    def subscribe(self, *names: str) -> dict:
        [reply] = self.post([self.message("/meta/subscribe", subscription=list(names))])
        return reply

    def publish(self, channel: str, data) -> dict:
        [reply] = self.post([self.message(channel, data=data)])
        return reply

    def start(self, *names: str) -> None:
        """Handshake, a first connect (answered at once), and subscribe."""
        self.handshake()
        self.connect()
        if names:
            assert self.subscribe(*names)["successful"]

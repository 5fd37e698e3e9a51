"""Support for the Python client's tests: a fault-injecting HTTP proxy, a steady publisher,
a subscriber that collects in a greenlet, and Python run in a child process.

The test process is gevent-monkey-patched (conftest), so everything here is greenlets; the
flavours that must run unpatched (threads, asyncio) run in a child process (:func:`run_python`).
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import requests
from gevent.event import Event
from gevent.server import StreamServer

REPO = Path(__file__).resolve().parent.parent


def _read_message(sock, buffer: bytearray) -> bytes | None:
    """One HTTP/1.1 message (head and Content-Length body) from ``sock``; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    message = bytes(buffer[: head_end + length])
    del buffer[: head_end + length]
    return message


class FaultProxy:
    """An HTTP proxy to ``upstream`` (host, port) that, for every ``every``-th request, forwards
    the request, waits for the reply, and closes the client's connection instead of passing
    the reply on: the request was served, the client never hears it. Counts requests.
    ``upstream`` may be changed: later connections go there (a server restarted elsewhere).
    ``connections`` counts the client's connections; with ``tls`` (certfile, keyfile) the
    proxy speaks HTTPS to the client."""

    def __init__(self, upstream: tuple[str, int], every: int = 3, tls: tuple[str, str] | None = None) -> None:
        self.upstream, self.every = upstream, every
        self.requests = self.dropped = self.connections = 0
        ssl_args = {}
        if tls:
            ssl_args["ssl_context"] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_args["ssl_context"].load_cert_chain(*tls)
        self.server = StreamServer(("127.0.0.1", 0), self._serve, **ssl_args)
        self.server.start()
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.server.server_port}"

    def _serve(self, client, _address) -> None:
        self.connections += 1
        try:
            upstream = gevent.socket.create_connection(self.upstream, timeout=60)
        except OSError:  # the server is down (being restarted): the client sees a closed connection
            client.close()
            return
        from_client, from_upstream = bytearray(), bytearray()
        try:
            while True:
                request = _read_message(client, from_client)
                if request is None:
                    return
                self.requests += 1
                upstream.sendall(request)
                reply = _read_message(upstream, from_upstream)
                if reply is None:
                    return
                if self.requests % self.every == 0:
                    self.dropped += 1
                    return  # the reply is dropped with the connection
                client.sendall(reply)
                if b"text/event-stream" in reply.split(b"\r\n\r\n", 1)[0]:  # a stream: pass it on as it comes
                    for chunk in iter(lambda: bytes(from_upstream) or upstream.recv(65536), b""):
                        from_upstream.clear()
                        client.sendall(chunk)
                    return
        finally:
            upstream.close()
            client.close()

    def close(self) -> None:
        self.server.stop(timeout=1)


class Collector:
    """A blocking Subscriber iterated in a greenlet: ``items`` grows; ``wait_for(n)``."""

    def __init__(self, subscriber) -> None:
        self.subscriber = subscriber
        self.items: list = []
        self._changed = Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        for item in self.subscriber:
            self.items.append(item)
            self._changed.set()

    @property
    def events(self) -> list:
        return [item for item in self.items if hasattr(item, "data")]

    def wait_for(self, count: int, timeout: float = 30) -> None:
        with gevent.Timeout(timeout, AssertionError(f"{len(self.events)} of {count} events arrived")):
            while len(self.events) < count:
                self._changed.clear()
                if self.greenlet.dead:
                    self.greenlet.get()
                    raise AssertionError("the subscriber stopped")
                self._changed.wait(1)

    def stop(self) -> None:
        self.subscriber.close()
        self.greenlet.join(timeout=40)
        self.greenlet.kill()


class SteadyPublisher:
    """Publishes ``count`` events to ``channel`` at about ``rate``/s through a
    :class:`~geventcomet.client.Publisher`, each with its own key; ``ids`` are the answers."""

    def __init__(self, publisher, channel: str, count: int, rate: float = 500.0) -> None:
        self.publisher, self.channel, self.count, self.rate = publisher, channel, count, rate
        self.ids: list[int] = []
        self._changed = Event()
        self.greenlet = gevent.spawn(self._run)
        self.greenlet.link(lambda _: self._changed.set())

    def _run(self) -> None:
        pause = 1.0 / self.rate
        for n in range(self.count):
            self.ids.append(self.publisher.publish(self.channel, n))
            self._changed.set()
            gevent.sleep(pause)  # pacing a bounded load loop, not synchronising

    def wait_published(self, count: int, timeout: float = 60) -> None:
        with gevent.Timeout(timeout, AssertionError(f"{len(self.ids)} of {count} published")):
            while len(self.ids) < count:
                if self.greenlet.dead:
                    self.greenlet.get()
                    raise AssertionError(f"the publisher stopped after {len(self.ids)}")
                self._changed.clear()
                self._changed.wait()

    def join(self, timeout: float = 120) -> None:
        self.greenlet.get(timeout=timeout)


def run_python(code: str, *args: str, timeout: float = 120, env: dict | None = None) -> dict:
    """Run ``code`` in a plain (unpatched) Python child; it prints one JSON line last: returned."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def publish_ids(url: str, channel: str, count: int, token: str | None = None) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return [requests.post(url + "/notify", json={"channel": channel, "data": n}, headers=headers,
                          timeout=10).json()["id"] for n in range(count)]

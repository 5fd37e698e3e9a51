"""Resources a client can make the server hold: every one bounded, counted and refused clearly.

Issue 11: a busy SSE stream kept its registration only on heartbeats (item 5), streams that
did not read escaped ``--max-waiting`` (item 7), ``/stats?waiting`` was a public way to burn
CPU (item 10); readiness tells a load balancer when the backend fails or the server drains.
"""
import json
import socket

import gevent
import requests

from geventcomet import Config
from geventcomet.backends.memory import MemoryBackend

from .helpers import Comet


def read_frame(lines) -> dict:
    """The next SSE frame of a ``requests`` line iterator, as {field: value}."""
    frame: dict = {}
    for raw in lines:
        line = raw.decode()
        if not line:
            if frame:
                return frame
            continue
        name, _, value = line.partition(": ")
        frame[name] = value
    raise AssertionError("the stream ended")


def test_a_busy_stream_keeps_its_registration_past_the_client_ttl(start_server):
    # The backend's clock is driven by the test: ten minutes pass, one event a minute, and the
    # stream never goes quiet long enough for a heartbeat. Before the fix it expired at 5 minutes.
    now = [1000.0]
    settings = dict(client_ttl_s=300.0)
    backend = MemoryBackend(Config(**settings), clock=lambda: now[0])
    server = start_server(backend=backend, **settings)
    comet = Comet(server.url)
    with requests.get(server.url + "/stream?channel=busy", stream=True, timeout=10) as stream:
        lines = stream.iter_lines()
        client = json.loads(read_frame(lines)["data"])["client"]
        for minute in range(10):
            now[0] += 60
            comet.notify("busy", minute)
            assert json.loads(read_frame(lines)["data"])["data"] == minute
            backend.expire_idle()
            assert backend.is_registered(client), f"expired after {minute + 1} busy minutes"
        comet.notify(client=client, data="still here")
        assert json.loads(read_frame(lines)["data"])["data"] == "still here"


def test_a_stream_that_does_not_read_counts_against_max_waiting(start_server):
    server = start_server(max_waiting=1)
    comet = Comet(server.url)
    stream = server.app.service.streams
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /stream?channel=big HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_waiting(1)
        for i in range(150):  # 9 MB: more than the kernel's socket buffers take (4 MB at most)
            comet.notify("big", "x" * 60_000)
        with gevent.Timeout(10, AssertionError("the stream never blocked writing")):
            while not (stream.open == 1 and stream.parked == 0):
                server.hub.next_change().wait()
        # Nothing is parked, but the stream is held: the capacity is used.
        assert server.hub.waiting == 0
        reply = requests.get(server.url + "/register", params={"channel": "c", "timeout": 0}, timeout=10)
        assert reply.status_code == 503 and "capacity" in reply.json()["error"]
        assert comet.stats()["held"] == 1


def test_stats_waiting_is_a_test_hook_that_is_off_by_default(server):
    reply = requests.get(server.url + "/stats", params={"waiting": 1, "timeout": 5}, timeout=10)
    assert reply.status_code == 404
    assert "--test-hooks" in reply.json()["error"]


def test_stats_waiting_is_bounded_and_answers_when_the_count_is_reached(start_server):
    server = start_server(test_hooks=True)
    comet = Comet(server.url)
    # Nine at once: none can be answered before a poll is parked, so the one refused (503) is
    # the first to finish, and the eight others are held until the count is reached.
    waits = [gevent.spawn(requests.get, server.url + "/stats", params={"waiting": 1, "timeout": 20}, timeout=30)
             for _ in range(9)]
    (first,) = gevent.wait(waits, count=1, timeout=15)
    assert first.get().status_code == 503
    poll = gevent.spawn(comet.register, "c", timeout=10)
    replies = [w.get(timeout=15) for w in waits if w is not first]
    assert [r.status_code for r in replies] == [200] * 8
    assert all(r.json()["waiting"] == 1 for r in replies)
    comet.notify("c", "done")
    assert poll.get(timeout=10)["events"][0]["data"] == "done"
    bad = requests.get(server.url + "/stats", params={"waiting": "\u00b2"}, timeout=10)
    assert bad.status_code == 400


def test_readiness_turns_503_while_the_server_drains(start_server):
    server = start_server()
    assert requests.get(server.url + "/readyz", timeout=5).json() == {"ready": True}
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    server.hub.closing = True  # what a graceful stop sets first
    try:
        reply = requests.get(server.url + "/readyz", timeout=5)
        assert reply.status_code == 503 and "draining" in reply.json()["reason"]
    finally:
        server.hub.closing = False


def park_polls(server, count: int) -> list:
    """``count`` raw connections, each holding a poll."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /register?channel=held&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)
    server.wait_waiting(count)
    return socks


def refused_at_once(server) -> dict:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"Retry-After: 1" in head
    return json.loads(body)


def test_connections_past_max_connections_are_refused_at_once(start_server):
    server = start_server(max_connections=3)
    socks = park_polls(server, 3)
    try:
        assert "3 connections" in refused_at_once(server)["error"]
        assert server.server.connection_stats()["connections"] == 3
    finally:
        for sock in socks:
            sock.close()


def test_connections_past_the_per_address_bound_are_refused(start_server):
    server = start_server(max_connections_per_ip=2)
    socks = park_polls(server, 2)
    try:
        assert "--max-connections-per-ip" in refused_at_once(server)["error"]
    finally:
        for sock in socks:
            sock.close()

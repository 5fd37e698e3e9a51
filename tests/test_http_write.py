"""A reply the client does not take within ``write_timeout_s`` drops the client (issue 11 item 7, writing half).

Before: there was no write deadline; a client that never read a 64 MB backlog
reply pinned it (and its greenlet) until it read or left.
"""
import json
import logging
import socket

import gevent
import pytest

from geventcomet import misbehaviour

from .test_faults import raw_request, read_reply

EVENT = "x" * 60_000
EVENTS = 120  # ~7 MB: more than the kernel buffers of both ends (tcp_wmem max 4 MB, rcvbuf 4 KB)


def notify(port: int, channel: str) -> None:
    body = json.dumps({"channel": channel, "data": EVENT}).encode()
    status, _, _ = raw_request(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert status == 200


def slow_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.fixture
def slow_server(start_server, monkeypatch, caplog):
    errors = []
    monkeypatch.setattr(gevent.get_hub(), "handle_error", lambda *args: errors.append(args))
    server = start_server(write_timeout_s=0.5, max_reply_bytes=16 * 1024 * 1024, max_body_bytes=100_000)
    yield server
    assert errors == [], errors
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("path, version", [("/register?channel=big&since=0&timeout=0", "HTTP/1.1"),
                                            ("/register?channel=big&since=0&timeout=0", "HTTP/1.0"),
                                            ("/stream?channel=big&since=0", "HTTP/1.1")])
def test_a_client_that_never_reads_a_big_reply_is_dropped_and_others_are_served(slow_server, path, version):
    for _ in range(EVENTS):
        notify(slow_server.port, "big")
    before = misbehaviour.clients.counts.get("slow-reader", 0)
    sock = slow_socket(slow_server.port)
    sock.sendall(f"GET {path} {version}\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(1) == b"H"  # the reply has begun: the server is writing it
    assert slow_server.server.open_connections.join(timeout=10)  # its greenlet ended: the reply is freed
    assert misbehaviour.clients.counts["slow-reader"] == before + 1
    with pytest.raises(ConnectionResetError):  # dropped with a reset: the kernel's queue is freed too
        while sock.recv(1 << 20):
            pass
    sock.close()
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=10) as other:
        other.sendall(b"GET /register?channel=big&since=0&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_reply(other)  # a reader that reads gets the whole reply
    assert status == 200 and len(json.loads(body)["events"]) == EVENTS

"""Request bodies have a deadline; broken bodies are a 4xx, never a 500 or a traceback (issue 11 items 8, 14).

Before: a POST with Content-Length and no body, a body trickled at 1 byte/s, an
``Expect: 100-continue`` with no body and a chunked body without its last chunk
were open after 160 s; a short body answered 500 with a traceback.
"""
import json
import logging
import socket

import gevent
import pytest

from geventcomet import misbehaviour

from .helpers import Comet
from .test_faults import read_reply

BODY_TIMEOUT_S = 0.3
NOTIFY = b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture
def quick(start_server, monkeypatch):
    """A server with a short body deadline; fails the test if the hub ever reports an error."""
    errors = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda *args: errors.append(args))
    server = start_server(body_timeout_s=BODY_TIMEOUT_S)
    yield server
    assert errors == [], errors  # a traceback pywsgi or gevent would print


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]


def expect_408_and_close(sock: socket.socket) -> None:
    status, headers, body = read_reply(sock)
    assert status == 408 and headers["connection"] == "close"
    assert "did not arrive within" in json.loads(body)["error"]
    assert_closed(sock)


def assert_closed(sock: socket.socket) -> None:
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:  # a reset (we sent after the close) is a close too
        pass


def test_a_notify_whose_body_never_comes_gets_408_at_the_deadline(quick, caplog):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(NOTIFY + b"Content-Length: 30\r\n\r\n")
        expect_408_and_close(sock)
    no_tracebacks(caplog)


def test_a_trickled_body_gets_408_however_steadily_it_trickles(quick):
    body = b'{"channel": "t", "data": "' + b"x" * 100 + b'"}'
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(NOTIFY + b"Content-Length: %d\r\n\r\n" % len(body))

        def trickle() -> bool:
            try:
                for byte in body:
                    sock.sendall(bytes([byte]))
                    gevent.sleep(0.05)  # pacing the attack; the 408 is awaited below
            except OSError:
                return True
            return False

        trickler = gevent.spawn(trickle)
        expect_408_and_close(sock)
        assert trickler.get(timeout=10)  # the server closed mid-trickle
    assert quick.app.stats.published == 0


def test_expect_100_continue_without_a_body_gets_408_and_is_counted_meanwhile(quick):
    comet = Comet(quick.url)
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(NOTIFY + b"Expect: 100-continue\r\nContent-Length: 30\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # the app is reading now
        stats = comet.stats()
        assert stats["reading_requests"] == 1 and stats["connections"] == 2  # this one and /stats's
        expect_408_and_close(sock)
    comet.http.close()


def test_a_chunked_body_without_its_last_chunk_is_closed_at_the_deadline(quick):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        status, _, _ = read_reply(sock)  # /stats answers without reading the body ...
        assert status == 200
        assert_closed(sock)  # ... and its discard gives up at the deadline


def test_a_body_shorter_than_its_length_gets_400_not_500(quick, caplog):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(NOTIFY + b"Content-Length: 100\r\n\r\n{\"channel\"")
        sock.shutdown(socket.SHUT_WR)
        status, _, body = read_reply(sock)
    assert status == 400 and "ended early" in json.loads(body)["error"]
    no_tracebacks(caplog)


def test_a_client_leaving_mid_body_is_a_note_not_a_traceback(quick, caplog):
    before = misbehaviour.clients.counts.get("body-incomplete", 0)
    sock = socket.create_connection(("127.0.0.1", quick.port), timeout=10)
    sock.sendall(NOTIFY + b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(b'{"channel": ')
    sock.close()
    assert quick.server.open_connections.join(timeout=5)  # the handler ended
    assert misbehaviour.clients.counts.get("body-incomplete", 0) == before + 1
    no_tracebacks(caplog)
    assert Comet(quick.url).notify("after", 1)["id"] == 1  # and others are served

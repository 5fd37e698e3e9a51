"""The lean path (issue 15): polls and notifies read in one recv, everything else left to pywsgi.

The parser never refuses: what it does not take goes to pywsgi's path with the same
bytes and deadline, so the refusals of tests/test_http_*.py still hold. Here: what it
takes, what it leaves, that pipelining and split heads still work, and that a parked
lean poll holds no pywsgi reader (the 1 KiB buffer a parked client used to keep).
"""
import gc
import json
import socket

import gevent
import pytest

from geventcomet import misbehaviour
from geventcomet.fasthead import lean_environ, parse_request
from geventcomet.handler import CometHandler

from .helpers import Comet
from .test_faults import read_reply

POLL = b"GET /register?channel=lean&timeout=%d HTTP/1.1\r\nHost: x\r\n\r\n"


def notify_bytes(channel: str, data: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"channel": channel, "data": data}).encode()
    return (b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def live_handlers(server) -> list[CometHandler]:
    """This server's handlers of open connections (pywsgi drops ``socket`` at the end)."""
    return [o for o in gc.get_objects() if isinstance(o, CometHandler) and o.server is server.server
            and "socket" in o.__dict__]


def test_a_whole_poll_is_taken_with_what_follows_it():
    request = parse_request(POLL % 5 + b"GET /x", 8192)
    assert request is not None
    assert (request.method, request.path, request.query) == ("GET", "/register", "channel=lean&timeout=5")
    assert request.headers == {"host": "x"} and request.rest == b"GET /x" and not request.close


def test_a_whole_notify_is_taken_with_its_body():
    raw = notify_bytes("c", "d")
    request = parse_request(raw + b"\r\n", 8192)
    assert request is not None and json.loads(request.body) == {"channel": "c", "data": "d"}
    assert request.rest == b"\r\n"
    env = lean_environ(request, None, lambda: None)
    assert env["CONTENT_LENGTH"] == str(len(request.body)) and env["CONTENT_TYPE"] == "application/json"
    assert "HTTP_CONTENT_LENGTH" not in env and env["HTTP_HOST"] == "x"
    assert env["wsgi.input"].read(3) + env["wsgi.input"].read() == request.body


@pytest.mark.parametrize("raw", [
    b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\n",  # the head is not all here
    b"GET /register?channel=a HTTP/1.0\r\n\r\n",  # HTTP/1.0: pywsgi's path
    b"HEAD /register?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # a 400 to explain
    b"GET /register?channel=a HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",  # bare LF
    b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",  # a GET body
    b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",  # the body is not all here
    b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /notify HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 02\r\n\r\n{}",
    b"GET /register?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # 414 to explain
])
def test_anything_else_is_left_to_pywsgi(raw):
    assert parse_request(raw, 8192) is None


def test_a_remembered_header_block_answers_as_a_fresh_parse():
    # The header block's parse is kept by its bytes; what depends on the request line
    # (method, target) or the body must still be judged per request.
    block = b"Host: x\r\nContent-Length: 2\r\n\r\n"
    for _ in range(2):
        assert parse_request(b"GET /register?channel=a HTTP/1.1\r\n" + block + b"{}", 8192) is None
        post = parse_request(b"POST /notify HTTP/1.1\r\n" + block + b"{}", 8192)
        assert post is not None and post.body == b"{}"
        assert parse_request(b"POST /notify HTTP/1.1\r\n" + block + b"{", 8192) is None
        assert parse_request(b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 8192) is None
        poll = parse_request(POLL % 7, 8192)
        assert poll is not None and poll.query == "channel=lean&timeout=7" and poll.headers == {"host": "x"}


def test_a_head_over_the_size_limit_is_left_to_pywsgi():
    raw = b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 600 + b"\r\n\r\n"
    assert parse_request(raw, 8192) is not None
    assert parse_request(raw, 500) is None  # pywsgi's reader answers 431


def test_a_notify_and_a_poll_pipelined_in_one_send_are_both_answered(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(POLL % 0)  # a cursor at the end of the channel
        pending = bytearray()
        status, _, body = read_reply(sock, pending)
        cursor = json.loads(body)["cursor"]
        poll = b"GET /register?channel=lean&timeout=5&since=%s HTTP/1.1\r\nHost: x\r\n\r\n" % cursor.encode()
        sock.sendall(notify_bytes("lean", "one") + poll)
        status, headers, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["id"] == 1 and "connection" not in headers
        status, _, body = read_reply(sock, pending)
        assert status == 200 and [e["data"] for e in json.loads(body)["events"]] == ["one"]


def test_a_head_split_over_sends_takes_pywsgis_path_and_the_connection_goes_on(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        pending = bytearray()
        sock.sendall(b"GET /register?channel=lean&timeout=0 HTTP/1.1\r\n")
        gevent.idle()  # the server reads the first piece on its own
        sock.sendall(b"Host: x\r\n\r\n")
        status, _, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["events"] == []
        assert [h for h in live_handlers(server) if h.rfile is not None]
        sock.sendall(POLL % 0)
        status, _, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["timeout"] is True


def test_a_fault_in_a_lean_sized_head_still_gets_pywsgis_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /register?channel=a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
        status, headers, body = read_reply(sock)
        assert status == 400 and headers["connection"] == "close"
        assert "Host" in json.loads(body)["error"]


def test_a_silent_connection_still_gets_408(start_server):
    server = start_server(header_timeout_s=0.3)
    before = misbehaviour.clients.counts.get("head-timeout", 0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /register?channel=a HT")  # then nothing
        status, _, body = read_reply(sock)
        assert status == 408 and "error" in json.loads(body)
    assert misbehaviour.clients.counts["head-timeout"] == before + 1


def test_a_refused_notify_on_the_lean_path_closes_the_connection(start_server):
    server = start_server(notify_token="s3cret")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(notify_bytes("lean", "x", b"Authorization: Bearer nope\r\n"))  # refused before its body
        status, headers, body = read_reply(sock)
        assert status == 401 and headers["connection"] == "close" and "error" in json.loads(body)
        assert sock.recv(100) == b""
    good = notify_bytes("lean", "y", b"Authorization: Bearer s3cret\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(good)
        status, _, body = read_reply(sock)
        assert status == 200 and json.loads(body)["id"] == 1


def test_parked_lean_polls_hold_no_pywsgi_reader(server):
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(POLL % 60)
        server.wait_waiting(20)
        handlers = live_handlers(server)
        assert len(handlers) == 20
        assert all(handler.rfile is None for handler in handlers)
        assert Comet(server.url).notify("lean", "go")["woken"] == 20
        for sock in socks:
            status, _, body = read_reply(sock)
            assert status == 200 and json.loads(body)["events"][0]["data"] == "go"
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("path, taken", [("/bayeux", True), ("/bayeux/connect", True), ("/bayeuxx", False)])
def test_a_whole_bayeux_batch_is_taken(path, taken):
    body = b'[{"channel": "/meta/handshake", "version": "1.0"}]'
    raw = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
           % (path.encode(), len(body)) + body)
    request = parse_request(raw, 8192)
    assert (request is not None) is taken
    assert parse_request(raw.replace(b"POST", b"GET", 1), 8192) is None  # a GET (JSONP) takes pywsgi's
    if taken:
        env = lean_environ(request, None, lambda: None)
        assert env["PATH_INFO"] == path and env["wsgi.input"].read() == body


def test_parked_bayeux_connects_take_the_lean_path_and_are_woken(server):
    from .bayeux_fixtures import Bayeux
    sessions = [Bayeux(server.url) for _ in range(10)]
    for session in sessions:
        session.start("/lean/bx")
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in sessions]
    try:
        for session, sock in zip(sessions, socks):
            body = json.dumps([session.message("/meta/connect", connectionType="long-polling",
                                               advice={"timeout": 60_000})]).encode()
            sock.sendall(b"POST /bayeux HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        server.wait_waiting(10)
        ports = {sock.getsockname()[1] for sock in socks}
        held = [h for h in live_handlers(server) if h.client_address[1] in ports]
        assert len(held) == 10 and all(h.rfile is None for h in held)  # lean: no pywsgi reader made
        assert Comet(server.url).notify("/lean/bx", "go")["woken"] >= 10
        for sock in socks:
            status, _, body = read_reply(sock)
            replies = json.loads(body)
            assert status == 200 and replies[0]["data"] == "go" and replies[-1]["successful"]
    finally:
        for sock in socks:
            sock.close()


def test_an_oversized_bayeux_batch_on_the_lean_path_gets_413_and_the_connection_closes(start_server):
    server = start_server(max_body_bytes=100)
    body = json.dumps([{"channel": "/meta/handshake", "version": "1.0", "ext": {"pad": "p" * 200}}]).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /bayeux HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, headers, reply = read_reply(sock)
        assert status == 413 and headers["connection"] == "close" and "error" in json.loads(reply)
        assert sock.recv(100) == b""

"""JSON replies end with a newline (issue 14's small item, done in issue 15's files), so a shell
prompt does not stick to curl's output; Content-Length counts it and strict parsers accept it."""
import json
import socket

import gevent
import pytest

from geventcomet import protocol, replies

from .test_faults import read_reply


def strict(body: bytes):
    def refuse(name):
        raise ValueError(name)
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def exchange(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return read_reply(sock)


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])  # the lean path and pywsgi's
def test_a_poll_reply_ends_with_a_newline(server, version):
    status, headers, body = exchange(server.port, b"GET /register?channel=n&timeout=0 %s\r\nHost: x\r\n\r\n" % version)
    assert status == 200 and body.endswith(b"}\n") and int(headers["content-length"]) == len(body)
    assert strict(body)["timeout"] is True


def test_the_http_servers_own_refusals_end_with_a_newline(server):
    status, headers, body = exchange(server.port, b"GET /register HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
    assert status == 400 and body.endswith(b"}\n") and int(headers["content-length"]) == len(body)
    assert "error" in strict(body)
    reply = replies.error_reply(503, "full", retry_after_s=1)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert body.endswith(b"}\n") and f"Content-Length: {len(body)}".encode() in head and strict(body)


def test_the_shutdown_reply_of_a_held_poll_ends_with_a_newline(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /register?channel=n&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_waiting(1)
        stopping = gevent.spawn(server.stop)
        status, headers, body = read_reply(sock)
        stopping.join(10)
    assert status == 503 and body.endswith(b"}\n") and int(headers["content-length"]) == len(body)
    assert strict(body)["reconnect"] is True


def test_json_reply_is_json_bytes_and_a_newline():
    assert protocol.json_reply({"a": 1}) == protocol.json_bytes({"a": 1}) + b"\n"
    body = protocol.encode_poll_reply([b'{"id":1}'], "c", timeout=False, recovered=True, client="k", epoch="e")
    assert body.endswith(b"}\n") and strict(body)["events"] == [{"id": 1}]

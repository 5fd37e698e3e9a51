"""RFC 9112 framing on a real socket: every ambiguous head gets 400 JSON, Connection: close, and a close.

Issue 11 item 13: a POST /notify hidden in the chunked body of a GET /register with
Content-Length ran; non-chunked Transfer-Encodings, odd Content-Lengths, bare LF,
bad header names, NUL bytes and ``HTTP/1.1.1`` were accepted.
"""
import json
import socket

import pytest

from .helpers import Comet
from .test_faults import read_reply

SMUGGLED = b'{"channel":"s","data":"smuggled"}'
HIDDEN = (b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED))


def refused(port: int, data: bytes) -> str:
    """Send ``data``; assert a 400 JSON reply with Connection: close, then EOF; return the error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        status, headers, body = read_reply(sock)
        assert status == 400, (data, status, body)
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert sock.recv(65536) == b""  # really closed, nothing more read or answered
    return json.loads(body)["error"]


def test_a_request_hidden_in_a_chunked_body_with_content_length_never_runs(server):
    chunked = b"0\r\n\r\n" + HIDDEN
    head = (b"GET /register?channel=s&timeout=0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % len(chunked))
    assert "Content-Length and Transfer-Encoding" in refused(server.port, head + chunked)
    assert Comet(server.url).register("s", timeout=0)["events"] == []
    assert server.app.stats.published == 0


@pytest.mark.parametrize("headers, message", [
    (b"Transfer-Encoding: identity, chunked\r\n", "Transfer-Encoding"),
    (b"Transfer-Encoding: xchunked\r\n", "Transfer-Encoding"),
    (b"Transfer-Encoding: gzip\r\n", "Transfer-Encoding"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding"),
    (b"Content-Length: +5\r\n", "Content-Length"),
    (b"Content-Length: 3_8\r\n", "Content-Length"),
    (b"Content-Length: 0x5\r\n", "Content-Length"),
    (b"Content-Length: 5 5\r\n", "Content-Length"),
    (b"Content-Length: 05\r\n", "leading zero"),
    (b"Content-Length: -1\r\n", "Content-Length"),
    (b"Content-Length: 5, 5\r\n", "Content-Length"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", "conflicting Content-Length"),
    (b"Bad Name: x\r\n", "token"),
    (b"Bad\x00Name: x\r\n", "token"),
    (b"X-Nul: a\x00b\r\n", "control character"),
    (b"X-Cr: a\rb\r\n", "control character"),
    (b"X-Esc: a\x1bb\r\n", "control character"),
    (b": no name\r\n", "token"),
    (b"no colon here\r\n", "colon"),
    (b"X-Folded: a\r\n  b\r\n", "folding"),
    (b"X-Bare: lf\n", "CRLF"),
    (b"Host: y\r\n", "Host"),
])
def test_ambiguous_headers_are_refused_and_the_connection_closed(server, headers, message):
    head = b"POST /notify HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert message in refused(server.port, head + b"hello")


@pytest.mark.parametrize("line", [
    b"GET /stats HTTP/1.1.1\r\n", b"GET  /stats HTTP/1.1\r\n", b"GET /stats  HTTP/1.1\r\n",
    b"GET /st\x01ats HTTP/1.1\r\n", b"GET /st\x7fats HTTP/1.1\r\n", b"GET /st\xe9ats HTTP/1.1\r\n",
    b"GET /stats HTTP/2.0\r\n", b"GET /stats\r\n", b"G(T /stats HTTP/1.1\r\n", b"GET /stats HTTP/1.1\n",
    b"GET /stats http/1.1\r\n", b"\r\n",
])
def test_malformed_request_lines_are_refused(server, line):
    refused(server.port, line + b"Host: x\r\n\r\n")


def test_a_bare_lf_ending_the_head_is_refused(server):
    assert "CRLF" in refused(server.port, b"GET /stats HTTP/1.1\r\nHost: x\r\n\n")


def test_well_formed_heads_still_work_and_keep_the_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHOST: x\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Obs: caf\xe9\r\n\r\n"
                     b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 24\r\n\r\n{\"channel\":\"k\",\"data\":1}"
                     b"GET /register?channel=k&timeout=0&since=0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
        pending = bytearray()
        replies = [read_reply(sock, pending) for _ in range(4)]
        assert [status for status, _, _ in replies] == [200, 200, 200, 411]  # chunked: the app's 411
        assert json.loads(replies[2][2])["events"][0]["data"] == 1
        assert sock.recv(100) == b""  # the 411 closes without reading the body


def test_an_absolute_form_target_is_served_by_its_path(server):
    """RFC 9112 §3.2.2: a server MUST accept the absolute form (what a proxy sends)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET http://127.0.0.1/stats?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET HTTPS://example.org HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        pending = bytearray()
        stats, index = read_reply(sock, pending), read_reply(sock, pending)
    assert stats[0] == 200 and "waiting" in json.loads(stats[2])
    assert index[0] == 200 and json.loads(index[2])["name"] == "geventcomet"

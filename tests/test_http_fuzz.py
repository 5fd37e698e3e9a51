"""Property-based tests of the request-head parser, with h11 as the oracle (issue 11, general defences).

- Any bytes: :func:`http_rules.parse_head` returns a head or raises HeadError, nothing else.
- Differential: generated heads (valid, odd and broken parts mixed) go to h11 and to
  ours. Whatever h11 refuses we refuse; whatever we accept h11 accepts with the same
  method, target and headers; what h11 accepts and we refuse must be one of the
  deliberate differences listed in ``http_rules``' docstring (:func:`deliberately_refused`).
- A smaller number of the same heads over a real socket: a normal reply or a 4xx
  JSON error, never a 5xx, a hang or a traceback.
"""
import json
import logging
import re
import socket
import string

import gevent
import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventcomet.http_rules import HeadError, origin_form, parse_head, split_lines

TOKEN = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT"]) | st.text(
    TOKEN, min_size=1, max_size=6).map(str.encode) | st.binary(max_size=6)
targets = st.sampled_from([b"/stats", b"/register?channel=f&timeout=0", b"/notify", b"/", b"*",
                           b"http://x/stats", b"/%00", b"/a b"]) | st.binary(max_size=10)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1.1",
                            b"http/1.1", b"HTTP/11", b"HTTP/1.1 "])
names = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A", b"host",
                         b"Content-Type", b"X_Under"]) | st.binary(max_size=8)
values = st.sampled_from([b"x", b"0", b"5", b"05", b"+5", b"5, 5", b"5,6", b" 5 ", b"chunked", b"Chunked",
                          b"identity, chunked", b"gzip", b"close", b"keep-alive", b"", b"a\tb", b"caf\xe9",
                          b"application/json"]) | st.binary(max_size=10)
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
eols = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])


@st.composite
def header_lines(draw) -> bytes:
    line = draw(names) + b":" + draw(ows) + draw(values) + draw(ows) + draw(eols)
    if draw(st.integers(0, 15)) == 0:  # obsolete line folding
        line += b" " + draw(values) + b"\r\n"
    return line


@st.composite
def heads(draw) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + draw(eols)
    host = [b"Host: x\r\n"] if draw(st.booleans()) else []
    lines = draw(st.lists(header_lines(), max_size=5))
    if lines and draw(st.booleans()):
        lines = lines[:1] + host + lines[1:]
    else:
        lines = host + lines
    return line + b"".join(lines) + draw(st.sampled_from([b"\r\n"] * 8 + [b"\n"]))


CTL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
CANONICAL_LENGTH = re.compile(rb"0|[1-9][0-9]*")


def deliberately_refused(head: bytes) -> bool:
    """True if ``head`` has one of the features http_rules refuses on purpose (and h11 accepts)."""
    if re.search(rb"(?<!\r)\n", head):
        return True  # bare LF
    lines = head.split(b"\r\n")
    if not lines[0][-8:-3] == b"HTTP/" or lines[0][-3:-2] != b"1":
        return True  # not HTTP/1.x (h11 takes any d.d)
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return True  # obsolete folding
        name, _, value = line.partition(b":")
        if CTL_IN_VALUE.search(value):
            return True  # h11's field-vchar is [^\x00\s]: it lets CTLs through
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    if lines[0][-1:] not in b"01" and not fields.get(b"host"):
        return True  # HTTP/1.2-1.9 read as 1.1, which needs a Host (h11 takes them as their own version)
    lengths, codings = fields.get(b"content-length", []), fields.get(b"transfer-encoding", [])
    if any(CANONICAL_LENGTH.fullmatch(value) is None for value in lengths):
        return True  # leading zeros, comma lists
    return bool(codings) and (bool(lengths) or lines[0].endswith(b"HTTP/1.0"))


def h11_parse(head: bytes):
    """h11's Request for ``head``, or None if it refuses it (or waits for more)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def ours(head: bytes):
    try:
        return parse_head(head)
    except HeadError:
        return None


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200) | heads())
def test_any_bytes_give_a_head_or_a_head_error(data):
    ours(data)
    for line in split_lines(data):  # line by line, as the server reads
        assert line.endswith(b"\n") or line == split_lines(data)[-1]


@settings(max_examples=1500, deadline=None)
@given(heads())
def test_we_agree_with_h11_but_for_the_documented_differences(head):
    theirs, mine = h11_parse(head), ours(head)
    if mine is not None:
        assert theirs is not None, head  # never laxer than h11
        # The absolute form (RFC 9112 §3.2.2) is served by its path and query; h11 passes it on whole.
        assert mine.line.method.encode() == theirs.method
        assert mine.line.target == origin_form(theirs.target.decode("ascii"))
        assert mine.line.version[5:].encode() == (b"1.0" if theirs.http_version == b"1.0" else b"1.1")
        normal = [(name.lower().encode(), value.encode("latin-1")) for name, value in mine.headers]
        normal = [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in normal]
        assert normal == list(theirs.headers), head
    elif theirs is not None:
        assert deliberately_refused(head), head


@pytest.fixture(scope="module")
def fuzz_server():
    from geventcomet import Config, make_app
    from geventcomet.server import make_server
    config = Config(host="127.0.0.1", port=0, header_timeout_s=2, body_timeout_s=2, timeout_s=0)
    server = make_server(config, make_app(config))
    server.start()
    yield server
    server.stop_gracefully()


def strict_json(body: bytes):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(body, parse_constant=refuse)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(heads(), st.binary(max_size=20))
def test_over_a_socket_every_head_gets_a_normal_reply_or_a_4xx_json_error(fuzz_server, caplog, head, body):
    errors = []
    hub = gevent.get_hub()
    hub.handle_error, original = (lambda *args: errors.append(args)), hub.handle_error
    try:
        with socket.create_connection(("127.0.0.1", fuzz_server.server_port), timeout=10) as sock:
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)  # no more: an incomplete head or body ends at once
            reply = bytearray()
            while chunk := sock.recv(65536):
                reply += chunk
    except ConnectionResetError:
        reply = bytearray()  # refused and closed before all our bytes were read
    finally:
        hub.handle_error = original
    assert errors == []
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    if head.startswith(b"HEAD ") and reply:  # the GET's Content-Length, and no body to check
        assert reply.startswith(b"HTTP/1.1 ") and 100 <= int(reply[9:12]) < 500, (head, reply)
        return
    for status, payload in replies(bytes(reply)):
        assert 100 <= status < 500, (head, reply)
        if status >= 400:
            assert "error" in strict_json(payload)


def replies(data: bytes):
    """(status, body) of each whole reply in ``data`` (Content-Length framed; a stream is skipped)."""
    while data:
        end = data.find(b"\r\n\r\n")
        assert end > 0, data
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        if status == 100:
            data = data[end + 4:]
            continue
        if "content-length" not in fields:
            yield status, b""
            return
        length = int(fields["content-length"])
        yield status, data[end + 4:end + 4 + length]
        data = data[end + 4 + length:]

"""The lean path's request parser: one whole request in one buffer, or None (let pywsgi read it).

Most of a Comet server's requests are ``GET /register`` polls, ``POST /notify``
publishes and ``POST /bayeux`` batches (connects, mostly) over keep-alive HTTP/1.1,
each arriving whole in one ``recv`` (a Bayeux batch with its Content-Length body). For those the
handler (:mod:`geventcomet.handler`) skips pywsgi's line-by-line reader, its
per-connection buffered reader and its environ: :func:`parse_request` takes the
bytes of one ``recv``, and if they hold a whole head (and, for a POST, its whole
body) that passes every rule of :mod:`geventcomet.http_rules`, returns the request;
the bytes after it (a pipelined request) are given back for the next read.

A keep-alive client sends the same header lines with every poll (only the request line
changes), and the load of one application's clients is a handful of header blocks: each
block's parse (its lines, :func:`~geventcomet.http_rules.check_head`) is a pure function of its
bytes, so it is kept in a small table and most heads are parsed once per process
(``bench/RESULTS-perf.md``: ~6 % of the server's CPU in the long-poll cycle).

Anything else returns None and the handler hands the same bytes to pywsgi's path,
which applies the same rules with its deadlines and answers every fault (400, 408,
413, 414, 431) as before. So this parser never refuses anything itself: a head it
does not take is one it leaves to the path that can explain the refusal. No I/O here.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from .http_rules import Framing, HeadError, RequestLine, check_head, parse_header_lines, parse_request_line

#: Header lines at most (as :data:`geventcomet.http_input.MAX_HEADER_LINES`).
MAX_HEADER_LINES = 100
#: A request line this long goes to pywsgi, which answers 414 (its MAX_REQUEST_LINE).
MAX_REQUEST_LINE = 8192
#: The (path, method) pairs the lean path serves, besides :func:`is_bayeux_post`;
#: everything else takes pywsgi's path.
LEAN_ROUTES = frozenset({("/register", "GET"), ("/notify", "POST")})
#: Header blocks up to this size are remembered with their parse, at most this many (the
#: table is emptied when full: a client sending ever new headers only loses the memo).
MEMO_BLOCK_BYTES, MEMO_BLOCKS = 1024, 256
#: Headers pywsgi gives as CONTENT_TYPE and CONTENT_LENGTH, not HTTP_*.
_NOT_HTTP = frozenset({"content-type", "content-length"})
#: The environ names of common headers, made once: a held poll's environ then shares
#: these strings instead of holding its own copies (~60 bytes each).
_ENVIRON_NAMES = {name: "HTTP_" + name.upper().replace("-", "_") for name in (
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "authorization", "connection",
    "cookie", "origin", "referer", "idempotency-key", "last-event-id", "x-forwarded-for",
    "x-forwarded-proto", "cache-control", "pragma")}


class LeanRequest(NamedTuple):
    """One whole request taken off the front of a buffer."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased name -> first value
    body: bytes
    close: bool  # the client asked to close the connection after the reply
    rest: bytes  # bytes after this request: the start of the next one


def parse_request(data: bytes, max_header_bytes: int) -> LeanRequest | None:
    """The request at the start of ``data``, if the lean path may serve it; else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None  # the head is not all here: pywsgi reads the rest under its deadline
    line_end = data.find(b"\r\n")
    if line_end + 2 > MAX_REQUEST_LINE or end + 4 - line_end - 2 > max_header_bytes:
        return None
    try:
        line = parse_request_line(data[:line_end + 2])
    except HeadError:
        return None
    path, _, query = line.target.partition("?")
    if line.version != "HTTP/1.1" or ((path, line.method) not in LEAN_ROUTES
                                       and not is_bayeux_post(line.method, path)):
        return None
    block = data[line_end + 2:end]
    parsed = _HEADER_BLOCKS.get(block, _UNKNOWN)
    if parsed is _UNKNOWN:
        parsed = parse_header_block(line, block)
        if len(block) <= MEMO_BLOCK_BYTES:
            if len(_HEADER_BLOCKS) >= MEMO_BLOCKS:
                _HEADER_BLOCKS.clear()
            _HEADER_BLOCKS[block] = parsed
    if parsed is None:
        return None
    headers, framing = parsed
    length = framing.content_length or 0
    body_start = end + 4
    if len(data) - body_start < length or (length and line.method == "GET"):
        return None
    return LeanRequest(line.method, path, query, headers, data[body_start:body_start + length],
                       framing.close, data[body_start + length:])


#: Header block -> :func:`parse_header_block`'s answer (see the module docstring).
_HEADER_BLOCKS: dict[bytes, tuple[dict[str, str], Framing] | None] = {}
_UNKNOWN: Any = object()


def parse_header_block(line: RequestLine, block: bytes) -> tuple[dict[str, str], Framing] | None:
    """The header lines of an HTTP/1.1 head (between the request line and the blank line):
    lower-cased name -> first value, and the framing; None if the lean path must not take them.

    The answer depends on ``block`` alone: :func:`check_head` reads only the request line's
    version, which is HTTP/1.1 on the lean path. The dict is shared by every request with
    this block: nothing may change it.
    """
    try:
        pairs = parse_header_lines(block)
        if len(pairs) > MAX_HEADER_LINES:
            return None
        framing = check_head(line, pairs)
    except HeadError:
        return None
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers.setdefault(name.lower(), value)
    if framing.chunked or "expect" in headers:
        return None  # pywsgi's reader handles chunked bodies and 100-continue
    return headers, framing


def is_bayeux_post(method: str, path: str) -> bool:
    """A Bayeux batch: ``POST /bayeux`` or ``POST /bayeux/...`` (CometD posts to ``/bayeux/connect``)."""
    return method == "POST" and (path == "/bayeux" or path.startswith("/bayeux/"))


def lean_environ(request: LeanRequest, peer: object, abandon_body: object) -> dict[str, Any]:
    """The small environ the app's ``respond()`` gets on the lean path."""
    # Four keys and the Host header fit a dict's smallest table (a poll's usual environ).
    env: dict[str, Any] = {"REQUEST_METHOD": request.method, "PATH_INFO": request.path,
                           "QUERY_STRING": request.query, "geventcomet.socket": peer}
    for name, value in request.headers.items():
        known = _ENVIRON_NAMES.get(name)
        if known is not None:
            env[known] = value
        elif "_" not in name and name not in _NOT_HTTP:  # as pywsgi: X_Y must not pass for X-Y
            env["HTTP_" + name.upper().replace("-", "_")] = value
    if request.method == "POST":
        env["CONTENT_LENGTH"] = str(len(request.body))
        env["CONTENT_TYPE"] = request.headers.get("content-type", "")
        env["wsgi.input"] = BodyBytes(request.body)
        env["geventcomet.abandon_body"] = abandon_body
    return env


class BodyBytes:
    """``wsgi.input`` over a body already read whole."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def read(self, length: int | None = None) -> bytes:
        start = self._position
        stop = len(self._data) if length is None or length < 0 else min(start + length, len(self._data))
        self._position = stop
        return self._data[start:stop]

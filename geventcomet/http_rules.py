"""What a request head must look like (RFC 9112), as pure functions: bytes in, values or HeadError out.

A proxy in front of the server and the server itself must agree on where each
request ends, or a request hidden in another's body reaches the app (request
smuggling). So every head that two parsers might read differently is refused
with 400 and the connection closed, never guessed at:

- request line ``METHOD SP request-target SP HTTP/1.d CRLF``: method a token,
  target visible ASCII (no CTL, no space, no byte above 0x7E); other versions refused;
- header lines ``name ":" OWS value OWS CRLF``: name a token, value visible bytes
  (obs-text allowed) separated by SP/HTAB, no NUL, CR or other CTL; lines end in
  CRLF (a bare LF is refused); obsolete line folding refused (RFC 9112 §5.2);
- ``Transfer-Encoding`` only exactly ``chunked`` (case-insensitive), at most one
  such header, never together with ``Content-Length`` and never in HTTP/1.0;
- ``Content-Length`` ``0`` or ``1*DIGIT`` without a leading zero (``05`` could be
  octal to someone), at most 20 digits; several must all be equal, comma lists refused;
- HTTP/1.1 needs exactly one ``Host``; no version may send two.

Deliberate differences from h11 (the test oracle, which accepts these): leading
zeros and comma lists in Content-Length, Content-Length with Transfer-Encoding
(h11 lets chunked win), Transfer-Encoding in HTTP/1.0, obsolete line folding,
bare LF line endings, control bytes in header values (h11 only refuses NUL and
whitespace), versions other than 1.x, and HTTP/1.2-1.9 without a Host (read as 1.1
here) are refused here.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_FIELD_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_VCHAR + rb"+(?:[ \t]+" + _FIELD_VCHAR
                          + rb"+)*)?)[ \t]*\r\n")
#: Any number of header lines, checked in one match (a head's lines, each by _HEADER_LINE).
_HEADER_LINES = re.compile(rb"(?:" + _HEADER_LINE.pattern + rb")*")
_NAME = re.compile(_TOKEN)
_CONTENT_LENGTH = re.compile(r"0|[1-9][0-9]{0,19}")


class HeadError(ValueError):
    """A request head that breaks RFC 9112: answered 400 with ``message``, then the connection closes."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestLine(NamedTuple):
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1" (1.2-1.9 are read as 1.1, RFC 9110 §6.2)


class Framing(NamedTuple):
    """How the body is delimited, and whether the connection closes after the reply."""

    content_length: int | None  # None: no Content-Length (no body, or chunked)
    chunked: bool
    close: bool


class Head(NamedTuple):
    """A whole parsed head (:func:`parse_head`)."""

    line: RequestLine
    headers: list[tuple[str, str]]  # (name as sent, value without OWS), in order
    framing: Framing


def parse_request_line(line: bytes) -> RequestLine:
    """``b"GET /x HTTP/1.1\\r\\n"`` -> ``RequestLine("GET", "/x", "HTTP/1.1")``."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        if not line.endswith(b"\r\n"):
            raise HeadError("the request line must end with CRLF")
        raise HeadError("malformed request line: expected METHOD SP target SP HTTP/1.x, "
                        "a token method and a target of visible ASCII")
    method, target, major, minor = match.groups()
    if major != b"1":
        raise HeadError("unsupported HTTP version: only HTTP/1.0 and HTTP/1.1 are served")
    version = "HTTP/1.0" if minor == b"0" else "HTTP/1.1"
    return RequestLine(method.decode("ascii"), origin_form(target.decode("ascii")), version)


def origin_form(target: str) -> str:
    """``http://host/path?q`` -> ``/path?q``: RFC 9112 §3.2.2 says a server MUST accept the
    absolute form (proxies send it); the routes only need the path and query.
    (The ``Host`` header still names the host, for ``--allowed-hosts`` and origin checks.)"""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


def parse_header_line(line: bytes) -> tuple[str, str]:
    """``b"Name: value \\r\\n"`` -> ``("Name", "value")`` (latin-1)."""
    match = _HEADER_LINE.fullmatch(line)
    if match is not None:
        return match.group(1).decode("ascii"), match.group(2).decode("latin-1")
    if not line.endswith(b"\r\n"):
        raise HeadError("header lines must end with CRLF (bare LF or a cut-off head)")
    if line[:1] in (b" ", b"\t"):
        raise HeadError("obsolete header line folding is not accepted")
    name, colon, _ = line.partition(b":")
    if not colon:
        raise HeadError("a header line without a colon")
    if _NAME.fullmatch(name) is None:
        raise HeadError("a header name that is not an RFC 9110 token")
    raise HeadError("a header value with a control character (NUL, CR, LF or other CTL)")


def parse_header_lines(block: bytes) -> list[tuple[str, str]]:
    """The header lines between a request line and the blank line (``Name: value`` lines
    joined by CRLF, without the last CRLF) as :func:`parse_header_line` reads each, in two
    regex calls for the whole block; :class:`HeadError` for the first line it refuses."""
    if not block:
        return []
    lines = block + b"\r\n"
    if _HEADER_LINES.fullmatch(lines) is not None:
        return [(name.decode("ascii"), value.decode("latin-1")) for name, value in _HEADER_LINE.findall(lines)]
    return [parse_header_line(raw + b"\r\n") for raw in block.split(b"\r\n")]  # raises the line's error


def check_head(line: RequestLine, headers: list[tuple[str, str]]) -> Framing:
    """The body framing and connection fate the headers declare, if they are unambiguous."""
    lengths: set[str] = set()
    codings: list[str] = []
    hosts = 0
    connection: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "content-length":
            if _CONTENT_LENGTH.fullmatch(value) is None:
                raise HeadError("Content-Length must be 1*DIGIT without a leading zero")
            lengths.add(value)
        elif key == "transfer-encoding":
            codings.append(value.lower())
        elif key == "host":
            hosts += 1
        elif key == "connection":
            connection.extend(token.strip().lower() for token in value.split(","))
    if len(lengths) > 1:
        raise HeadError("conflicting Content-Length headers")
    if codings:
        if line.version == "HTTP/1.0":
            raise HeadError("Transfer-Encoding is not defined for HTTP/1.0")
        if codings != ["chunked"]:
            raise HeadError("only one Transfer-Encoding header, of exactly: chunked, is accepted")
        if lengths:
            raise HeadError("Content-Length and Transfer-Encoding together")
    if hosts > 1 or (hosts == 0 and line.version == "HTTP/1.1"):
        raise HeadError("an HTTP/1.1 request needs exactly one Host header")
    if line.version == "HTTP/1.1":
        close = "close" in connection
    else:
        close = "keep-alive" not in connection
    return Framing(int(lengths.pop()) if lengths else None, bool(codings), close)


def split_lines(head: bytes) -> list[bytes]:
    """Split at each LF, keeping it (as a line reader does); a last line without LF is kept too."""
    lines = head.split(b"\n")
    return [part + b"\n" for part in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def parse_head(head: bytes) -> Head:
    """Parse a whole head: request line, header lines, the empty line; nothing may follow.

    The server reads line by line with the same :func:`parse_request_line`,
    :func:`parse_header_line` and :func:`check_head`; this composes them for tests.
    """
    lines = split_lines(head)
    if not lines:
        raise HeadError("an empty request")
    line = parse_request_line(lines[0])
    headers: list[tuple[str, str]] = []
    for index, raw in enumerate(lines[1:], 1):
        if raw == b"\r\n":
            if index != len(lines) - 1:
                raise HeadError("bytes after the end of the head")
            return Head(line, headers, check_head(line, headers))
        headers.append(parse_header_line(raw))
    raise HeadError("the head does not end with an empty line")

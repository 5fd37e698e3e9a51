"""Reading one request off a connection: its header lines, and its body as the app sees it.

:class:`Headers` replaces pywsgi's ``email.feedparser`` headers (its largest cost
per request): it reads line by line, bounded in bytes and lines (431 beyond), and
checks every line with :mod:`geventcomet.http_rules`.

:class:`RequestBody` is ``wsgi.input``: pywsgi's ``Input`` underneath, but a body
that stops short of its length, breaks its chunked framing, or misses its
deadline becomes a :class:`~geventcomet.errors.CometError` (400 or 408, with
``Connection: close``), which the app answers as JSON: a client's fault, never a
500 with a traceback. The connection is then closed (its byte stream is out of step).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from .errors import CometError
from .http_rules import HeadError, parse_header_line
from .misbehaviour import note
from .peer import BodyTimeout

#: At most this many header lines (pywsgi/http.client allow 100).
MAX_HEADER_LINES = 100
_CLOSE = (("Connection", "close"),)


class HeadersTooLarge(ValueError):
    """The head is over ``max_header_bytes`` or :data:`MAX_HEADER_LINES` (431)."""


class RequestTimeout(CometError):
    status, reason = 408, "Request Timeout"


class Headers:
    """Just the part of pywsgi's header-object interface that pywsgi uses."""

    __slots__ = ("_lines", "_map", "pairs", "status")

    def __init__(self, rfile: Any, max_bytes: int) -> None:
        self._lines: list[str] = []
        self._map: dict[str, str] = {}
        #: Every header as (name as sent, value), in order: what http_rules.check_head reads.
        self.pairs: list[tuple[str, str]] = []
        self.status = ""
        total = 0
        while True:
            line = rfile.readline(max_bytes - total + 1)
            total += len(line)
            if total > max_bytes or len(self.pairs) > MAX_HEADER_LINES:
                raise HeadersTooLarge()
            if line == b"\r\n":
                return
            if not line.endswith(b"\n"):
                raise HeadError("the request head ended early")
            name, value = parse_header_line(line)
            key = name.lower()
            self.pairs.append((name, value))
            self._map.setdefault(key, value)
            self._lines.append(f"{name}: {value}\r\n")

    def items(self) -> Any:
        """(lower-cased name, value) pairs, the first of each name."""
        return self._map.items()

    def get(self, name: str, default: Any = None) -> Any:
        return self._map.get(name.lower(), default)

    getheader = get

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self._map.pop(key, None)
        self._lines = [line for line in self._lines if line.split(":", 1)[0].lower() != key]

    @property
    def headers(self) -> list[str]:
        return self._lines

    @property
    def typeheader(self) -> str | None:
        return self._map.get("content-type")


class RequestBody:
    """``wsgi.input`` over pywsgi's ``Input``: a broken or late body is a 400/408 CometError."""

    __slots__ = ("_input", "_on_failure", "_timeout_s", "_who")

    def __init__(self, wsgi_input: Any, on_failure: Callable[[], None], timeout_s: float, who: object) -> None:
        self._input = wsgi_input
        self._on_failure = on_failure
        self._timeout_s = timeout_s
        self._who = who

    def read(self, length: int | None = None) -> bytes:
        return self._guarded(self._input.read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._guarded(self._input.readline, size)

    def readlines(self, hint: Any = None) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def _guarded(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        try:
            return read(size)
        except BodyTimeout:
            self._on_failure()
            note("body-timeout", f"{self._who}: no whole body {self._timeout_s} s after the head")
            raise RequestTimeout(f"the request body did not arrive within {self._timeout_s} s",
                                 headers=_CLOSE) from None
        except (OSError, ValueError) as exc:  # EOF before the length, a reset, bad chunked framing
            self._on_failure()
            note("body-incomplete", f"{self._who}: {str(exc)[:100] or type(exc).__name__}")
            raise CometError("the request body ended early or its chunked framing is malformed",
                             headers=_CLOSE) from None

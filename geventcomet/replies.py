"""What a route returns, and the HTTP status lines, with no I/O.

A route handler (:mod:`geventcomet.app` routes to them) returns either a whole
:data:`Reply` (status, body, content type, headers), which the web layer completes
with CORS and protection headers, or a :class:`Streamed` reply (an SSE stream) whose
body the WSGI server writes as it is produced. Status lines are built once per status.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Iterable

Headers = tuple[tuple[str, str], ...]
#: status, body, content type, headers
Reply = tuple[int, bytes, str, Headers]
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Streamed:
    """A ``200`` whose body is written as it is produced (never buffered whole)."""

    content_type: str
    headers: Headers
    body: Iterable[bytes]


@lru_cache(maxsize=64)
def status_line(status: int) -> str:
    """``200`` -> ``"200 OK"`` (WSGI's status)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


@lru_cache(maxsize=64)
def status_line_bytes(status: int) -> bytes:
    """``200`` -> ``b"HTTP/1.1 200 OK\\r\\n"``, for a reply written without WSGI."""
    return b"HTTP/1.1 " + status_line(status).encode() + b"\r\n"

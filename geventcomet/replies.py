"""What a route returns, and the HTTP status lines, with no I/O.

A route handler (:mod:`geventcomet.app` routes to them) returns either a whole
:data:`Reply` (status, body, content type, headers), which the web layer completes
with CORS and protection headers, or a :class:`Streamed` reply (an SSE stream) whose
body the WSGI server writes as it is produced. Status lines are built once per status.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Iterable

from gevent.pywsgi import format_date_time

from .protocol import json_reply

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


def error_reply(status: int, message: str, *, retry_after_s: int | None = None) -> bytes:
    """A whole ``Connection: close`` reply with a JSON ``{"error": message}``, for the HTTP
    server's own refusals (written before or without the WSGI application)."""
    body = json_reply({"error": message})
    retry = f"Retry-After: {retry_after_s}\r\n" if retry_after_s is not None else ""
    return (f"HTTP/1.1 {status_line(status)}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"{retry}X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def http_date() -> bytes:
    """The Date header value, formatted once per second instead of once per reply."""
    return _date_of(int(time.time()))


@lru_cache(maxsize=1)
def _date_of(second: int) -> bytes:
    return format_date_time(second)

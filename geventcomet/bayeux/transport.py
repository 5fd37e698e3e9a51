"""The Bayeux HTTP transports: long-polling (``POST``) and callback-polling (JSONP ``GET``).

- ``POST`` with a JSON body (``application/json``, or any type that is not a form) or
  ``application/x-www-form-urlencoded`` with ``message=<json>`` (Faye's cross-origin
  transport posts that, as ``text/plain``: a body starting ``message=`` is a form).
  The reply is ``application/json``: a JSON array.
- ``GET ?message=<json>[&jsonp=<callback>]``: with ``jsonp`` the reply is
  ``/**/callback([...]);`` as ``text/javascript`` (callback-polling, for a browser's
  script tag), the name checked to be a plain JavaScript identifier path; without it,
  JSON.

A body's size is checked against ``--max-body-bytes`` before a byte is read (by its
Content-Length), or while it is read (chunked, as cometd-nodejs-client sends it).
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import parse_qsl

from .. import protocol
from ..errors import CometError, MethodNotAllowed, PayloadTooLarge
from ..replies import JSON, Headers, Reply
from .messages import BadBayeux, Message, check_callback, parse_batch

JAVASCRIPT = "text/javascript; charset=utf-8"
_FORM = "application/x-www-form-urlencoded"


def read_request(environ: dict, max_body_bytes: int) -> tuple[list[Message], str | None]:
    """The request's messages, and its JSONP callback (None: answer JSON)."""
    if environ["REQUEST_METHOD"] == "HEAD":  # a batch has effects: a HEAD must not run one
        raise MethodNotAllowed("HEAD is not a Bayeux transport; use POST or GET", headers=(("Allow", "GET, POST"),))
    if environ["REQUEST_METHOD"] == "GET":
        fields = _query_fields(environ.get("QUERY_STRING", ""))
        callback = fields.get("jsonp")
        if "message" not in fields:
            raise BadBayeux("GET /bayeux needs ?message=<JSON> (and jsonp=<callback> for callback-polling)")
        return parse_batch(fields["message"]), (check_callback(callback) if callback is not None else None)
    body = _read_body(environ, max_body_bytes)
    # Faye's cross-origin transport posts message=... as text/plain (it sets no Content-Type).
    if environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() == _FORM or body.startswith(b"message="):
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8))
        except (UnicodeDecodeError, ValueError):
            raise BadBayeux("the form body is not UTF-8 name=value pairs") from None
        if "message" not in fields:
            raise BadBayeux("a form-encoded Bayeux request needs a message=<JSON> field")
        return parse_batch(fields["message"]), None
    return parse_batch(body), None


def _query_fields(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=8)
    except ValueError:
        raise BadBayeux("too many query parameters") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def _read_body(environ: dict, max_body_bytes: int) -> bytes:
    """The body, by Content-Length or chunked (cometd-nodejs-client sends chunked bodies),
    never more than ``max_body_bytes`` of it read."""
    abandon: Callable[[], None] = environ.get("geventcomet.abandon_body", lambda: None)
    chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
    try:
        length = protocol.check_body_length(environ.get("CONTENT_LENGTH"), False, max_body_bytes)
    except CometError as exc:
        raise _unread(exc, abandon) from None
    if chunked:
        body: bytes = environ["wsgi.input"].read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            raise _unread(PayloadTooLarge(f"request body is over the limit of {max_body_bytes} bytes"), abandon)
    else:
        body = environ["wsgi.input"].read(length) if length else b""
    if not body:
        raise BadBayeux("empty Bayeux request: POST a JSON array of messages")
    return body


def _unread(exc: CometError, abandon: Callable[[], None]) -> CometError:
    """Refuse with the rest of the body unread: the connection closes after the reply."""
    abandon()
    exc.headers = (*exc.headers, ("Connection", "close"))
    return exc


def encode_reply(parts: list[bytes], callback: str | None, headers: Headers = ()) -> Reply:
    """The JSON array of ``parts`` (each one encoded message), or its JSONP call."""
    body = b"[" + b",".join(parts) + b"]"
    if callback is None:
        return (200, body, JSON, headers)
    # U+2028/2029 are legal in JSON strings but ended a JavaScript string before ES2019.
    body = body.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return (200, b"/**/" + callback.encode() + b"(" + body + b");", JAVASCRIPT, headers)

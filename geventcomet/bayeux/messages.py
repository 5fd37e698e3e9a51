"""Bayeux messages in and out, with no I/O: parse a batch, build replies, errors, advice.

A request body (or ``message=`` field) is strict JSON: an array of message objects, or
one object; each must have a string ``channel``. A request that is not that is a client
bug and gets a 400 JSON ``{"error": ..}`` (:class:`BadBayeux`); a well-formed message the
server refuses gets a Bayeux reply ``successful: false`` with ``error: "CODE:ARGS:TEXT"``
(``402:<clientId>:Unknown client`` plus ``advice: {reconnect: "handshake"}``, ``403``
denied, ``405`` invalid channel, ...), which real clients act on.

Replies echo ``id`` (CometD matches its held ``/meta/connect`` by it) and always carry
``channel`` and ``successful``.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from .. import strictjson
from ..errors import BadRequest

VERSION = "1.0"
CONNECTION_TYPES = ["long-polling", "cross-origin-long-polling", "callback-polling"]
#: Messages in one request; a longer batch is refused whole (400).
MAX_MESSAGES = 100
#: A JSONP callback: a JavaScript identifier path (Faye's ``__jsonp12__``, CometD's names).
_CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(?:\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,3}\Z")
_ID_MAX_CHARS = 200

Message = dict[str, Any]


class BadBayeux(BadRequest):
    """The request is not a Bayeux batch at all (400 with a JSON error)."""


def parse_batch(text: bytes | str) -> list[Message]:
    """The messages of one request body: a JSON array of objects, or one object.

    Parsed without :func:`strictjson.loads`' full walk (a third of a connect's cost):
    ``NaN``/``Infinity`` and numbers that overflow to infinity are refused here, and
    the one part that is stored, a publish's ``data``, is checked by :func:`check_data`;
    whatever else is echoed (``id``, ``subscription``) is checked before it is.
    """
    try:
        value = _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise BadBayeux("Bayeux request nested too deep") from None
    except UnicodeDecodeError:
        raise BadBayeux("Bayeux request is not valid UTF-8") from None
    except ValueError as exc:
        raise BadBayeux(f"Bayeux request is not strict JSON: {exc}") from None
    batch: list = value if isinstance(value, list) else [value]
    if not batch:
        raise BadBayeux("empty Bayeux batch: send at least one message")
    if len(batch) > MAX_MESSAGES:
        raise BadBayeux(f"Bayeux batch of {len(batch)} messages is over the limit of {MAX_MESSAGES}")
    for message in batch:
        if not isinstance(message, dict):
            raise BadBayeux("each Bayeux message must be a JSON object")
        if not isinstance(message.get("channel"), str):
            raise BadBayeux("a Bayeux message has no channel (a string)")
        if "id" in message and not _valid_id(message["id"]):
            raise BadBayeux(f"a Bayeux message id must be a string or number of at most {_ID_MAX_CHARS} characters")
    return batch


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which no strict parser takes back
        raise ValueError(f"{text[:20]} is not a finite JSON number")
    return value


#: One decoder for every request (``json.loads(parse_constant=..)`` builds one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def check_data(data: object) -> str | None:
    """Why a publish's ``data`` cannot be stored (not strict JSON), or None."""
    try:
        strictjson.check(data)
    except strictjson.StrictJSONError as exc:
        return str(exc)
    return None


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and len(value) <= _ID_MAX_CHARS)


def check_callback(name: str) -> str:
    """A JSONP callback name that can only name a function (no script injection)."""
    if not _CALLBACK_RE.match(name):
        raise BadBayeux("invalid jsonp callback name: a JavaScript identifier (letters, digits, _ $ .)")
    return name


def reply(message: Message, successful: bool, **fields: Any) -> Message:
    """The reply to ``message``: its channel, ``successful``, its ``id`` echoed, and ``fields``."""
    out: Message = {"channel": message["channel"], "successful": successful}
    if "id" in message:
        out["id"] = message["id"]
    if "clientId" in message and isinstance(message["clientId"], str):
        out["clientId"] = message["clientId"]
    subscription = message.get("subscription")
    if isinstance(subscription, str) or (isinstance(subscription, list)
                                         and all(isinstance(name, str) for name in subscription)):
        out["subscription"] = subscription
    out.update(fields)
    return out


def error(message: Message, code: int, args: str, text: str, **fields: Any) -> Message:
    """A refusal in Bayeux form: ``error: "CODE:ARGS:TEXT"``."""
    return reply(message, False, error=f"{code}:{args}:{text}", **fields)


def unknown_client(message: Message) -> Message:
    """402: the session is unknown or expired; the client handshakes again by itself."""
    client_id = message.get("clientId")
    shown = client_id if isinstance(client_id, str) and len(client_id) <= 64 else ""
    return error(message, 402, shown, "Unknown client", advice={"reconnect": "handshake", "interval": 0})


def advice(timeout_ms: int, interval_ms: int = 0, reconnect: str = "retry") -> Message:
    return {"reconnect": reconnect, "interval": interval_ms, "timeout": timeout_ms}


def client_timeout_ms(message: Message) -> int | None:
    """The ``advice.timeout`` a ``/meta/connect`` asks for (ms), or None."""
    asked = message.get("advice")
    if not isinstance(asked, dict):
        return None
    timeout = asked.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
        return None
    return max(int(timeout), 0)


def ext_token(message: Message) -> str | None:
    """``ext.token`` (or ``ext.authToken``), the subscriber or publisher token a client sends."""
    ext = message.get("ext")
    if not isinstance(ext, dict):
        return None
    token = ext.get("token", ext.get("authToken"))
    return token if isinstance(token, str) and 0 < len(token) <= 8192 else None


def subscriptions_of(message: Message) -> list[Any] | None:
    """The ``subscription`` of a (un)subscribe: one name or a list (None if absent or empty)."""
    value = message.get("subscription")
    names = value if isinstance(value, list) else [value] if value is not None else []
    return names or None

"""The HTTP protocol of ``/register`` and ``/notify`` as the clients speak it, with no I/O.

The blocking and the asyncio flavours both build their requests and read their replies
here, so that they cannot disagree. (See ``docs/protocol.md``.)

Cursors are opaque to applications, but this client ships with the server and knows
their form, ``EPOCH~channel~id~channel~id``: it moves the position of one channel per
event handed out, so ``cursor`` is exact even in the middle of a reply. Should a cursor
not have that form, the reply's own cursor is used once the whole reply is handed out.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .errors import CometClientError, Refused, refused

#: Statuses worth retrying (with the same Idempotency-Key, for a publish).
RETRYABLE = frozenset({429, 502, 503, 504})
SEP = "~"


def dumps(value: Any) -> bytes:
    """Strict, compact JSON (NaN and Infinity refused here rather than by the server)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CometClientError(f"data is not JSON: {exc}") from None


def json_object(body: bytes) -> dict:
    """A reply body as a JSON object ({} when it is not one)."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def failure(status: int, body: bytes) -> Refused:
    """The exception for a reply that retrying will not fix."""
    doc = json_object(body)
    message = doc.get("error") if isinstance(doc.get("error"), str) else body[:200].decode("utf-8", "replace")
    auth = doc.get("auth") if isinstance(doc.get("auth"), str) else None
    return refused(status, message or f"HTTP {status}", auth)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}




def current_token(source: str | Callable[[], str] | None) -> str | None:
    """The token to send: the string, or what the callable returns now."""
    return source() if callable(source) else source


# -- publishing ------------------------------------------------------------------

def notify_body(channel: str | None, client: str | None, data: Any) -> bytes:
    return dumps({"client": client, "data": data} if client is not None else {"channel": channel, "data": data})


def batch_body(events: Iterable[Any]) -> bytes:
    """``{"events": [...]}`` from ``(channel, data)`` pairs or ``{"channel"|"client", "data"}`` dicts."""
    items = []
    for event in events:
        if isinstance(event, Mapping):
            items.append(dict(event))
        else:
            channel, data = event
            items.append({"channel": channel, "data": data})
    return dumps({"events": items})


def notify_id(body: bytes) -> int:
    seq = json_object(body).get("id")
    if not isinstance(seq, int):
        raise CometClientError(f"unexpected notify reply: {body[:200]!r}")
    return seq


def batch_ids(body: bytes) -> list[int]:
    events = json_object(body).get("events")
    if not isinstance(events, list):
        raise CometClientError(f"unexpected batch reply: {body[:200]!r}")
    return [int(event["id"]) for event in events]


# -- cursors -----------------------------------------------------------------------

def split_cursor(cursor: str | None) -> tuple[str, dict[str, int]] | None:
    """(epoch, positions) of a cursor of the known form, else None."""
    if not cursor:
        return None
    parts = cursor.split(SEP)
    if len(parts) < 3 or len(parts) % 2 == 0 or not all(p.isascii() and p.isdigit() for p in parts[2::2]):
        return None
    return parts[0], {parts[i]: int(parts[i + 1]) for i in range(1, len(parts), 2)}


def join_cursor(epoch: str, positions: Mapping[str, int]) -> str:
    return SEP.join([epoch, *(f"{channel}{SEP}{seq}" for channel, seq in positions.items())])


def cursor_client(cursor: str | None) -> str | None:
    """The client id a cursor's private channel (``@ID``) names, if any."""
    split = split_cursor(cursor)
    return next((name[1:] for name in split[1] if name.startswith("@")), None) if split else None


def without_private(cursor: str | None) -> str | None:
    """The cursor less its private channel (after the server refused the client id in it)."""
    split = split_cursor(cursor)
    if split is None:
        return None
    public = {name: seq for name, seq in split[1].items() if not name.startswith("@")}
    return join_cursor(split[0], public) if public else None


# -- polling -------------------------------------------------------------------------

class Poll(NamedTuple):
    """A 200 reply of ``/register``: the events with the cursor after each, and the rest."""

    events: list[tuple[str, int, Any, str | None]]
    cursor: str
    recovered: bool
    client: str | None
    epoch: str


#: Query parameters, as httpx takes them.
Params = list[tuple[str, "str | int | float | bool | None"]]


def register_params(channels: tuple[str, ...], cursor: str | None, client: str | None,
                    timeout_s: float | None) -> Params:
    params: Params = [("channel", channel) for channel in channels]
    if cursor:
        params.append(("since", cursor))
    if client:
        params.append(("client", client))
    if timeout_s is not None:
        params.append(("timeout", f"{timeout_s:g}"))
    return params


def parse_poll(body: bytes) -> Poll:
    """A poll reply, each event given the exact cursor after it (see the module docstring)."""
    doc = json_object(body)
    events, cursor = doc.get("events"), doc.get("cursor")
    if not isinstance(events, list) or not isinstance(cursor, str):
        raise CometClientError(f"unexpected poll reply: {body[:200]!r}")
    split = split_cursor(cursor)
    positions: dict[str, int] | None = None
    if split is not None:  # each channel one before its first event here (a channel's ids are consecutive)
        positions = dict(split[1])
        for event in reversed(events):
            positions[event["channel"]] = int(event["id"]) - 1
    out = []
    for index, event in enumerate(events):
        channel, seq = event["channel"], int(event["id"])
        after: str | None = cursor if index == len(events) - 1 else None
        if positions is not None and after is None:
            positions[channel] = seq
            after = join_cursor(split[0], positions) if split else None
        out.append((channel, seq, event.get("data"), after))
    client = doc.get("client")
    return Poll(out, cursor, doc.get("recovered") is not False, client if isinstance(client, str) else None,
                str(doc.get("epoch", "")))

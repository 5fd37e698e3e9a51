"""The geventcomet wire protocol, with no I/O.

Everything here is a pure function of its arguments: parse and validate a register
or notify request, encode and decode the opaque cursor, decide what a resuming
client can be given (``plan_read``), and encode replies. Sockets, greenlets and
storage live elsewhere; this module is tested with plain calls.

Numbers from clients are parsed from ASCII only (``str.isdigit`` and ``int``/``float``
also take other Unicode digits, ``_`` separators and whitespace), and a notify's
``data`` must be strict JSON (:mod:`geventcomet.strictjson`): what is stored can be
served to any JSON parser.

Vocabulary: every event has a per-channel ``seq`` (``id`` on the wire) that
increases by exactly one. A client's position in a channel is the ``seq`` of the
last event it has seen; ``since`` is that position. The backend's ``epoch`` changes
whenever history was lost, so a position from another epoch is never trusted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import parse_qsl

from . import notify_body, strictjson
from .errors import BadRequest, LengthRequired, PayloadTooLarge

#: Channel names: letters, digits and ``_ . : - /``, 1 to 128 characters (``/`` for Bayeux
#: names such as ``/chat/room1``: one channel space for every transport). Nothing that needs
#: URL-encoding in a query, and never ``~`` (the cursor separator) or ``@`` (private channels).
MAX_CHANNEL_CHARS = 128
_CHANNEL = rf"[A-Za-z0-9_.:/-]{{1,{MAX_CHANNEL_CHARS}}}"
CHANNEL_RE = re.compile(_CHANNEL + r"\Z")
#: Client ids: letters, digits, ``_`` and ``-``, 1 to 64 characters.
CLIENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
#: A registered client's private channel is ``@`` + its id, a name no public channel can have.
PRIVATE_PREFIX = "@"
_CURSOR_SEP = "~"
#: A seq on the wire: ASCII digits, at most 18 (fits in a signed 64-bit integer).
_SEQ = r"[0-9]{1,18}"
_SEQ_RE = re.compile(_SEQ + r"\Z")
#: A whole cursor: an epoch, ``~name~seq`` pairs; a name: a channel, or ``@`` + a client id (CLIENT_RE ⊂ CHANNEL_RE).
_CURSOR_RE = re.compile(rf"[A-Za-z0-9]{{1,32}}(?:{_CURSOR_SEP}@?{_CHANNEL}{_CURSOR_SEP}{_SEQ})*\Z")
#: A timeout in seconds: an ASCII decimal number (no sign, inf, nan, ``_`` or spaces).
_TIMEOUT_RE = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})(?:[eE][+-]?[0-9]{1,3})?\Z")
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,19}\Z")
#: Deepest nesting of arrays and objects in a notify's JSON body (the envelope object is level 1).
MAX_JSON_DEPTH = strictjson.MAX_DEPTH
MISSING_CHANNEL = "missing channel: pass at least one channel=NAME (or a client=ID)"


@dataclass(frozen=True, slots=True)
class Cursor:
    """A client's position: the epoch it was read in and the last seen seq per channel."""

    epoch: str | None
    positions: dict[str, int]


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """A validated ``GET /register`` (or ``/stream``) request."""

    channels: tuple[str, ...]  # public channels, deduplicated, in request order
    cursor: Cursor
    timeout_s: float
    client: str | None  # None: the server assigns one


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    """A validated ``POST /notify``: exactly one of ``channel`` and ``client`` is set."""

    channel: str | None
    client: str | None
    data_json: str  # the payload, already re-encoded as compact JSON
    token: str | None = None  # from a form field; the page's form cannot set headers


class ReadPlan(NamedTuple):
    """What to deliver from a channel: every event with seq > ``after``.

    A NamedTuple, not a frozen dataclass: one is built per channel per poll, and
    frozen dataclasses pay an ``object.__setattr__`` per field.
    """

    after: int
    recovered: bool


def private_channel(client: str) -> str:
    return PRIVATE_PREFIX + client


@lru_cache(maxsize=8192)  # the same few names arrive on every poll; a regex each time shows in profiles
def validate_channel(name: str) -> str:
    if not name:
        raise BadRequest("channel name is empty")
    if len(name) > MAX_CHANNEL_CHARS:
        raise BadRequest(f"channel name is longer than {MAX_CHANNEL_CHARS} characters")
    if not CHANNEL_RE.match(name):
        raise BadRequest(f"invalid channel name {name[:40]!r}: use letters, digits and _ . : - /")
    return name


def validate_client(client: str) -> str:
    if not CLIENT_RE.match(client):
        raise BadRequest("invalid client id: use 1 to 64 letters, digits, _ or -")
    return client


def parse_register(query: str, *, default_timeout_s: float, max_timeout_s: float,
                   max_channels: int, resumable: bool = False,
                   last_event_id: str | None = None) -> RegisterRequest:
    """Validate a register query string (``channel=..&since=..&timeout=..&client=..``).

    ``resumable`` (an SSE stream): ``last_event_id`` (the ``Last-Event-ID`` header, else the
    query's ``last_event_id=``) replaces ``since``, and a cursor naming one private channel
    names the client, so a browser's native reconnect keeps its client id.
    """
    channels: list[str] = []
    since = client = timeout = resume = None
    try:
        pairs = query_pairs(query, max_channels + 8)
    except ValueError:
        raise BadRequest("too many query parameters") from None
    for key, value in pairs:
        if key == "channel":
            for name in value.split(","):
                validate_channel(name)
                if name not in channels:
                    channels.append(name)
        elif key == "since":
            since = value
        elif key == "timeout":
            timeout = value
        elif key == "client":
            client = validate_client(value)
        elif key == "last_event_id" and resume is None:
            resume = value
    if len(channels) > max_channels:
        raise BadRequest(f"too many channels in one poll: {len(channels)} > {max_channels}")
    if not channels and client is None and not resumable:
        raise BadRequest(MISSING_CHANNEL)
    timeout_s = parse_timeout(timeout, default_timeout_s, max_timeout_s)
    cursor = parse_since(since, channels)
    if resumable:
        resume = last_event_id or resume
        if resume:
            cursor = parse_since(resume, channels)
        client = client or client_in(cursor)
        if not channels and client is None:
            raise BadRequest(MISSING_CHANNEL)
    return RegisterRequest(tuple(channels), cursor, timeout_s, client)


def query_pairs(query: str, max_fields: int) -> list[tuple[str, str]]:
    """``parse_qsl(query, keep_blank_values=True, max_num_fields=max_fields)``, but a query with
    nothing to unquote (the usual poll's: its names are URL-safe) is only split."""
    if "%" in query or "+" in query:
        return parse_qsl(query, keep_blank_values=True, max_num_fields=max_fields)
    if query.count("&") >= max_fields:
        raise ValueError("too many fields")
    return [(name, value) for name, _, value in (pair.partition("=") for pair in query.split("&") if pair)]


def client_in(cursor: Cursor) -> str | None:
    """The client id whose private channel a cursor names, if exactly one."""
    private = [c[1:] for c in cursor.positions if c.startswith(PRIVATE_PREFIX)]
    return private[0] if len(private) == 1 else None


def parse_timeout(value: str | None, default_s: float, max_s: float) -> float:
    if value is None or value == "":
        return default_s
    timeout_s = float(value) if _TIMEOUT_RE.match(value) else -1.0
    if not 0 <= timeout_s <= max_s:
        raise BadRequest(f"timeout must be a number of seconds between 0 and {max_s:g}, not {value[:20]!r}")
    return timeout_s


def parse_since(value: str | None, channels: list[str]) -> Cursor:
    """Accept an opaque cursor, or a plain event id when exactly one channel is named."""
    if value is None or value == "":
        return Cursor(None, {})
    if _SEQ_RE.match(value):
        if len(channels) != 1:
            raise BadRequest("a plain event id as since needs exactly one channel; pass the cursor")
        return Cursor(None, {channels[0]: int(value)})
    return decode_cursor(value)


def encode_cursor(epoch: str, positions: dict[str, int]) -> str:
    """``EPOCH~channel~seq~channel~seq``: opaque to clients, cheap to build per reply."""
    return _CURSOR_SEP.join([epoch, *(f"{channel}{_CURSOR_SEP}{seq}" for channel, seq in positions.items())])


def decode_cursor(text: str) -> Cursor:
    """``EPOCH~channel~seq~...`` (:func:`encode_cursor`), checked whole by one regex."""
    if _CURSOR_RE.match(text) is None:
        raise BadRequest("malformed cursor: pass back the cursor of the last reply unchanged")
    parts = text.split(_CURSOR_SEP)
    return Cursor(parts[0], {parts[i]: int(parts[i + 1]) for i in range(1, len(parts), 2)})


def plan_read(since: int | None, first: int, last: int, same_epoch: bool = True) -> ReadPlan:
    """Decide what a client at ``since`` gets from a channel holding seqs ``first..last``.

    ``first`` is the oldest retained seq (``last + 1`` when nothing is retained).
    A new subscriber (no position) starts now. A position the history no longer
    reaches (trimmed, expired, another epoch) gets everything retained and
    ``recovered=False``; a position from the future gets nothing and ``False``.
    """
    if not same_epoch:
        return ReadPlan(first - 1, False)
    if since is None:
        return ReadPlan(last, True)
    if since > last:
        return ReadPlan(last, False)
    if since < first - 1:
        return ReadPlan(first - 1, False)
    return ReadPlan(since, True)


def encode_json(value: object) -> str:
    """Compact JSON, the one encoder of every JSON byte served or stored.

    Not ASCII-escaped: a notify's data is stored (and counted against the byte bounds) as
    UTF-8. ``ValueError`` for a non-finite float (served JSON must parse strictly).
    """
    return strictjson.dumps(value)


def json_bytes(value: object) -> bytes:
    """:func:`encode_json` as UTF-8 (a lone surrogate, which no caller passes, becomes ``?``)."""
    return encode_json(value).encode("utf-8", "replace")


def json_reply(value: object) -> bytes:
    """A whole JSON reply body: :func:`json_bytes` and a newline, so that a shell prompt does
    not stick to ``curl``'s output (a JSON parser reads the newline as whitespace)."""
    return json_bytes(value) + b"\n"


def event_prefix(channel: str) -> bytes:
    """The bytes of an encoded event before its id: backends store ``prefix + id + suffix``."""
    return b'{"channel":' + encode_json(channel).encode() + b',"id":'


def encode_event(channel: str, seq: int, data_json: str) -> bytes:
    """One event as JSON, encoded once per publish and shared by every reader."""
    return event_prefix(channel) + str(seq).encode() + b',"data":' + data_json.encode() + b"}"


def notify_reply(channel: str, seq: int, woken: int) -> bytes:
    """``POST /notify``'s reply body, as :func:`json_reply` would encode it."""
    return b'{"channel":%s,"id":%d,"woken":%d}\n' % (json_bytes(channel), seq, woken)


def encode_poll_reply(events: list[bytes], cursor: str, *, timeout: bool, recovered: bool,
                      client: str, epoch: str) -> bytes:
    return b"".join((
        b'{"events":[', b",".join(events), b'],"cursor":"', cursor.encode(),
        b'","timeout":', b"true" if timeout else b"false",
        b',"recovered":', b"true" if recovered else b"false",
        b',"client":"', client.encode(), b'","epoch":"', epoch.encode(), b'"}\n',
    ))


def check_body_length(content_length: str | None, chunked: bool, max_bytes: int) -> int:
    """Validate a request body's declared size before a byte of it is read."""
    if chunked:
        raise LengthRequired("chunked request bodies are not accepted: send Content-Length")
    if not content_length:
        return 0
    if not _CONTENT_LENGTH_RE.match(content_length):
        raise BadRequest("invalid Content-Length")
    length = int(content_length)
    if length > max_bytes:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {max_bytes}")
    return length


def parse_notify(content_type: str, body: bytes) -> NotifyRequest:
    """Validate a notify body: JSON ``{"channel"|"client": .., "data": ..}`` or form fields."""
    channel, client, data, token = notify_body.decode(content_type, body)
    data_json = encode_json(data)
    if (channel is None) == (client is None):
        raise BadRequest("give exactly one of channel and client")
    if channel is not None:
        if not isinstance(channel, str):
            raise BadRequest("channel must be a string")
        validate_channel(channel)
    if client is not None:
        if not isinstance(client, str):
            raise BadRequest("client must be a string")
        validate_client(client)
    return NotifyRequest(channel, client, data_json, token)

"""A notify's body decoded, with no I/O: JSON ``{"channel"|"client": .., "data": ..}`` or form fields,
or a batch ``{"events": [{"channel"|"client": .., "data": ..}, ...]}`` (:func:`decode_batch`).

:func:`decode` only takes the body apart and applies the strict-JSON rules
(:mod:`geventcomet.strictjson`); :func:`geventcomet.protocol.parse_notify` validates the
names it returns and encodes ``data`` for storage.
"""
from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from . import strictjson
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


class Fields(NamedTuple):
    """What a notify body names: unchecked ``channel``/``client``, ``data``, a form's ``token``."""

    channel: Any
    client: Any
    data: Any
    token: str | None


def decode(content_type: str, body: bytes) -> Fields:
    """The body's fields; :class:`BadRequest` or :class:`UnsupportedMediaType` if it has none."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (not media and body[:1] == b"{"):
        try:
            doc = strictjson.loads(body)
        except strictjson.StrictJSONError as exc:
            raise BadRequest(str(exc)) from None
        if not isinstance(doc, dict):
            raise BadRequest("the JSON body must be an object with channel (or client) and data")
        if "data" not in doc:
            raise BadRequest("missing data")
        return Fields(doc.get("channel"), doc.get("client"), doc["data"], None)
    if media == "application/x-www-form-urlencoded":
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("malformed form body") from None
        if "data" not in form:
            raise BadRequest("missing data")
        try:  # strict UTF-8 decoding refuses raw surrogates and %-escapes decode with U+FFFD: belt and braces
            strictjson.check(form["data"])
        except strictjson.StrictJSONError as exc:
            raise BadRequest(str(exc)) from None
        return Fields(form.get("channel") or None, form.get("client") or None, form["data"],
                      form.get("token") or None)
    raise UnsupportedMediaType("send application/json or application/x-www-form-urlencoded")


def decode_batch(content_type: str, body: bytes, max_events: int) -> list[Fields] | None:
    """A batch body's events (unchecked names, like :func:`decode`), or None when the body is
    not a batch (no ``"events"`` member): then it is a single notify for :func:`decode`.
    More than ``max_events`` events is :class:`PayloadTooLarge` (413)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if b'"events"' not in body or not (media == "application/json" or (not media and body[:1] == b"{")):
        return None  # cheap: a single notify is not parsed twice unless its data names "events"
    try:
        doc = strictjson.loads(body)
    except strictjson.StrictJSONError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(doc, dict) or "events" not in doc:
        return None
    if set(doc) != {"events"}:
        raise BadRequest("a batch body has only events: {\"events\": [{\"channel\": .., \"data\": ..}, ...]}")
    events = doc["events"]
    if not isinstance(events, list) or not events:
        raise BadRequest("events must be a non-empty list of {channel (or client), data} objects")
    if len(events) > max_events:
        raise PayloadTooLarge(f"too many events: {len(events)} > {max_events} (--max-batch-events)")
    fields = []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or "data" not in event:
            raise BadRequest(f"events[{index}] must be an object with channel (or client) and data")
        fields.append(Fields(event.get("channel"), event.get("client"), event["data"], None))
    return fields

"""The SSE transport's frames (``GET /stream``), with no I/O: lines in, items and decisions out.

Frames (see :mod:`geventcomet.stream`): ``hello`` (the client id; its ``id:`` is the start
cursor), one message per event whose ``id:`` is the cursor just after it, ``gap`` (the
server could not give everything after the cursor), ``reconnect`` (the server is stopping),
and heartbeat comments. Every ``id:`` is a cursor, so a subscriber switching between SSE and
the long-poll continues where it was.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from .errors import CometClientError
from .events import Event, Gap


class Frame(NamedTuple):
    event: str
    data: str
    id: str | None
    retry_ms: int | None


class FrameParser:
    """Lines (without their line ends) in, complete :class:`Frame` out."""

    def __init__(self) -> None:
        self._event: str = "message"
        self._id: str | None = None
        self._retry: int | None = None
        self._data: list[str] = []

    def _reset(self) -> None:
        self._event, self._id, self._retry = "message", None, None
        self._data = []

    def feed(self, line: str) -> Frame | None:
        if not line:  # a blank line ends the frame
            frame = Frame(self._event, "\n".join(self._data), self._id, self._retry) if self._data else None
            self._reset()
            return frame
        if line.startswith(":"):
            return None  # a heartbeat comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


class Decoded(NamedTuple):
    """What a frame means: items to hand out, the client id and start cursor it names
    (``hello``), and whether the server asked the client to reconnect."""

    items: list[Event | Gap]
    client: str | None = None
    start: str | None = None
    reconnect: bool = False


def decode(frame: Frame, cursor: str | None) -> Decoded:
    """The meaning of ``frame`` for a subscriber at ``cursor``."""
    try:
        doc = json.loads(frame.data)
    except ValueError:
        raise CometClientError(f"unexpected SSE frame: {frame.data[:200]!r}") from None
    if frame.event == "hello":
        return Decoded([], doc.get("client"), frame.id)
    if frame.event == "gap":
        return Decoded([Gap(cursor, str(doc.get("epoch", "")))])
    if frame.event == "reconnect":
        return Decoded([], reconnect=True)
    return Decoded([Event(doc["channel"], int(doc["id"]), doc.get("data"), frame.id)])

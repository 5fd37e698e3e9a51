"""What both subscriber flavours share: the position, the cursor store, the queue of items.

``for item in sub:`` hands out :class:`Event` items in order, each once, and a :class:`Gap`
where the server said ``recovered: false`` (unless ``on_gap`` is given: then it is called
instead). ``sub.cursor`` is always the position just after the last item handed out;
with ``cursor_store`` it is saved before each poll and at ``close()``, and a new
subscriber given the same store resumes there (at-least-once: after a crash, at most
the events of the reply being handed out come again).

Reconnecting never ends by itself: connection errors, timeouts and 503s are retried with
full-jitter backoff, honouring ``Retry-After`` (:mod:`.policy`).

``transport="sse"`` reads ``GET /stream`` instead (:mod:`.sse`): one long response, each
event with its cursor. The cursor store is then saved when the stream opens, at most once
a second while events arrive, and at ``close()``.
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Union

from . import wire
from .backoff import Backoff
from .cursor_store import CursorStore, cursor_store
from .events import Event, Gap
from .policy import SubscriberCore
from .sse import FrameParser

Item = Union[Event, Gap]
#: Seconds a reply may take beyond the poll's timeout (SSE: beyond the 25 s; heartbeats every 15 s).
READ_SLACK_S = 15.0
#: Seconds between saves of the cursor store while an SSE stream hands out events.
SSE_SAVE_EVERY_S = 1.0
TRANSPORTS = ("longpoll", "sse")


class SubscriberBase:
    """The state both flavours share: the core, the store, the queue of items to hand out."""

    def __init__(self, url: str, channels: str | Iterable[str], token: str | Callable[[], str] | None,
                 cursor: str | None, on_gap: Callable[[Gap], None] | None,
                 store: str | os.PathLike[str] | CursorStore | None, poll_timeout_s: float | None,
                 backoff: Backoff | None, transport: str) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.sse, self.stopped = transport == "sse", False
        self.parser = FrameParser()
        self.saved_at = 0.0
        self.url = url.rstrip("/")
        self.token = token
        self.on_gap = on_gap
        self.poll_timeout_s = poll_timeout_s
        self.store = cursor_store(store)
        if cursor is None and self.store is not None:
            cursor = self.store.load()
        names = (channels,) if isinstance(channels, str) else tuple(channels)
        self.core = SubscriberCore(names, cursor, backoff or Backoff())
        self.pending: deque[Item] = deque()
        self.read_timeout_s = (poll_timeout_s or 25.0) + READ_SLACK_S

    @property
    def cursor(self) -> str | None:
        """The position just after the last item handed out (pass it as ``cursor=`` to resume)."""
        return self.core.cursor

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self.stopped

    @property
    def client(self) -> str | None:
        """The client id the server issued (its private channel gets ``notify_client`` events)."""
        return self.core.client

    def headers(self) -> dict[str, str]:
        return wire.auth_headers(wire.current_token(self.token))

    def save(self) -> None:
        if self.store is not None and self.core.cursor:
            self.store.save(self.core.cursor)
            self.saved_at = time.monotonic()

    def on_line(self, line: str) -> bool | None:
        """One line of an SSE stream: True when items are ready to hand out, False when the
        server asked to reconnect, None to read on."""
        frame = self.parser.feed(line)
        if frame is None:
            return None
        items, reconnect = self.core.after_frame(frame)
        self.pending.extend(items)
        if reconnect:
            return False
        if items and self.store is not None and time.monotonic() - self.saved_at >= SSE_SAVE_EVERY_S:
            self.save()
        return True if items else None

    def next_item(self) -> Item | None:
        """The next item to hand out (a gap given to ``on_gap`` is not), or None to poll."""
        while self.pending:
            item = self.pending.popleft()
            self.core.handed(item)
            if isinstance(item, Gap) and self.on_gap is not None:
                self.on_gap(item)
                continue
            return item
        return None

    def failed(self, exc: Exception, transport_errors: tuple[type[Exception], ...]) -> float:
        """After a request failed: 0 if the subscriber was closed meanwhile (the iteration
        ends), the backoff after one of ``transport_errors``; anything else is raised."""
        if self.closed:
            return 0.0
        if isinstance(exc, transport_errors):
            return self.core.failed()
        raise exc

    def take(self, status: int, retry_after: str | None, body: bytes) -> float:
        """A whole reply: its items queued; the delay before the next request."""
        items, delay = self.core.after_reply(status, retry_after, body, callable(self.token))
        self.pending.extend(items)
        return delay

"""What to do after each reply or failure, with no I/O: shared by the blocking and asyncio flavours.

Publishing: 200 is done; 429, 502, 503, 504, connection errors and timeouts are retried
with the same Idempotency-Key (so the event is stored once) after a full-jitter backoff
that honours ``Retry-After``, until ``retry_for_s`` is spent (then :class:`Unavailable`);
a 401 with a token callable refreshes the token once; anything else raises at once.

Subscribing: the same backoff, without an end; a 503 ``"reconnect"`` reply (the server is
stopping) is a reconnect after its ``Retry-After``; a 401 with a token callable refreshes
the token; a 403 ``auth: "client"`` (a restarted server that no longer knows the client id)
registers again, keeping the cursor's public positions.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import wire
from .backoff import Backoff, retry_after
from .errors import AuthError, Unavailable
from .events import Event, Gap
from .sse import Frame, decode

#: The ways a publish attempt can end: done (the reply body), or retry after a delay.
DONE, RETRY = "done", "retry"


class Attempts:
    """A publish's retries: each failure gives the delay before the next attempt, or raises
    :class:`Unavailable` when that would end after ``retry_for_s`` from the first attempt."""

    def __init__(self, backoff: Backoff, retry_for_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff, self.clock = backoff, clock
        self.deadline = clock() + retry_for_s
        self.failures = 0
        self.refreshed = False

    def failed(self, reason: str, retry_after_s: float | None = None) -> float:
        delay = self.backoff.delay(self.failures, retry_after_s)
        self.failures += 1
        if self.clock() + delay > self.deadline:
            raise Unavailable(f"gave up after {self.failures} attempts: {reason}")
        return delay

    def after_reply(self, status: int, retry_after_header: str | None, body: bytes,
                    can_refresh: bool) -> tuple[str, Any]:
        """``(DONE, body)`` or ``(RETRY, delay)``; raises what retrying cannot fix."""
        if status == 200:
            return DONE, body
        if status in wire.RETRYABLE:
            return RETRY, self.failed(f"HTTP {status}", retry_after(retry_after_header))
        if status == 401 and can_refresh and not self.refreshed:
            self.refreshed = True
            return RETRY, 0.0
        raise wire.failure(status, body)


class SubscriberCore:
    """A subscriber's position and client id, and the decision after each poll."""

    def __init__(self, channels: tuple[str, ...], cursor: str | None, backoff: Backoff) -> None:
        self.channels = channels
        self.cursor = cursor
        self.client = wire.cursor_client(cursor)
        self.backoff = backoff
        self.failures = 0
        self.refreshed = False

    def params(self, timeout_s: float | None) -> wire.Params:
        return wire.register_params(self.channels, self.cursor, self.client, timeout_s)

    def handed(self, item: Event | Gap) -> None:
        """``item`` was handed out: the cursor moves past it."""
        if isinstance(item, Event) and item.cursor is not None:
            self.cursor = item.cursor

    def failed(self, retry_after_s: float | None = None) -> float:
        delay = self.backoff.delay(self.failures, retry_after_s)
        self.failures += 1
        return delay

    def after_reply(self, status: int, retry_after_header: str | None, body: bytes,
                    can_refresh: bool) -> tuple[list[Event | Gap], float]:
        """The items to hand out and the seconds to wait before the next poll; raises what
        retrying cannot fix (400, 403, 404, a 401 without a token to refresh)."""
        if status == 200:
            poll = wire.parse_poll(body)
            self.failures, self.refreshed = 0, False
            self.client = poll.client or self.client
            items: list[Event | Gap] = [] if poll.recovered else [Gap(self.cursor, poll.epoch)]
            items += [Event(channel, seq, data, after) for channel, seq, data, after in poll.events]
            if not poll.events:
                self.cursor = poll.cursor
            return items, 0.0
        if status in wire.RETRYABLE:
            doc = wire.json_object(body)
            if doc.get("reconnect") is True and self.cursor is None and isinstance(doc.get("cursor"), str):
                self.cursor, self.client = doc["cursor"], doc.get("client") or self.client
            return [], self.failed(retry_after(retry_after_header))
        if status == 401 and can_refresh and not self.refreshed:
            self.refreshed = True
            return [], 0.0
        error = wire.failure(status, body)
        if isinstance(error, AuthError) and error.auth == "client" and self.client is not None:
            self.client, self.cursor = None, wire.without_private(self.cursor)
            return [], self.failed()
        raise error

    def after_frame(self, frame: Frame) -> tuple[list[Event | Gap], bool]:
        """The items an SSE frame brings, and whether the server asked to reconnect."""
        meaning = decode(frame, self.cursor)
        if meaning.start is not None:  # hello: the stream is open
            self.failures, self.refreshed = 0, False
            self.client = meaning.client or self.client
            self.cursor = self.cursor or meaning.start
        return meaning.items, meaning.reconnect

"""The in-process tails of the Redis backend: the last few events of each channel, as this process saw them.

Every publish Redis acknowledged (this process's own, or another's through the
pub/sub wake-up) is appended to its channel's tail, and the channel's waiters are
woken; most of them then read the tail instead of Redis, so a fan-out to N waiters
costs one Redis message per process, not N reads.

A tail never answers what it cannot answer exactly: only while it is contiguous
(a gap restarts it), younger than the age limit, and of the current epoch (the
backend drops every tail when the epoch changes or the wake-up listener loses its
connection; ``generation`` counts those drops, so a read that began before one does
not start a tail from what it read).
"""
from __future__ import annotations

from itertools import islice
from typing import Callable

from . import ChannelRead, Page, fill_page

#: Channels with a tail in one process; beyond this, the oldest tenth is dropped.
MAX_TAILS = 200_000


class Tail:
    """The last few events of a channel as seen by this process: seqs ``first..last``, contiguous."""

    __slots__ = ("first", "last", "events")

    def __init__(self, last: int) -> None:
        self.first = last + 1
        self.last = last
        # (arrival on the backend's steady clock, encoded); a list, not a deque: most tails
        # (private channels) stay empty, and an empty deque costs 600 bytes per client.
        self.events: list[tuple[float, bytes]] = []


class Tails:
    """The tails of one process, at most ``size`` events each, trusted for ``age_s`` seconds.

    ``now`` is the steady clock events' arrivals are stamped with; ``wake`` (set by the
    backend's ``start``) wakes a channel's local waiters.
    """

    def __init__(self, size: int, age_s: float, now: Callable[[], float]) -> None:
        self._size = size
        self._age_s = age_s
        self._now = now
        self._tails: dict[str, Tail] = {}
        #: Bumped whenever every tail is dropped.
        self.generation = 0
        self.wake: Callable[[str], int] = lambda channel: 0

    def read(self, channel: str, since: int | None, page: Page, epoch: str) -> ChannelRead | None:
        """What ``read`` answers from this channel's tail (recovered), or None: ask Redis.

        ``epoch`` is the current one; the caller has checked that the cursor's matches it.
        """
        tail = self._tails.get(channel)
        if tail is None:
            return None
        last = tail.last
        if since is None or since == last:
            return ChannelRead([], last, True, epoch)
        if tail.first - 1 <= since < last:
            skip = since + 1 - tail.first
            if tail.events[skip][0] >= self._now() - self._age_s:
                events = fill_page((e for _, e in islice(tail.events, skip, None)), page)
                return ChannelRead(events, since + len(events), True, epoch)
        return None

    def begin(self, channel: str, last: int) -> bool:
        """Start a channel's tail at ``last`` (Redis's, just read); False if it has one already."""
        if channel in self._tails:
            return False
        self._add(channel, Tail(last))
        return True

    def arrived_since(self, channel: str, started: float) -> tuple[int, int]:
        """``(last, n)``: the tail's last seq, and how many of its events arrived at ``started`` or later."""
        tail = self._tails[channel]
        return tail.last, sum(1 for at, _ in tail.events if at >= started)

    def apply(self, channel: str, seq: int, encoded: bytes, own: bool) -> None:
        """A publish Redis acknowledged (``own``: this process's, else another's through pub/sub)."""
        tail = self._tails.get(channel)
        if tail is None:
            tail = self._add(channel, Tail(seq - 1))
        if seq <= tail.last:
            # Already applied (and woken). Another process's event may still be news to
            # a waiter that read Redis before this tail began: wake, it costs a re-read.
            if not own:
                self.wake(channel)
            return
        if seq != tail.last + 1:  # a gap: the tail restarts here; older reads go to Redis
            tail.events.clear()
            tail.first = seq
        tail.events.append((self._now(), encoded))
        tail.last = seq
        if len(tail.events) > self._size:
            del tail.events[0]
            tail.first += 1
        self.wake(channel)

    def discard(self, channel: str) -> None:
        """Forget a channel's tail (the channel was dropped in Redis)."""
        self._tails.pop(channel, None)

    def drop_all(self) -> None:
        """Forget every tail: from now on they cannot be trusted (see the module docstring)."""
        self._tails.clear()
        self.generation += 1

    def _add(self, channel: str, tail: Tail) -> Tail:
        tails = self._tails
        if len(tails) >= MAX_TAILS:  # oldest first; a dropped tail only costs Redis reads
            for name in list(islice(tails, MAX_TAILS // 10)):
                del tails[name]
        tails[channel] = tail
        return tail

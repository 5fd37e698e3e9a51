"""Where waiting requests park, and how a publish wakes them.

How this works
--------------
Each held request owns one :class:`gevent.hub.Waiter` and parks it in the set of
every channel it listens on (and in ``_all``, for shutdown). ``wake(channel)``
*takes the channel's whole set away* and, from the gevent hub, switches to each
waiter once. Nothing ever scans the waiters, and nothing calls ``Event.clear()``.

A wake-up is only a hint that something changed: the woken request reads the
backend again, and parks again before that read. A waiter parks *before* it reads
the backlog, so a publish landing while the read yields (Redis, SQLite) still
finds it in the set; the Waiter stores the value and ``get()`` returns at once.
(Parking after the read loses that wake-up: the request then sleeps until its
timeout with an event waiting for it.)

While a wake switches to two or more waiters one by one, :attr:`Hub.waking` is true:
each woken request runs from that loop until it blocks, so a request that sees it set
after sending its reply yields at once, letting the loop reach the next waiter
before it goes back to reading its next request (the handler does this). A wake of
one waiter leaves it false: there is no next reply to let through, and the yield cost
2 % of the server's instructions per delivery in the one-channel-per-client cycle.

Sets, not gevent ``Event`` links: ``Event.unlink`` is a list removal, O(n) per
departing waiter, which turns a fan-out to 15,000 waiters quadratic. A channel with one
waiter holds the Waiter itself, not a set of one: every poll also listens on its client's
private channel, and a set is 216 bytes even with one member (``tracemalloc``: ~0.2 KB
per waiting client, ``bench/RESULTS-perf.md``).
"""
from __future__ import annotations

import enum
import time
from typing import NamedTuple

import gevent
from gevent.event import Event
from gevent.hub import Waiter

from .metrics_record import observe_fanout


class Reason(enum.Enum):
    """Why a parked request was switched to."""

    WAKE = "wake"  # a channel it listens on was published to
    TIMEOUT = "timeout"  # its hold time passed
    READABLE = "readable"  # its socket became readable: the client hung up, or pipelined
    SHUTDOWN = "shutdown"  # the server is stopping


#: A wake of at least this many waiters is recorded as the process's last fan-out.
FANOUT_MIN_WAITERS = 100


class FanOut(NamedTuple):
    """One wake-up of many waiters, timed in the hub (wall clock, seconds)."""

    waiters: int
    started: float
    ended: float  # every woken reply has been sent (or its request yielded, e.g. on I/O)


class Hub:
    """The registry of parked requests. One per server process."""

    def __init__(self) -> None:
        self._loop = gevent.get_hub().loop
        self._waiters: dict[str, Waiter | set[Waiter]] = {}  # one waiter is held bare
        self._all: set[Waiter] = set()
        #: Set once :meth:`shutdown` has been called; new polls answer "reconnect" at once.
        self.closing = False
        #: Set whenever nothing is parked, so shutdown can wait for the last reply.
        self.idle = Event()
        self.idle.set()
        self._change: Event | None = None
        self._counts: dict[int, tuple[Event, int]] = {}  # watched count -> (its Event, watchers)
        #: The last wake of :data:`FANOUT_MIN_WAITERS` or more, for ``/stats``.
        self.last_fanout: FanOut | None = None
        #: True while a wake switches to its waiters: the running request was woken by it.
        self.waking = False

    @property
    def waiting(self) -> int:
        """Requests parked now."""
        return len(self._all)

    def waiter_count(self, channel: str) -> int:
        return _count(self._waiters.get(channel))

    def channel_waiters(self) -> dict[str, int]:
        """Parked requests per channel, for the Notify page."""
        return {channel: _count(waiters) for channel, waiters in self._waiters.items()}

    def park(self, waiter: Waiter, channels: tuple[str, ...]) -> None:
        """Put ``waiter`` where a publish to any of ``channels`` (or shutdown) will find it."""
        sets = self._waiters
        for channel in channels:
            waiters = sets.get(channel)
            if waiters is None:
                sets[channel] = waiter
            elif type(waiters) is set:
                waiters.add(waiter)
            elif waiters is not waiter:
                sets[channel] = {waiters, waiter}
        self._all.add(waiter)
        self.idle.clear()
        if self._change is not None:
            self._changed()
        if self._counts:
            self._count_reached()

    def unpark(self, waiter: Waiter, channels: tuple[str, ...]) -> None:
        sets = self._waiters
        for channel in channels:
            waiters = sets.get(channel)
            if waiters is waiter:
                del sets[channel]
            elif type(waiters) is set:
                waiters.discard(waiter)
                if not waiters:
                    del sets[channel]
        self._all.discard(waiter)
        if not self._all:
            self.idle.set()
        if self._change is not None:
            self._changed()
        if self._counts:
            self._count_reached()

    def next_change(self) -> Event:
        """An Event set at the next park or unpark, so tests and tools wait instead of polling."""
        if self._change is None:
            self._change = Event()
        return self._change

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    def watch_count(self, count: int) -> Event:
        """An Event set when exactly ``count`` requests are parked (at once if that many are now).

        For the ``/stats?waiting=N`` test hook. Unlike :meth:`next_change`, a watcher costs
        a park or unpark one dict lookup and is woken once, when its count is reached.
        Pair every call with :meth:`unwatch_count`.
        """
        event, watchers = self._counts.get(count, (None, 0))
        if event is None:
            event = Event()
        self._counts[count] = (event, watchers + 1)
        if len(self._all) == count:
            event.set()
        return event

    def unwatch_count(self, count: int) -> None:
        event, watchers = self._counts.get(count, (None, 0))
        if event is not None:
            if watchers > 1:
                self._counts[count] = (event, watchers - 1)
            else:
                del self._counts[count]

    def _count_reached(self) -> None:
        watched = self._counts.get(len(self._all))
        if watched is not None:
            watched[0].set()

    def wake(self, channel: str) -> int:
        """Wake every request parked on ``channel``; return how many there were."""
        waiters = self._waiters.pop(channel, None)
        if waiters is None:
            return 0
        if type(waiters) is not set:
            waiters = (waiters,)
        self._loop.run_callback(self._switch_all, waiters, Reason.WAKE)
        return len(waiters)

    def wake_all(self) -> int:
        """Wake every parked request (each re-reads its channels); return how many."""
        waiters, self._waiters = set(self._all), {}
        if waiters:
            self._loop.run_callback(self._switch_all, waiters, Reason.WAKE)
        return len(waiters)

    def shutdown(self) -> None:
        """Wake every parked request with :attr:`Reason.SHUTDOWN`; later polls see ``closing``."""
        self.closing = True
        self._loop.run_callback(self._switch_all, set(self._all), Reason.SHUTDOWN)

    def _switch_all(self, waiters: set[Waiter] | tuple[Waiter], reason: Reason) -> None:
        # Runs in the gevent hub, as Waiter.switch requires. A waiter that already left
        # (timed out in the same loop turn) just stores the value and is never read.
        # Each woken request runs until its reply is sent, then yields back here.
        started = time.time()
        self.waking = len(waiters) > 1  # one waiter: no other reply to let through first
        try:
            for waiter in waiters:
                waiter.switch(reason)
        finally:
            self.waking = False
        ended = time.time()
        observe_fanout(ended - started)  # every wake: a bisect and two additions (metrics_record)
        if len(waiters) >= FANOUT_MIN_WAITERS:
            self.last_fanout = FanOut(len(waiters), started, ended)


def _count(waiters: Waiter | set[Waiter] | None) -> int:
    """How many waiters a channel's entry holds (a bare Waiter is one)."""
    if waiters is None:
        return 0
    return len(waiters) if type(waiters) is set else 1

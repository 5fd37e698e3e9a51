"""What the request paths record for ``/metrics`` beyond the service's counters: cheap, no locks.

A recording is a bisect into a fixed bucket list and two additions (a histogram), or one
integer increment (a counter). gevent runs one greenlet at a time, so an increment needs no
lock; nothing allocates, nothing is read back until a scrape (:mod:`geventcomet.metrics_numbers`).

The state is per process, like :mod:`geventcomet.misbehaviour`'s counts: a server process
has one service, so the process is the unit (with ``--workers`` the supervisor adds the
processes up, :mod:`geventcomet.metrics_workers`). Tests that run several servers in one
process compare before and after.

Call sites (one line each): ``hub.Hub._switch_all`` times each wake
(:func:`observe_fanout`), ``poll.LongPoll.register`` each poll's hold (:func:`observe_poll`),
``service.CometService.publish`` the backend's publish (:func:`observe_backend_publish`),
``service.unavailable`` a backend failure (:func:`count_backend_error`), the web layer and
the server each refusal (:func:`count_refusal`), the stream a gap (:func:`count_gap`).
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Protocol

#: Upper bounds (seconds) of the fan-out histogram: one wake of a channel's waiters, from
#: a handful (well under a millisecond) to 100,000 (3-4 s measured, see heartbeat.py).
FANOUT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A poll is held from "news at once" (milliseconds) to its timeout (25 s default, 120 s at most).
POLL_HOLD_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: A backend publish: memory in microseconds, Redis on loopback ~0.1-1 ms, SQLite a group commit.
BACKEND_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: The statuses a refusal is counted under; any other 4xx/5xx counts as its class (``4xx``).
REFUSAL_STATUSES = (400, 401, 403, 404, 405, 408, 409, 413, 414, 429, 431, 500, 503)


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum of the values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least it (Prometheus's ``le``)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


FANOUT = Histogram(FANOUT_BUCKETS_S)
POLL_HOLD = Histogram(POLL_HOLD_BUCKETS_S)
BACKEND_PUBLISH = Histogram(BACKEND_BUCKETS_S)
HISTOGRAMS = {"fanout_seconds": FANOUT, "poll_hold_seconds": POLL_HOLD, "backend_publish_seconds": BACKEND_PUBLISH}

#: Refusals by status ("400", ..., or "4xx"/"5xx"): a bounded label set.
REFUSALS: dict[str, int] = {str(status): 0 for status in REFUSAL_STATUSES}
#: Plain counters: gaps reported (``recovered: false``), backend failures.
COUNTS: dict[str, int] = {"gaps": 0, "backend_errors": 0}


class _PollOutcome(Protocol):
    recovered: bool


def observe_fanout(seconds: float) -> None:
    """One wake of a channel's waiters took ``seconds`` (every woken reply sent, or yielded)."""
    FANOUT.observe(seconds)


def observe_poll(seconds: float, result: _PollOutcome) -> None:
    """A long-poll was held ``seconds``; a reply with ``recovered: false`` is a gap."""
    POLL_HOLD.observe(seconds)
    if not result.recovered:
        COUNTS["gaps"] += 1


def observe_backend_publish(seconds: float) -> None:
    """The backend took ``seconds`` to store (and acknowledge) one event."""
    BACKEND_PUBLISH.observe(seconds)


def count_backend_error() -> None:
    """The backend failed an operation (the request got 503)."""
    COUNTS["backend_errors"] += 1


def count_gap() -> None:
    """A stream told its client that events were lost (``event: gap``)."""
    COUNTS["gaps"] += 1


def count_refusal(status: int) -> None:
    """A request was refused with ``status`` (4xx or 5xx)."""
    key = str(status)
    if key not in REFUSALS:
        key = f"{status // 100}xx"  # keeps the label set bounded whatever a route returns
    REFUSALS[key] = REFUSALS.get(key, 0) + 1

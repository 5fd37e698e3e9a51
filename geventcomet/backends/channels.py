"""The in-memory channel table shared by the memory and SQLite backends.

Each channel keeps its last seq and a bounded history. The table is ordered by each
channel's last publish, so housekeeping finds the channels whose whole backlog aged
out by looking at the old end only, never by scanning every channel.

Ids are never reused within an epoch (see :mod:`geventcomet.backends`): dropping a
channel raises ``dropped`` (D) to its last seq; a channel created afterwards starts
at D + 2, and an absent channel reads as ``last = D + 1``.

The encoded bytes of all kept events stay within ``max_backlog_bytes``: past it, a
publish trims the oldest events of the least recently published channels (the old
end of the table) until the backlog fits. The event just published is never trimmed,
so the budget is passed by at most that one event. A client behind on a trimmed
channel reads ``first`` beyond its position and is told ``recovered: false``. A channel
emptied this way moves to the new end (its ``touched`` set to now, keeping the table
ordered for :meth:`ChannelTable.idle`), so the next trim never walks over it again.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import Callable, Iterator, NamedTuple

from .. import protocol
from ..config import Config
from ..errors import ChannelLimitReached
from . import ChannelRead, Page, absent_last, fill_page

#: At most this many idle channels are dropped by one housekeeping call, so one call
#: never holds the gevent loop long; the rest go on the next call.
DROP_BATCH = 20_000


class Stored(NamedTuple):
    """One kept event."""

    seq: int
    at: float  # publish time on the backend's clock, for the age limit
    encoded: bytes


class Channel:
    """A channel's last seq, its bounded history (oldest first) and when it was last published to."""

    __slots__ = ("last_seq", "history", "touched")

    def __init__(self, last_seq: int = 0, touched: float = 0.0) -> None:
        self.last_seq = last_seq
        self.history: deque[Stored] = deque()
        self.touched = touched


class ChannelTable:
    """Channels by name, least recently published first, with D and the backlog's size."""

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._channels: OrderedDict[str, Channel] = OrderedDict()
        #: D: the highest last seq of any channel dropped in this epoch.
        self.dropped = 0
        self.backlog_events = 0
        self.backlog_bytes = 0

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, name: str) -> bool:
        return name in self._channels

    def names(self) -> Iterator[str]:
        return iter(self._channels)

    def last_seq(self, name: str) -> int:
        """The channel's last seq; an absent channel's is D + 1 (0 while D is 0)."""
        state = self._channels.get(name)
        return state.last_seq if state is not None else absent_last(self.dropped)

    def check_room(self, name: str, creating: int = 0) -> None:
        """Raise :class:`ChannelLimitReached` if creating ``name`` (after ``creating`` other new
        channels) would pass ``max_channels_total``."""
        limit = self._config.max_channels_total
        if name not in self._channels and len(self._channels) + creating >= limit:
            raise ChannelLimitReached(
                f"too many channels: this server holds at most {limit} (--max-channels-total); "
                "idle channels are dropped once their backlog ages out, retry later")

    def store(self, name: str, seq: int, at: float, encoded: bytes) -> dict[str, int]:
        """Append an event (its seq follows the channel's last) and trim the history.

        Returns the channels trimmed to fit ``max_backlog_bytes``, each with the highest
        seq it lost (usually none), so a durable backend can delete them too."""
        channels = self._channels
        state = channels.get(name)
        if state is None:
            state = channels[name] = Channel()
        else:
            channels.move_to_end(name)
        state.last_seq, state.touched = seq, at
        state.history.append(Stored(seq, at, encoded))
        self.backlog_events += 1
        self.backlog_bytes += len(encoded)
        self._trim(state, at)
        return self.fit_budget(at, keep=name) if self.backlog_bytes > self._config.max_backlog_bytes else {}

    def load(self, name: str, last_seq: int, history: list[Stored]) -> None:
        """Add a channel read back from disk; call in order of last publish, oldest first."""
        state = self._channels[name] = Channel(last_seq, history[-1].at if history else 0.0)
        for stored in history[-self._config.backlog:]:
            state.history.append(stored)
            self.backlog_events += 1
            self.backlog_bytes += len(stored.encoded)

    def read(self, name: str, since: int | None, epoch: str, same_epoch: bool, page: Page) -> ChannelRead:
        """What a client at ``since`` gets (see :func:`protocol.plan_read`), at most ``page``;
        ``epoch`` is the current one, ``same_epoch`` whether the cursor's matches it."""
        state = self._channels.get(name)
        if state is None:
            last = absent_last(self.dropped)
            return ChannelRead([], last, protocol.plan_read(since, last + 1, last, same_epoch).recovered, epoch)
        last = state.last_seq
        if since == last and same_epoch:  # the common caught-up case
            return ChannelRead([], last, True, epoch)
        history = state.history
        self._trim(state, self._clock())
        first = history[0].seq if history else last + 1
        plan = protocol.plan_read(since, first, last, same_epoch)
        if plan.after >= last:
            return ChannelRead([], last, plan.recovered, epoch)
        events = fill_page((h.encoded for h in islice(history, plan.after - first + 1, None)), page)
        return ChannelRead(events, plan.after + len(events), plan.recovered, epoch)

    def fit_budget(self, now: float, keep: str | None = None) -> dict[str, int]:
        """Trim the oldest events of the least recently published channels until the backlog
        fits ``max_backlog_bytes``; ``keep``'s last event (the one just published) stays.
        Returns ``{channel: highest seq trimmed}``."""
        budget, channels = self._config.max_backlog_bytes, self._channels
        trimmed: dict[str, int] = {}
        # Each round trims a channel or moves an empty one behind ``keep``: at most one
        # round per channel, and the events trimmed were each stored once.
        for _ in range(len(channels)):
            if self.backlog_bytes <= budget:
                break
            name, state = next(iter(channels.items()))
            history = state.history
            floor = 1 if name == keep else 0
            while len(history) > floor and self.backlog_bytes > budget:
                stored = history.popleft()
                self.backlog_bytes -= len(stored.encoded)
                self.backlog_events -= 1
                trimmed[name] = stored.seq
            if name == keep:  # everything before it is empty: nothing more may go
                break
            if not history:
                state.touched = max(state.touched, now)
                channels.move_to_end(name)
        return trimmed

    def _trim(self, state: Channel, now: float) -> None:
        history, cutoff, backlog = state.history, now - self._config.backlog_age_s, self._config.backlog
        while len(history) > backlog or (history and history[0].at < cutoff):
            self.backlog_bytes -= len(history.popleft().encoded)
            self.backlog_events -= 1

    def idle(self, now: float, waiter_count: Callable[[str], int]) -> list[tuple[str, int]]:
        """Channels whose whole backlog aged out and that nobody waits on, with their last seqs.

        Only the old end of the table is looked at. A channel somebody waits on counts as
        touched now, so it moves out of the way and is looked at again an age later.
        """
        cutoff, channels = now - self._config.backlog_age_s, self._channels
        old: list[tuple[str, Channel]] = []
        for name, state in channels.items():
            if state.touched >= cutoff or len(old) >= DROP_BATCH:
                break
            old.append((name, state))
        idle = []
        for name, state in old:
            if waiter_count(name):
                state.touched = now
                channels.move_to_end(name)
            else:
                idle.append((name, state.last_seq))
        return idle

    def drop(self, name: str, last_seq: int | None = None) -> None:
        """Forget a channel (only if its last seq is still ``last_seq``, when given); D covers it."""
        state = self._channels.get(name)
        if state is None or (last_seq is not None and state.last_seq != last_seq):
            return
        del self._channels[name]
        self.dropped = max(self.dropped, state.last_seq)
        self.backlog_events -= len(state.history)
        self.backlog_bytes -= sum(len(h.encoded) for h in state.history)

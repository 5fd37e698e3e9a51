"""Bayeux sessions: where a client's subscriptions and its position in each feed live.

A session lives where the backend lives, so that any process that serves the backend
serves the session: a dict for ``memory``; a table in its own SQLite file beside the
backend's for ``sqlite`` (survives a restart: :mod:`.sessions_sqlite`); a hash under
``gc:bx:s:<clientId>`` for ``redis`` (every worker and node shares it, no sticky
sessions: :mod:`.sessions_redis`). `stores.open_sessions` picks one from ``config.backend``.

A session is idle when no request of it arrived for ``config.bayeux_session_ttl_s``;
then it is gone (an unknown client to Bayeux: 402, and the client handshakes again).
Memory and SQLite compare :attr:`SessionStore.clock` (a test may drive it); Redis lets
the key's own ``EXPIRE`` free it. A held ``/meta/connect`` refreshes its session when
it starts and when it ends, and the hold is at most half the TTL.

Writes merge: a ``/meta/connect`` saves only the positions of the feeds it read, so a
subscribe that lands meanwhile (perhaps on another worker) is not undone.

Which wildcard feeds are written (:meth:`SessionStore.wildcard_feeds`): a publish appends to a
wildcard feed only while some session subscribes to its pattern, so a server whose
clients use no wildcards writes each event once, not ``2 + depth`` times. Only the
memory store knows every reader (its sessions are all in this process, and the memory
backend, the only one that picks it, takes every publish here): it counts the sessions
per feed. It can say no safely because nothing yields between a subscribe's reads of
its feeds' positions and its :meth:`~SessionStore.subscribe` (the memory backend does
no I/O), so no publish falls between a position and the count that makes the feed
written. The SQLite and Redis stores answer every feed (a durable or shared count,
kept right across restarts and workers, is not built); their list for a channel never
changes, so a publish writes it as one batch (one Redis script call, one SQLite
transaction), where the memory store's answer may change between a notify and its retry.
"""
from __future__ import annotations

import abc
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .channels import feed_of, feeds_of_publish, is_wildcard_feed


@dataclass(slots=True)
class Session:
    """One Bayeux client: its subscriptions (sorted), a position per feed, the epoch of those."""

    client_id: str
    subscriptions: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    epoch: str | None = None
    token: str | None = None  # the handshake's ext.token: re-checked on every subscribe and publish
    connected: bool = False  # a first /meta/connect was answered
    seen: float = 0.0


class SessionStore(abc.ABC):
    """The operations every store offers; each returns False when the session is gone."""

    #: True when :meth:`expire` must be called now and then (False: keys expire by themselves).
    sweeps = True
    #: True when :meth:`wildcard_feeds` answers only the feeds read now (then the answer for a
    #: channel may change between a notify and its retry); False: every feed that matches.
    knows_all_readers = False

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        #: Seconds since the epoch; tests replace it with a clock they move.
        self.clock = clock

    @abc.abstractmethod
    def create(self, session: Session) -> None:
        """Store a new session (its idle clock starts now)."""

    @abc.abstractmethod
    def load(self, client_id: str) -> Session | None:
        """The session, its idle clock restarted; None if unknown or expired."""

    @abc.abstractmethod
    def subscribe(self, client_id: str, positions: dict[str, int], epoch: str | None,
                  names: list[str]) -> bool:
        """Add ``names`` with their feeds' starting ``positions``."""

    @abc.abstractmethod
    def unsubscribe(self, client_id: str, names: list[str], feeds: list[str]) -> bool:
        """Drop ``names`` and the positions of ``feeds`` no remaining name reads."""

    @abc.abstractmethod
    def save(self, client_id: str, positions: dict[str, int], epoch: str) -> bool:
        """Merge the positions a connect reached (and mark it connected)."""

    @abc.abstractmethod
    def delete(self, client_id: str) -> None:
        """Forget a session (``/meta/disconnect``)."""

    def expire(self) -> int:
        """Drop idle sessions; how many went (stores whose keys expire by themselves: 0)."""
        return 0

    def wildcard_feeds(self, channel: str) -> tuple[str, ...]:
        """The wildcard feeds a publish to ``channel`` must be appended to: those some
        session may read; a store that cannot know answers every one that matches."""
        return feeds_of_publish(channel)

    def count(self) -> int | None:
        """Sessions held now, when the store can say cheaply."""
        return None

    def close(self) -> None:
        """Release connections."""

    def expired(self, seen: float) -> bool:
        return seen + self.ttl_s <= self.clock()


class MemorySessions(SessionStore):
    """Sessions in this process (the memory backend's, gone with it). Least recently
    seen first, so expiring is a walk from the front that stops at the first live one."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time, knows_all_readers: bool = False) -> None:
        super().__init__(ttl_s, clock)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        #: True when this process takes every publish (the memory backend): see the module docstring.
        self.knows_all_readers = knows_all_readers
        self._readers: dict[str, int] = {}  # wildcard feed -> sessions subscribed to its pattern

    def create(self, session: Session) -> None:
        session.seen = self.clock()
        self._sessions[session.client_id] = session

    def load(self, client_id: str) -> Session | None:
        """The stored session itself (no copy: a connect's cost); callers only read it, and
        every change here replaces ``subscriptions`` rather than mutating the list."""
        return self._live(client_id)

    def subscribe(self, client_id: str, positions: dict[str, int], epoch: str | None,
                  names: list[str]) -> bool:
        session = self._live(client_id)
        if session is None:
            return False
        self._count(set(names).difference(session.subscriptions), 1)
        session.subscriptions = sorted({*session.subscriptions, *names})
        session.positions.update(positions)
        session.epoch = session.epoch or epoch
        return True

    def unsubscribe(self, client_id: str, names: list[str], feeds: list[str]) -> bool:
        session = self._live(client_id)
        if session is None:
            return False
        self._count(set(names).intersection(session.subscriptions), -1)
        session.subscriptions = [name for name in session.subscriptions if name not in names]
        for feed in feeds:
            session.positions.pop(feed, None)
        return True

    def save(self, client_id: str, positions: dict[str, int], epoch: str) -> bool:
        session = self._live(client_id)
        if session is None:
            return False
        session.positions.update(positions)
        session.epoch = epoch
        session.connected = True
        return True

    def delete(self, client_id: str) -> None:
        session = self._sessions.pop(client_id, None)
        if session is not None:
            self._count(session.subscriptions, -1)

    def expire(self) -> int:
        gone = 0
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if not self.expired(oldest.seen):
                break
            self.delete(oldest.client_id)
            gone += 1
        return gone

    def count(self) -> int:
        return len(self._sessions)

    def wildcard_feeds(self, channel: str) -> tuple[str, ...]:
        if not self.knows_all_readers:
            return super().wildcard_feeds(channel)
        readers = self._readers
        if not readers:
            return ()  # the common case: no session subscribes to a pattern
        return tuple(feed for feed in feeds_of_publish(channel) if feed in readers)

    def _count(self, names: Iterable[str], step: int) -> None:
        """Count the sessions per wildcard feed, as ``names`` are subscribed (+1) or dropped (-1)."""
        readers = self._readers
        for name in names:
            feed = feed_of(name)
            if is_wildcard_feed(feed):
                left = readers.get(feed, 0) + step
                if left > 0:
                    readers[feed] = left
                else:
                    readers.pop(feed, None)

    def _live(self, client_id: str) -> Session | None:
        session = self._sessions.get(client_id)
        if session is None:
            return None
        now = self.clock()  # once, not also in expired(): this runs twice per connect
        if session.seen + self.ttl_s <= now:
            self.delete(client_id)
            return None
        session.seen = now
        self._sessions.move_to_end(client_id)
        return session


"""The in-process backend: dicts and deques. The default, and the reference implementation.

History dies with the process; a new process gets a new random epoch, so a client
resuming with an old cursor is told ``recovered: false`` instead of being skipped.
Nothing here yields to the gevent loop, so a publish and its wake-up are atomic.

Bounds (each refusal is a :class:`~geventcomet.errors.LimitReached`, answered 503
with a message naming the bound; nothing already stored is touched):

- at most ``max_channels_total`` channels (a publish that would create one more raises
  :class:`~geventcomet.errors.ChannelLimitReached`); a channel whose whole backlog aged
  out and that nobody waits on is dropped by :meth:`MemoryBackend.expire_idle` (ids are
  not reused: see :mod:`geventcomet.backends`);
- at most ``max_clients_total`` registrations: registering a new client beyond it raises
  :class:`~geventcomet.errors.ClientLimitReached`, a refresh always works; expired
  registrations count until housekeeping removes them (every ``client_ttl_s / 4``);
- at most ``max_idempotency_keys`` remembered (channel, key) pairs: a notify with a new
  key beyond it raises :class:`~geventcomet.errors.IdempotencyKeyLimitReached` (a key
  is never forgotten before ``idempotency_ttl_s``: that would silently store a retry
  twice); a retry of a remembered key still answers its seq;
- a channel's backlog is bounded by count and age, and all of them together by
  ``max_backlog_bytes`` (see :mod:`.channels`: the oldest events of the least recently
  published channels go first, and their readers are told ``recovered: false``).

Measured (CPython 3.11, tracemalloc, 100,000 of each, strings included): a registration
with the app's 16-character id holds about 180 bytes, an Idempotency-Key of 32
characters about 360 bytes; so the defaults (500,000 each) allow about 90 MB and 180 MB.
"""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Callable, cast

from .. import protocol
from ..config import Config
from ..errors import BackendError, ClientLimitReached, IdempotencyKeyLimitReached
from . import Backend, ChannelRead, Page, batch_key
from .channels import ChannelTable


def encode_event(channel: str, seq: int, data_json: str) -> bytes:
    """The stored form of an event; data that cannot be UTF-8 (a lone surrogate) is refused."""
    try:
        return protocol.encode_event(channel, seq, data_json)
    except UnicodeEncodeError:
        raise BackendError("the event's data cannot be encoded as UTF-8 (a lone surrogate?)") from None


class MemoryBackend(Backend):
    """Everything in this process's memory; registrations and history end with it."""

    shared = False  # each process would keep its own events, and wake only its own waiters

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.epoch = secrets.token_hex(4)
        self._channels = ChannelTable(config, clock)
        self._clients: OrderedDict[str, float] = OrderedDict()  # id -> last seen, oldest first
        #: (channel, key) -> (when, seq), oldest first: a key is scoped to its channel.
        self._idempotent: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._waiter_count: Callable[[str], int] = lambda channel: 0

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        now = self._clock()
        seen = self._already_published(idempotency_key, channel, now)
        if seen is not None:
            return seen
        self._channels.check_room(channel)
        self._check_key_room(idempotency_key)
        seq = self._channels.last_seq(channel) + 1
        self._store(channel, seq, now, encode_event(channel, seq, data_json), idempotency_key)
        self._wake(channel)
        return seq

    def publish_many(self, events: list[tuple[str, str]], idempotency_key: str | None = None) -> list[int]:
        """All or nothing: every bound and every encoding is checked before anything is stored,
        and nothing here yields, so no reader sees part of the batch."""
        now = self._clock()
        keys = [batch_key(idempotency_key, index) for index in range(len(events))]
        seen = self._batch_seen(events, keys, now)
        if seen is not None:
            return seen
        planned = self.plan_batch(events, keys)
        for (channel, _), key, (seq, encoded) in zip(events, keys, planned):
            self._store(channel, seq, now, encoded, key)
        for channel in dict.fromkeys(channel for channel, _ in events):
            self._wake(channel)
        return [seq for seq, _ in planned]

    def _batch_seen(self, events: list[tuple[str, str]], keys: list[str | None], now: float) -> list[int] | None:
        """The seqs of an earlier publish of this batch (same key), if all are remembered."""
        if not keys or keys[0] is None:
            return None
        seen = [self._already_published(key, channel, now) for (channel, _), key in zip(events, keys)]
        return None if None in seen else cast("list[int]", seen)

    def plan_batch(self, events: list[tuple[str, str]], keys: list[str | None],
                   pending_keys: int = 0) -> list[tuple[int, bytes]]:
        """Each event's seq and stored bytes, checking every bound first (raises, storing nothing)."""
        last: dict[str, int] = {}
        created = 0
        for channel, _ in events:
            if channel not in last:
                self._channels.check_room(channel, created)
                created += channel not in self._channels
                last[channel] = self._channels.last_seq(channel)
        if keys and keys[0] is not None:
            self._check_key_room(keys[0], pending_keys + len(keys) - 1)
        planned = []
        for channel, data_json in events:
            seq = last[channel] = last[channel] + 1
            planned.append((seq, encode_event(channel, seq, data_json)))
        return planned

    def _already_published(self, key: str | None, channel: str, now: float) -> int | None:
        """The seq an earlier publish to this channel with this key got, if it is remembered."""
        if key is None:
            return None
        self._forget_old_keys(now)
        seen = self._idempotent.get((channel, key))
        return seen[1] if seen is not None else None

    def _check_key_room(self, key: str | None, pending: int = 0) -> None:
        """Raise :class:`IdempotencyKeyLimitReached` if remembering one more key (after
        ``pending`` not yet stored) would pass ``max_idempotency_keys``."""
        limit = self._config.max_idempotency_keys
        if key is not None and len(self._idempotent) + pending >= limit:
            raise IdempotencyKeyLimitReached(limit, self._config.idempotency_ttl_s)

    def _store(self, channel: str, seq: int, at: float, encoded: bytes, key: str | None) -> dict[str, int]:
        """Keep the event (and its key); returns what the backlog budget trimmed (see
        :meth:`ChannelTable.store`)."""
        trimmed = self._channels.store(channel, seq, at, encoded)
        if key is not None:
            self._idempotent[(channel, key)] = (at, seq)
            self._idempotent.move_to_end((channel, key))
        return trimmed

    def read(self, channel: str, since: int | None, epoch: str | None, page: Page | None = None) -> ChannelRead:
        return self._channels.read(channel, since, self.epoch, epoch is None or epoch == self.epoch,
                                   page or self.full_page())

    def _forget_old_keys(self, now: float) -> None:
        keys, cutoff = self._idempotent, now - self._config.idempotency_ttl_s
        while keys and next(iter(keys.values()))[0] < cutoff:
            keys.popitem(last=False)

    def register(self, client: str) -> None:
        self._check_client_room(client)
        self._clients[client] = self._clock()
        self._clients.move_to_end(client)

    def _check_client_room(self, client: str) -> None:
        """Raise :class:`ClientLimitReached` if ``client`` is new and ``max_clients_total``
        registrations are held (expired ones count until housekeeping removes them)."""
        limit = self._config.max_clients_total
        if len(self._clients) >= limit and client not in self._clients:
            raise ClientLimitReached(limit, self._config.client_ttl_s)

    def is_registered(self, client: str) -> bool:
        seen = self._clients.get(client)
        return seen is not None and seen >= self._clock() - self._config.client_ttl_s

    def _idle_clients(self, now: float) -> list[str]:
        """Clients idle longer than the TTL, oldest first: touches only those (plus one), never a scan."""
        cutoff, gone = now - self._config.client_ttl_s, []
        for client, seen in self._clients.items():
            if seen >= cutoff:
                break
            gone.append(client)
        return gone

    def expire_idle(self) -> list[str]:
        now = self._clock()
        gone = self._idle_clients(now)
        for client in gone:
            del self._clients[client]
            self._channels.drop(protocol.private_channel(client))
        for name, _ in self._channels.idle(now, self._waiter_count):
            self._channels.drop(name)
        self._forget_old_keys(now)
        return gone

    def counts(self) -> dict[str, int]:
        channels = self._channels
        return {"clients": len(self._clients), "channels": len(channels),
                "idempotency_keys": len(self._idempotent), "backlog_events": channels.backlog_events,
                "backlog_bytes": channels.backlog_bytes}

    def channel_names(self, limit: int) -> list[str]:
        names = (c for c in self._channels.names() if not c.startswith(protocol.PRIVATE_PREFIX))
        return [name for _, name in zip(range(limit), names)]

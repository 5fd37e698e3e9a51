"""The Redis backend: shared history, ids and registrations for many processes and machines.

How this works
--------------
Redis holds the truth; pub/sub is only a hint: Redis delivers a message only to the
subscribers connected when it is published, so one sent while a listener reconnects
is lost for good (and redis-py reconnects and resubscribes without telling).

- **Publish** is one Lua script: create the epoch if Redis has none, dedupe by
  idempotency key, ``HINCRBY`` the channel's seq, ``XADD`` the encoded event to
  the channel's stream (bounded by count, aged out by time), and ``PUBLISH`` a
  wake-up carrying the event. All of it or none of it; a batch is one call of
  PUBLISH_MANY (:mod:`.redis_publish_many`). redis-py's automatic retries are off
  for publish, so a command cut off by a dropped connection is never silently sent
  twice: it raises :class:`~geventcomet.errors.BackendError` (503) and the caller
  retries, with an ``Idempotency-Key`` to store the event once.
- **Epoch.** One key, ``gc:epoch``, created when missing by any script: after Redis lost
  its data, a new one, so every cursor from before gets ``recovered: false``, not a skip.
- **Wake-ups.** ONE pub/sub connection and listener greenlet per process
  (:mod:`.redis_listener`). Each message carries the channel, seq, epoch and encoded
  event to the channel's in-process tail (:mod:`.redis_tails`), which wakes local
  waiters, who mostly read that tail instead of Redis.
- **No silent loss.** A tail is used only while contiguous and younger than the age limit,
  else the stream is read. A publish retried with its key drops the channel's tail: the first
  try may have failed before its event reached the tail (no reply, a short WAIT) and its
  wake-up may still be on the way, yet the retry is acknowledged, so it must read at once.
  A listener that lost its connection drops every tail and, once
  resubscribed, wakes every local channel: its waiters re-read Redis (cursor and epoch decide).
- **Client-id secret** (no ``--client-secret``): one key, set once (``SET NX``), read at start;
  lost with Redis's data: later processes agree on a new one (restart, or configure it).
- **Registrations** (:mod:`.redis_registrations`): one sorted set scored by expiry time.
- **Bounds.** A new client past ``max_clients_total``, a new Idempotency-Key while
  ``max_idempotency_keys`` are remembered: :class:`~geventcomet.errors.LimitReached` (503).
  Streams are bounded by count and age, and Redis by its ``maxmemory``.
- **Polls never queue for a pooled connection of their own**: their Redis calls go
  through :class:`~.redis_batch.Batcher`, a few pipelines for many polls; each read is
  a page at most (``XRANGE ... COUNT`` and a byte budget).
- **Dropped channels**: a private one with its expired registration, a public one whose
  backlog aged out with housekeeping (:mod:`.redis_sweep`); ids are never reused.
- **Time.** Streams' ages and idempotency keys go by Redis's ``TIME``, one clock for
  every node. A test may pass ``clock=``: it drives registrations, tails and scripts.
- **Replicas and Sentinel.** ``redis+sentinel://`` follows Sentinel's master
  (:mod:`.redis_sentinel`: a new master that lacks events this process heard of gets a new
  epoch). ``--redis-min-replicas N`` acknowledges a publish only once N replicas have it
  (``WAIT``, :class:`~.redis_batch.PublishBatcher`), else 503.

Keys: see :mod:`.redis_scripts`. A single Redis (or a primary); not Redis Cluster.
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

import redis

from .. import protocol
from ..config import Config
from ..errors import BackendError, IdempotencyKeyLimitReached
from ..security import mask_credentials
from . import Backend, ChannelRead, Page, redis_counts
from . import redis_scripts as scripts
from .redis_batch import PUBLISH_OP, READ_OP, Batcher, PublishBatcher
from .redis_listener import WakeListener
from .redis_pools import POOL_CONNECTIONS, open_pools
from .redis_publish_many import PUBLISH_MANY, Encoded, event_suffix, parse_reply, publish_many_args
from .redis_registrations import Registrations
from .redis_sweep import IdleChannelSweep
from .redis_tails import Tails

log = logging.getLogger(__name__)

#: Events of a channel kept in each process for readers woken by a publish.
TAIL_EVENTS = 64
#: Calls queued by polls are sent by at most this many greenlets at once (fewer than
#: the read pool's connections, so they never wait for one).
MAX_FLUSHERS = 4


class RedisUnavailable(BackendError):
    """Redis did not answer a read: the poll gets 503 + Retry-After, like a refused notify."""


def _script_time(clock: Callable[[], float] | None) -> Callable[[], str]:
    """The time the scripts are given: "" (they read Redis's TIME), or the clock's ms."""
    if clock is None:
        return lambda: ""
    return lambda: str(int(clock() * 1000))


class RedisBackend(Backend):
    """Shared backend over one Redis; see the module docstring.

    ``clock`` is for tests only: without one (production), registrations are scored by
    ``time.time()``, this process's own ages by ``time.monotonic()``, and streams and
    idempotency keys by Redis's ``TIME``, the clock every node shares, so nodes never
    disagree on an event's age. With one, all of them read that clock (seconds), the
    scripts being given its milliseconds in place of ``TIME``; Redis's own key expiry
    (a stream's ``PEXPIRE``, an idempotency key's ``PX``) still runs on Redis's clock.
    """

    shared = True

    def __init__(self, config: Config, *, clock: Callable[[], float] | None = None) -> None:
        self._config = config
        self._wall = time.time if clock is None else clock
        self._steady = time.monotonic if clock is None else clock
        self._script_now = _script_time(clock)
        self._url = mask_credentials(config.backend)
        try:
            self._pools = open_pools(config.backend)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self._url!r}: {exc}") from None
        self._writer, self._reader, self._subscriber = self._pools
        self._settings = scripts.StreamSettings.of(config, secrets.token_hex(4))
        self._sweep = IdleChannelSweep(self._reader)
        self._problem: str | None = None  # the last Redis failure, until a call succeeds
        flushers = max(1, min(MAX_FLUSHERS, POOL_CONNECTIONS - 1))
        read, register = (self._reader.register_script(text) for text in (scripts.READ, scripts.REGISTER))
        self._batcher = Batcher(self._reader, (read, register), flushers, config.max_clients_total,
                                self._settings.age_ms, self._script_now)
        self._publisher = PublishBatcher(self._writer, (self._writer.register_script(scripts.PUBLISH),), flushers,
                                         config.redis_min_replicas, config.redis_replica_timeout_s, single_events=True)
        self._batch_publisher = PublishBatcher(self._writer, (self._writer.register_script(PUBLISH_MANY),), flushers,
                                               config.redis_min_replicas, config.redis_replica_timeout_s)
        self._registrations = Registrations(config, self._batcher, self._reader.register_script(scripts.EXPIRE),
                                            self._wall, self._steady)
        self._tails = Tails(min(TAIL_EVENTS, config.backlog), config.backlog_age_s, self._steady)
        self._wake_all: Callable[[], int] = lambda: 0
        self._closing = False
        self._listener = WakeListener(self._subscriber, scripts.WAKE_CHANNEL, self._on_message, self._resync,
                                      self._tails.drop_all)
        self.epoch = self._initial_epoch()

    def _initial_epoch(self) -> str:
        try:
            self._kept_client_secret = self._set_once(scripts.CLIENT_SECRET_KEY, secrets.token_urlsafe(32))
            return self._set_once(scripts.EPOCH_KEY, secrets.token_hex(4)).decode()
        except redis.RedisError as exc:
            self._pools.disconnect()
            raise BackendError(f"cannot reach Redis at {self._url}: {exc}") from None

    def _set_once(self, key: str, fresh: str) -> bytes:
        """``key``'s value, set to ``fresh`` first unless a process set it already."""
        self._writer.set(key, fresh, nx=True)
        value = self._writer.get(key)  # bytes: decode_responses is off
        if not isinstance(value, bytes):
            raise redis.RedisError(f"the key {key} vanished while the backend started")
        return value

    def start(self, wake, wake_all, waiter_count=lambda channel: 0) -> None:
        self._tails.wake, self._wake_all, self._sweep.waiter_count = wake, wake_all, waiter_count
        if not self._listener.start(5.0):
            log.warning("Redis wake-up listener not subscribed after 5 s; it keeps trying")

    # -- publish and read --------------------------------------------------

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        prefix, suffix = protocol.event_prefix(channel), event_suffix(data_json)
        call = scripts.publish_args(self._settings, channel, prefix, suffix, idempotency_key, self._script_now())
        epoch, seq, duplicate = self._acknowledged(self._publisher, call)
        if self._stored(epoch.decode(), duplicate):
            self._tails.apply(channel, seq, prefix + str(seq).encode() + suffix, own=True)
        else:  # a retry: see _stored
            self._tails.discard(channel)
        return seq

    def publish_many(self, events: list[tuple[str, str]], idempotency_key: str | None = None) -> list[int]:
        """One script call for the whole batch (:mod:`.redis_publish_many`): all or nothing."""
        encoded = [Encoded(name, protocol.event_prefix(name), event_suffix(data)) for name, data in events]
        call = publish_many_args(self._settings, encoded, idempotency_key, self._script_now())
        reply = parse_reply(self._acknowledged(self._batch_publisher, call))
        if self._stored(reply.epoch, reply.outcome):
            for event, seq in zip(encoded, reply.seqs):
                self._tails.apply(event.channel, seq, event.prefix + str(seq).encode() + event.suffix, own=True)
        else:  # a retry: see _stored
            for event in encoded:
                self._tails.discard(event.channel)
        return reply.seqs

    def _stored(self, epoch: str, outcome: int) -> bool:
        """After a publish script: follow a new epoch, raise for a refused key; True if it stored
        (False: a retry, whose tail the caller drops: see the module docstring)."""
        if epoch != self.epoch:
            self._new_epoch(epoch)
        if outcome == 2:
            raise IdempotencyKeyLimitReached(self._config.max_idempotency_keys, self._config.idempotency_ttl_s)
        return outcome == 0

    def _acknowledged(self, publisher: PublishBatcher, call: scripts.Args) -> list:
        """The publish script's reply; BackendError (503: retry) if Redis did not answer."""
        try:
            reply = publisher.call(PUBLISH_OP, call)
        except redis.RedisError as exc:
            self._problem = f"Redis did not acknowledge a publish: {exc}"
            raise BackendError(f"Redis did not acknowledge the publish: {exc}") from None
        self._problem = None
        return reply

    def read(self, channel: str, since: int | None, epoch: str | None, page: Page | None = None) -> ChannelRead:
        page = page or self.full_page()
        if epoch is None or epoch == self.epoch:
            known = self._tails.read(channel, since, page, self.epoch)
            if known is not None:
                return known
        return self._read_redis(channel, since, epoch, page)

    def _read_redis(self, channel: str, since: int | None, epoch: str | None, page: Page) -> ChannelRead:
        tails = self._tails
        generation, started = tails.generation, self._steady()
        try:
            reply = self._batcher.call(READ_OP, (channel, since, epoch, page))
        except redis.RedisError as exc:
            self._problem = f"Redis did not answer a read: {exc}"
            raise RedisUnavailable(f"Redis did not answer a read: {exc}") from None
        self._problem = None
        current, last, first, encoded = reply[0].decode(), int(reply[1]), int(reply[2]), reply[3:]
        if current != self.epoch:
            self._new_epoch(current)
        elif generation == tails.generation and not tails.begin(channel, last) and since is None:
            # A new subscriber starts "now", and its request was parked before this round
            # trip: events that reached this process during it are news to it, as they
            # would be with the memory backend. (A channel's first read starts its tail.)
            tail_last, fresh = tails.arrived_since(channel, started)
            if fresh:
                return self.read(channel, tail_last - fresh, current, page)
        plan = protocol.plan_read(since, first, last, epoch in (None, current))
        if plan.after >= last:
            return ChannelRead([], last, plan.recovered, current)
        # The script sent the page from seq plan.after + 1 on (contiguous seqs).
        return ChannelRead(list(encoded), plan.after + len(encoded), plan.recovered, current)

    # -- wake-ups from other processes --------------------------------------

    def _on_message(self, data: bytes) -> None:
        channel, seq, epoch, origin, encoded = data.split(b"\n", 4)
        epoch_text = epoch.decode()
        if epoch_text != self.epoch:
            self._new_epoch(epoch_text)
        self._tails.apply(channel.decode(), int(seq), encoded, own=origin.decode() == self._settings.origin)

    def _new_epoch(self, epoch: str) -> None:
        log.warning("Redis epoch changed %s -> %s: history was lost; clients resuming get recovered=false",
                    self.epoch, epoch)
        self.epoch = epoch
        self._tails.drop_all()
        self._wake_all()

    def _resync(self) -> None:
        log.info("Redis wake-up listener resubscribed: waking every local channel to re-read")
        self._problem = None  # Redis answers again: a failure seen before is no reason to stay unready
        self._tails.drop_all()
        self._wake_all()

    # -- registrations and housekeeping --------------------------------------

    def register(self, client: str) -> None:
        self._registrations.register(client)

    def is_registered(self, client: str) -> bool:
        return self._registrations.is_registered(client)

    def expire_idle(self) -> list[str]:
        try:
            gone = self._registrations.expire()
            swept = self._sweep.sweep()
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not expire registrations: {exc}") from None
        for channel in [protocol.private_channel(client) for client in gone] + swept:
            self._tails.discard(channel)
        return gone

    def health(self) -> str | None:
        if self._closing:
            return "the backend is closed"
        if not self._listener.listening:
            return "the Redis wake-up listener is not subscribed (Redis unreachable?); it keeps retrying"
        return self._problem

    def counts(self) -> dict[str, int]:
        return redis_counts.counts(self._reader, self._wall())

    def channel_names(self, limit: int) -> list[str]:
        return redis_counts.channel_names(self._reader, limit)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self._pools.disconnect()

"""The Redis backend: shared history, ids and registrations for many processes and machines.

How this works
--------------
Redis holds the truth; pub/sub is only a hint (PITFALLS §2.6).

- **Publish** is one Lua script: create the epoch if Redis has none, dedupe by
  idempotency key, ``HINCRBY`` the channel's seq, ``XADD`` the encoded event to
  the channel's stream (bounded by count, aged out by time), and ``PUBLISH`` a
  wake-up carrying the event. All of it or none of it. redis-py's automatic
  retries are off for publish, so a command cut off by a dropped connection is
  never silently sent twice: it raises :class:`~geventcomet.errors.BackendError`
  (the app answers 503) and the caller retries, with an ``Idempotency-Key`` to
  store the event once.
- **Epoch.** One key, ``gc:epoch``, created when missing by any script. If Redis
  loses its data, the next script creates a new epoch, so every cursor from before
  gets ``recovered: false`` instead of a silent skip.
- **Wake-ups.** ONE pub/sub connection and listener greenlet per process, whatever
  the number of waiting clients. Each message carries the channel, seq, epoch and
  encoded event; the listener appends it to a short in-process tail of the channel
  and wakes local waiters, who mostly read that tail instead of Redis: a fan-out
  to N waiters costs one Redis message per process, not N reads.
- **No silent loss.** A tail is used only while it is contiguous and younger than
  the age limit; anything else is read from the stream. When the listener loses
  its connection it drops every tail, reconnects with capped backoff, and after
  resubscribing wakes every local channel: wake-ups may have been missed, and the
  waiters re-read Redis, where the cursor and epoch decide.
- **Registrations** live in one sorted set scored by expiry time. A poll refreshes
  its client at most every ``min(client_ttl / 4, 30 s)`` from each process (the
  score covers the gap), and a refresh is queued, not waited for; only a client this
  process has not written within the TTL waits for its write.
- **Bounds.** That write is the REGISTER script (ZCARD, then ZADD only below
  ``max_clients_total`` or for a client already held), batched like every other; a
  refresh is a plain ZADD of a client that is held. A notify with a new
  Idempotency-Key is refused while ``max_idempotency_keys`` keys are remembered (an
  exact count: :mod:`.redis_scripts`). Both raise a
  :class:`~geventcomet.errors.LimitReached` (503). Backlog bytes have no budget of
  their own here: streams are bounded by count and age, and Redis by its ``maxmemory``.
- **Polls never queue for a pooled connection of their own.** Every Redis call made
  on behalf of a poll (a read the tail cannot answer, a registration, a lookup) is
  queued to :class:`~.redis_batch.Batcher`: a few greenlets send whatever is queued as one
  pipeline each (identical reads once, all registrations as one ``ZADD``), so a
  mass re-poll after a fan-out costs a few round trips on a few connections, and
  only a real Redis failure answers 503.

- **Dropped channels.** A private channel goes with its expired registration, and
  housekeeping drops a public channel whose stream expired (its whole backlog aged
  out) unless somebody waits on it in this process (waiters in other processes are
  not known here: such a waiter is told ``recovered: false`` at its next event,
  never skipped). Either raises D in ``gc:dropped`` atomically, so ids are not
  reused (see :mod:`geventcomet.backends`).
- **Paging.** A read takes at most a page (``XRANGE ... COUNT`` and a byte budget in
  the script), so a long backlog is never loaded whole.

Keys: see :mod:`.redis_scripts`. A single Redis (or a primary); not Redis Cluster.
"""
from __future__ import annotations

import logging
import secrets
import time
from itertools import islice
from typing import Callable

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .. import protocol
from ..config import Config
from ..errors import BackendError, ClientLimitReached, IdempotencyKeyLimitReached
from . import Backend, ChannelRead, Page, fill_page
from .redis_batch import PUBLISH_OP, READ_OP, REGISTER_OP, ZADD_OP, ZSCORE_OP, Batcher, PublishBatcher
from .redis_listener import WakeListener
from .redis_scripts import EXPIRE, PREFIX, PUBLISH, READ, REGISTER, SWEEP, epoch_candidate, idempotency_redis_key

log = logging.getLogger(__name__)

#: Events of a channel kept in each process for readers woken by a publish.
TAIL_EVENTS = 64
#: Channels with a tail in one process; beyond this, the oldest tenth is dropped.
MAX_TAILS = 200_000
#: Connections per pool (one pool for publishes, one for reads) in each process.
POOL_CONNECTIONS = 16
#: How long a caller waits for a pooled connection before the call fails (then 503).
POOL_TIMEOUT_S = 5.0
#: Calls queued by polls are sent by at most this many greenlets at once (fewer than
#: the read pool's connections, so they never wait for one).
MAX_FLUSHERS = 4
#: How many registrations one EXPIRE script call deletes, and at most how many calls one
#: ``expire_idle`` makes: registrations count toward ``max_clients_total`` until deleted.
EXPIRE_BATCH, EXPIRE_ROUNDS = 1000, 20
#: Channel names one ``expire_idle`` looks at for an expired stream (HSCAN rounds of
#: SWEEP_BATCH), so a sweep of the whole hash is spread over several calls.
SWEEP_BATCH, SWEEP_ROUNDS = 1000, 20


class RedisUnavailable(BackendError):
    """Redis did not answer a read: the poll gets 503 + Retry-After, like a refused notify."""


class _Tail:
    """The last few events of a channel as seen by this process: seqs ``first..last``, contiguous."""

    __slots__ = ("first", "last", "events")

    def __init__(self, last: int) -> None:
        self.first = last + 1
        self.last = last
        # (monotonic arrival, encoded); a list, not a deque: most tails (private
        # channels) stay empty, and an empty deque costs 600 bytes per client.
        self.events: list[tuple[float, bytes]] = []


def _client(url: str, max_connections: int, **kwargs) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_TIMEOUT_S,
                                                 **kwargs)
    return redis.Redis(connection_pool=pool)


def _redact(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class RedisBackend(Backend):
    """Shared backend over one Redis; see the module docstring."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock  # the wall clock of registrations' expiry scores (tests drive it)
        self._url = _redact(config.backend)
        common = dict(socket_connect_timeout=2.0, socket_keepalive=True)
        try:
            # Bounded pools: a ramp of thousands of polls waits for a connection
            # instead of opening thousands (each costs an fd here and in Redis).
            # Publishes are never retried by redis-py (a retried XADD could store twice).
            self._writer = _client(config.backend, POOL_CONNECTIONS, retry=Retry(NoBackoff(), 0),
                                   socket_timeout=5.0, **common)
            # Reads and registrations are idempotent: retry them briefly across a blip.
            self._reader = _client(config.backend, POOL_CONNECTIONS,
                                   retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                                   retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                                   socket_timeout=5.0, **common)
            self._subscriber = _client(config.backend, 2, retry=Retry(NoBackoff(), 0),
                                       health_check_interval=15, **common)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self._url!r}: {exc}") from None
        self._publish_script = self._writer.register_script(PUBLISH)
        self._read_script = self._reader.register_script(READ)
        self._register_script = self._reader.register_script(REGISTER)
        self._expire_script = self._reader.register_script(EXPIRE)
        self._sweep_script = self._reader.register_script(SWEEP)
        self._sweep_cursor = 0
        self._problem: str | None = None  # the last Redis failure, until a call succeeds
        flushers = max(1, min(MAX_FLUSHERS, POOL_CONNECTIONS - 1))
        self._batcher = Batcher(self._reader, (self._read_script, self._register_script), flushers,
                                config.max_clients_total)
        self._publisher = PublishBatcher(self._writer, (self._publish_script,), flushers)
        self._origin = secrets.token_hex(4)
        self._age_ms = self._batcher.age_ms = max(int(config.backlog_age_s * 1000), 1)
        self._tail_events = min(TAIL_EVENTS, config.backlog)
        self._refresh_s = min(config.client_ttl_s / 4, 30.0)
        self._tails: dict[str, _Tail] = {}
        self._generation = 0  # bumped whenever the tails are dropped
        self._refreshed: dict[str, float] = {}  # client -> when this process last wrote it
        self._wake = lambda channel: 0
        self._wake_all = lambda: 0
        self._waiter_count = lambda channel: 0
        self._closing = False
        self._listener = WakeListener(self._subscriber, PREFIX + "wake", self._on_message, self._resync,
                                      self._drop_tails)
        try:
            self._writer.set(PREFIX + "epoch", secrets.token_hex(4), nx=True)
            epoch = self._writer.get(PREFIX + "epoch")  # bytes: decode_responses is off
            if not isinstance(epoch, bytes):
                raise redis.RedisError("the epoch key vanished while the backend started")
            self.epoch = epoch.decode()
        except redis.RedisError as exc:
            self._disconnect()
            raise BackendError(f"cannot reach Redis at {self._url}: {exc}") from None

    def start(self, wake, wake_all, waiter_count=lambda channel: 0) -> None:
        self._wake, self._wake_all, self._waiter_count = wake, wake_all, waiter_count
        if not self._listener.start(5.0):
            log.warning("Redis wake-up listener not subscribed after 5 s; it keeps trying")

    # -- publish and read --------------------------------------------------

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        prefix = protocol.event_prefix(channel)
        try:
            suffix = b',"data":' + data_json.encode() + b"}"
        except UnicodeEncodeError:
            raise BackendError("the event's data cannot be encoded as UTF-8 (a lone surrogate?)") from None
        idem = idempotency_redis_key(channel, idempotency_key) if idempotency_key is not None else PREFIX + "epoch"
        try:
            epoch, seq, duplicate = self._publisher.call(PUBLISH_OP, (
                (PREFIX + "epoch", PREFIX + "seq", PREFIX + "s:" + channel, idem, PREFIX + "dropped",
                 PREFIX + "ikeys"),
                (channel, prefix, suffix, epoch_candidate(), self._config.backlog, self._age_ms,
                 int(self._config.idempotency_ttl_s * 1000), self._origin,
                 "1" if idempotency_key is not None else "0", PREFIX + "wake",
                 self._config.max_idempotency_keys)))
        except redis.RedisError as exc:
            self._problem = f"Redis did not acknowledge a publish: {exc}"
            raise BackendError(f"Redis did not acknowledge the publish: {exc}") from None
        self._problem = None
        epoch = epoch.decode()
        if epoch != self.epoch:
            self._new_epoch(epoch)
        if duplicate == 2:  # a new key while max_idempotency_keys are remembered: nothing stored
            raise IdempotencyKeyLimitReached(self._config.max_idempotency_keys, self._config.idempotency_ttl_s)
        if not duplicate:
            self._apply(channel, seq, prefix + str(seq).encode() + suffix, own=True)
        return seq

    def read(self, channel: str, since: int | None, epoch: str | None, page: Page | None = None) -> ChannelRead:
        page = page or self.full_page()
        tail = self._tails.get(channel)
        if tail is not None and (epoch is None or epoch == self.epoch):
            last = tail.last
            if since is None or since == last:
                return ChannelRead([], last, True, self.epoch)
            if tail.first - 1 <= since < last:
                skip = since + 1 - tail.first
                oldest = tail.events[skip][0]
                if oldest >= time.monotonic() - self._config.backlog_age_s:
                    events = fill_page((e for _, e in islice(tail.events, skip, None)), page)
                    return ChannelRead(events, since + len(events), True, self.epoch)
        return self._read_redis(channel, since, epoch, page)

    def _read_redis(self, channel: str, since: int | None, epoch: str | None, page: Page) -> ChannelRead:
        generation, started = self._generation, time.monotonic()
        try:
            reply = self._batcher.call(READ_OP, (channel, since, epoch, page))
        except redis.RedisError as exc:
            self._problem = f"Redis did not answer a read: {exc}"
            raise RedisUnavailable(f"Redis did not answer a read: {exc}") from None
        if isinstance(reply, Exception):
            self._problem = f"Redis did not answer a read: {reply}"
            raise RedisUnavailable(f"Redis did not answer a read: {reply}")
        self._problem = None
        current, last, first, encoded = reply[0].decode(), int(reply[1]), int(reply[2]), reply[3:]
        if current != self.epoch:
            self._new_epoch(current)
        elif generation == self._generation and channel not in self._tails:
            self._add_tail(channel, _Tail(last))  # later reads of this channel start here
        elif since is None and generation == self._generation:
            # A new subscriber starts "now", and its request was parked before this round
            # trip: events that reached this process during it are news to it, as they
            # would be with the memory backend.
            tail = self._tails[channel]
            fresh = sum(1 for at, _ in tail.events if at >= started)
            if fresh:
                return self.read(channel, tail.last - fresh, current, page)
        plan = protocol.plan_read(since, first, last, epoch in (None, current))
        if plan.after >= last:
            return ChannelRead([], last, plan.recovered, current)
        # The script sent the page from seq plan.after + 1 on (contiguous seqs).
        return ChannelRead(list(encoded), plan.after + len(encoded), plan.recovered, current)

    # -- the local tails and wake-ups --------------------------------------

    def _apply(self, channel: str, seq: int, encoded: bytes, own: bool) -> None:
        """A publish Redis acknowledged (ours, or another process's through pub/sub)."""
        tail = self._tails.get(channel)
        if tail is None:
            tail = self._add_tail(channel, _Tail(seq - 1))
        if seq <= tail.last:
            # Already applied (and woken). Another process's event may still be news to
            # a waiter that read Redis before this tail began: wake, it costs a re-read.
            if not own:
                self._wake(channel)
            return
        if seq != tail.last + 1:  # a gap: the tail restarts here; older reads go to Redis
            tail.events.clear()
            tail.first = seq
        tail.events.append((time.monotonic(), encoded))
        tail.last = seq
        if len(tail.events) > self._tail_events:
            del tail.events[0]
            tail.first += 1
        self._wake(channel)

    def _add_tail(self, channel: str, tail: _Tail) -> _Tail:
        tails = self._tails
        if len(tails) >= MAX_TAILS:  # oldest first; a dropped tail only costs Redis reads
            for name in list(islice(tails, MAX_TAILS // 10)):
                del tails[name]
        tails[channel] = tail
        return tail

    def _on_message(self, data: bytes) -> None:
        channel, seq, epoch, origin, encoded = data.split(b"\n", 4)
        epoch_text = epoch.decode()
        if epoch_text != self.epoch:
            self._new_epoch(epoch_text)
        self._apply(channel.decode(), int(seq), encoded, own=origin.decode() == self._origin)

    def _new_epoch(self, epoch: str) -> None:
        log.warning("Redis epoch changed %s -> %s: history was lost; clients resuming get recovered=false",
                    self.epoch, epoch)
        self.epoch = epoch
        self._drop_tails()
        self._wake_all()

    def _drop_tails(self) -> None:
        self._tails.clear()
        self._generation += 1

    def _resync(self) -> None:
        log.info("Redis wake-up listener resubscribed: waking every local channel to re-read")
        self._drop_tails()
        self._wake_all()

    # -- registrations -----------------------------------------------------

    def register(self, client: str) -> None:
        now = time.monotonic()
        written = self._refreshed.get(client)
        if written is not None and now - written < self._refresh_s:
            return  # this process wrote it recently; the expiry score covers the gap
        score = self._clock() + self._config.client_ttl_s + self._refresh_s
        if written is not None and now - written < self._config.client_ttl_s:
            # Still registered (its score outlasts this by the refresh interval): refresh
            # in the background; a poll never waits for it.
            self._refreshed[client] = now
            self._batcher.send(ZADD_OP, (client, score))
            return
        try:  # new here: wait, so a notify to it through any process finds it
            reply = self._batcher.call(REGISTER_OP, (client, score))
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not store the registration: {exc}") from None
        if isinstance(reply, Exception):
            raise BackendError(f"Redis did not store the registration: {reply}")
        if not reply:  # new to Redis too, and gc:clients is full
            raise ClientLimitReached(self._config.max_clients_total, self._config.client_ttl_s)
        self._refreshed[client] = now

    def is_registered(self, client: str) -> bool:
        try:
            expires = self._batcher.call(ZSCORE_OP, client)
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not answer: {exc}") from None
        if isinstance(expires, Exception):
            raise BackendError(f"Redis did not answer: {expires}")
        return expires is not None and float(expires) >= self._clock()

    def expire_idle(self) -> list[str]:
        try:
            gone: list[str] = []
            for _ in range(EXPIRE_ROUNDS):
                batch = self._expire_script(keys=[PREFIX + "clients", PREFIX + "seq", PREFIX + "dropped"],
                                            args=[self._clock(), PREFIX + "s:", EXPIRE_BATCH])
                gone += [c.decode() for c in batch]
                if len(batch) < EXPIRE_BATCH:
                    break
            swept = self._sweep_idle_channels()
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not expire registrations: {exc}") from None
        for channel in [protocol.private_channel(client) for client in gone] + swept:
            self._tails.pop(channel, None)
        for client in gone:  # a re-registration must be written, however recent the last write
            self._refreshed.pop(client, None)
        cutoff = time.monotonic() - self._config.client_ttl_s  # written longer ago: expired or soon
        for client in [c for c, t in self._refreshed.items() if t < cutoff]:
            del self._refreshed[client]
        return gone

    def _sweep_idle_channels(self) -> list[str]:
        """Drop public channels whose stream expired and that nobody here waits on; a few
        HSCAN rounds per call, resuming where the last call stopped."""
        swept: list[str] = []
        for _ in range(SWEEP_ROUNDS):
            cursor, fields = self._reader.hscan(PREFIX + "seq", self._sweep_cursor, count=SWEEP_BATCH)
            self._sweep_cursor = int(cursor)
            names = [name for name in (f.decode() if isinstance(f, bytes) else f for f in fields)
                     if not name.startswith(protocol.PRIVATE_PREFIX) and not self._waiter_count(name)]
            if names:
                swept += [n.decode() for n in self._sweep_script(keys=[PREFIX + "seq", PREFIX + "dropped"],
                                                                 args=[PREFIX + "s:", *names])]
            if self._sweep_cursor == 0:
                break
        return swept

    def health(self) -> str | None:
        if self._closing:
            return "the backend is closed"
        if not self._listener.listening:
            return "the Redis wake-up listener is not subscribed (Redis unreachable?); it keeps retrying"
        return self._problem

    def counts(self) -> dict[str, int]:
        try:
            with self._reader.pipeline(transaction=False) as pipe:
                pipe.zcount(PREFIX + "clients", self._clock(), "+inf")
                pipe.hlen(PREFIX + "seq")
                # gc:ikeys is scored on Redis's clock; ours is close enough for a count
                pipe.zcount(PREFIX + "ikeys", int(time.time() * 1000), "+inf")
                clients, channels, keys = pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not answer: {exc}") from None
        return {"clients": clients, "channels": channels, "idempotency_keys": keys}

    def channel_names(self, limit: int) -> list[str]:
        names = []
        try:
            for name, _ in self._reader.hscan_iter(PREFIX + "seq", count=max(limit, 100)):
                if not name.startswith(b"@"):
                    names.append(name.decode())
                    if len(names) >= limit:
                        break
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not answer: {exc}") from None
        return names

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self._disconnect()

    def _disconnect(self) -> None:
        for client in (self._writer, self._reader, self._subscriber):
            try:
                client.connection_pool.disconnect()  # ours, so Redis.close() would leave it open
            except Exception:  # best effort at shutdown
                pass

"""Redis behind Sentinel: ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB``, and the master fence.

Each new connection asks Sentinel for the master of SERVICE (redis-py's
:class:`~redis.sentinel.SentinelManagedConnection`), so after a failover the pools and the
listener reconnect to the new master with the backoff they already have; a connection
still open to a demoted master gets ``READONLY`` on its next write, which redis-py turns
into a :class:`~redis.ConnectionError` (the notify is answered 503 and retried).

**The fence.** Redis replicates asynchronously, so a promoted replica may lack the last
events the old master acknowledged, and would give their ids to different events. A
process hears every event's wake-up (channel, seq, epoch: one pub/sub channel for all),
and remembers the highest seq of each channel (:meth:`MasterFence.observe`). The first
connection this process opens to a master it has not used before runs the check on that
connection, before any command of this process reaches the new master: if any channel's
seq there is below what was seen, the epoch is replaced (compare-and-set, so that all
processes agree on one new epoch), and every cursor of the old epoch gets
``recovered: false`` instead of a quiet skip or a reused id. Measured fact (Redis 7.0):
``PUBLISH`` is replicated, so a listener left on a demoted master still hears the new
master's wake-ups; the check therefore hangs on connections, not on the listener.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple
from urllib.parse import unquote

import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPoolProxy, SentinelManagedConnection

from .redis_scripts import DROPPED_KEY, EPOCH_KEY, SEQ_KEY, epoch_candidate
from .redis_sentinel_watch import SwitchWatch

log = logging.getLogger(__name__)

SCHEME = "redis+sentinel"
#: Channels whose last seq a process remembers for the check (a bound on its memory).
MAX_SEEN_CHANNELS = 200_000
#: Channels asked about per round trip during the check.
CHECK_CHUNK = 1000
#: Replace the epoch only if it is still the one the caller saw (every process may try).
_REPLACE_EPOCH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return ARGV[2] end
return current
"""


class SentinelTarget(NamedTuple):
    """What a ``redis+sentinel://`` URL names."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[USER]:PASSWORD@]H:P[,H:P...]/SERVICE[/DB]``; ``ValueError`` names the fault.

    The password is the Redis servers'; the Sentinels are asked without one.
    """
    rest = url[len(SCHEME) + 3:]
    userinfo, at, hosts_and_path = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if colon else (None, unquote(user))
    hosts, _, path = hosts_and_path.partition("/")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME/DB")
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Sentinel address must be HOST:PORT, not {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"the database must be a number, not {parts[1]!r}")
    return SentinelTarget(sentinels, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, username, password)


class MasterFence:
    """Which master this process talks to, and the check that a new one is not behind (see module)."""

    def __init__(self, service: str) -> None:
        self.service = service
        #: The master this process last checked, (host, port); None before the first connection.
        self.master: tuple[str, int] | None = None
        #: Times the epoch was replaced by this process because a new master was behind.
        self.epochs_replaced = 0
        self._epoch: bytes | None = None
        self._seen: dict[bytes, int] = {}
        self._checking: Event | None = None

    def observe(self, channel: bytes, seq: int, epoch: bytes) -> None:
        """A wake-up was heard: ``channel`` reached ``seq`` in ``epoch``."""
        if epoch != self._epoch:
            self._epoch, self._seen = epoch, {}
        seen = self._seen
        if seq > seen.get(channel, 0) and (len(seen) < MAX_SEEN_CHANNELS or channel in seen):
            seen[channel] = seq

    def admit(self, connection: redis.Connection) -> None:
        """Called on each new connection before it is used; checks a master seen for the first time."""
        address = (str(connection.host), int(connection.port))
        while self._checking is not None and address != self.master:
            self._checking.wait()  # another connection is checking: it decides for both
        if address == self.master:
            return
        if self.master is None:
            log.info("Redis master of %s is %s:%d (Sentinel)", self.service, *address)
            self.master = address
            return
        self._checking = checking = Event()
        try:
            log.warning("Redis master of %s switched %s:%d -> %s:%d (Sentinel); checking it has every "
                        "event this process heard of", self.service, *self.master, *address)
            self._check(connection)
            self.master = address
        finally:
            self._checking = None
            checking.set()

    def _check(self, connection: redis.Connection) -> None:
        epoch, seen = self._epoch, self._seen
        if epoch is None or not seen or _call(connection, "GET", EPOCH_KEY) != epoch:
            return  # nothing heard, or the epoch changed already (replaced, or Redis lost it all)
        dropped = int(_call(connection, "GET", DROPPED_KEY) or 0)
        names = list(seen)
        behind = None
        for start in range(0, len(names), CHECK_CHUNK):
            chunk = names[start:start + CHECK_CHUNK]
            for name, last in zip(chunk, _call(connection, "HMGET", SEQ_KEY, *chunk)):
                known = int(last) if last is not None else (dropped + 1 if dropped else 0)
                if known < seen[name]:
                    behind = (name, known, seen[name])
                    break
            if behind:
                break
        if behind is None:
            log.info("the new Redis master has every event this process heard of: the epoch is kept")
            return
        fresh = epoch_candidate().encode()
        current = _call(connection, "EVAL", _REPLACE_EPOCH, 1, EPOCH_KEY, epoch, fresh)
        self.epochs_replaced += current == fresh
        log.warning("the new Redis master lost acknowledged events (channel %r is at %d, %d was published): "
                    "epoch %s -> %s, resuming clients get recovered=false", behind[0].decode(errors="replace"),
                    behind[1], behind[2], epoch.decode(), current.decode())
        self._epoch, self._seen = current, {}


def _call(connection: redis.Connection, *command: Any) -> Any:
    connection.send_command(*command)
    return connection.read_response()


class FencedConnection(SentinelManagedConnection):
    """A connection to Sentinel's current master that passes the fence before its first use."""

    def __init__(self, **kwargs: Any) -> None:
        self.fence: MasterFence = kwargs.pop("fence")
        super().__init__(**kwargs)

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        self.fence.admit(self)


class BlockingSentinelPool(BlockingConnectionPool):
    """:class:`~redis.sentinel.SentinelConnectionPool`'s master discovery with a blocking pool's bound."""

    def __init__(self, service: str, manager: Sentinel, fence: MasterFence, **kwargs: Any) -> None:
        self.fence = fence
        self.owner: SentinelPools | None = None
        self.proxy = SentinelConnectionPoolProxy(connection_pool=self, is_master=True, check_connection=False,
                                                 service_name=service, sentinel_manager=manager)
        super().__init__(connection_class=FencedConnection, **kwargs)
        self.connection_kwargs["connection_pool"] = self.proxy
        self.connection_kwargs["fence"] = fence

    def reset(self) -> None:
        super().reset()
        proxy = getattr(self, "proxy", None)
        if proxy is not None:
            proxy.reset()

    def owns_connection(self, connection: Any) -> bool:
        # A connection to a master Sentinel no longer names is closed when released.
        return bool(self.proxy.master_address == (connection.host, connection.port)
                    and super().owns_connection(connection))

    def follow(self) -> None:
        """Ask Sentinel for the master; if it moved, drop every connection to the old one, even in use."""
        old = self.proxy.master_address
        if self.proxy.get_master_address() != old and old is not None:
            self.disconnect(inuse_connections=True)


class NewestSentinel(Sentinel):
    """Asks every sentinel and takes the master of the newest configuration (``config-epoch``).

    redis-py takes the first sentinel's answer. During a failover the sentinels disagree
    for a moment; following the first one, a process flipped from the new master back to
    the old one and forth again within 0.1 s (measured), writing to the demoted master in
    between. "No master" names the sentinels instead of redis-py's client repr.
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        newest: tuple[int, tuple[str, int]] | None = None
        for sentinel in self.sentinels:
            try:
                state = sentinel.sentinel_masters().get(service_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if state and self.check_master_state(state, service_name):
                epoch = int(state.get("config-epoch") or 0)
                if newest is None or epoch > newest[0]:
                    newest = (epoch, (state["ip"], int(state["port"])))
        if newest is None:
            hosts = ",".join(f"{client.connection_pool.connection_kwargs.get('host')}:"
                             f"{client.connection_pool.connection_kwargs.get('port')}" for client in self.sentinels)
            raise MasterNotFoundError(f"no Sentinel at {hosts} answered with a master for {service_name!r}")
        return newest[1]


class SentinelPools:
    """Makes clients of one Sentinel-managed master that share one Sentinel manager, fence and
    switch watch (:mod:`.redis_sentinel_watch`, started with the first client)."""

    def __init__(self, url: str) -> None:
        self.target = parse_sentinel_url(url)
        self.fence = MasterFence(self.target.service)
        # One try per sentinel and per call: the manager asks the next sentinel itself, and the
        # callers have their own retries (redis-py's default backoff made a refused start take 18 s).
        self.manager = NewestSentinel(self.target.sentinels, sentinel_kwargs={
            "socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)})
        self._pools: list[BlockingSentinelPool] = []
        self._watch = SwitchWatch(self.target.sentinels, self.target.service, self.follow)

    def follow(self) -> None:
        """Every pool to Sentinel's current master (called on ``+switch-master``)."""
        for pool in self._pools:
            pool.follow()

    def close(self) -> None:
        self._watch.close()

    def client(self, max_connections: int, timeout: float, **kwargs: Any) -> redis.Redis:
        target = self.target
        pool = BlockingSentinelPool(target.service, self.manager, self.fence, max_connections=max_connections,
                                    timeout=timeout, db=target.db, username=target.username,
                                    password=target.password, **kwargs)
        pool.owner = self
        if not self._pools:
            self._watch.start()
        self._pools.append(pool)
        return redis.Redis(connection_pool=pool)

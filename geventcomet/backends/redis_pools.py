"""The Redis backend's three connection pools, each with the retry policy its calls can bear.

- **writer**: publishes. redis-py never retries them: a retried ``XADD`` after a dropped
  connection could store an event twice; the caller gets 503 and retries with its
  Idempotency-Key instead.
- **reader**: reads and registrations, which are idempotent: retried briefly across a blip.
- **subscriber**: the one pub/sub connection of the wake-up listener (health-checked).

A ``redis+sentinel://`` URL gives the same three pools on Sentinel's current master
(:mod:`.redis_sentinel`): each new connection asks Sentinel where the master is and passes
the master fence, so after a failover every pool follows the new master.

The pools are bounded (:data:`POOL_CONNECTIONS`): a ramp of thousands of polls waits for a
connection instead of opening thousands, each an open file here and in Redis.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .redis_sentinel import SentinelPools, is_sentinel_url

#: Connections per pool (one pool for publishes, one for reads) in each process.
POOL_CONNECTIONS = 16
#: How long a caller waits for a pooled connection before the call fails (then 503).
POOL_TIMEOUT_S = 5.0


class Pools(NamedTuple):
    writer: redis.Redis
    reader: redis.Redis
    subscriber: redis.Redis

    def disconnect(self) -> None:
        """Close every connection (best effort, at shutdown), and stop watching Sentinel."""
        for client in self:
            owner = getattr(client.connection_pool, "owner", None)  # redis+sentinel:// only
            if owner is not None:
                owner.close()
            try:
                client.connection_pool.disconnect()  # ours, so Redis.close() would leave it open
            except Exception:  # best effort at shutdown
                pass


def open_pools(url: str) -> Pools:
    """The three pools for ``url`` (``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``);
    ``ValueError`` for a URL redis-py cannot use."""
    common = dict(socket_connect_timeout=2.0, socket_keepalive=True)
    _client = _sentinel_maker(SentinelPools(url)) if is_sentinel_url(url) else _url_client
    return Pools(
        writer=_client(url, POOL_CONNECTIONS, retry=Retry(NoBackoff(), 0), socket_timeout=5.0, **common),
        reader=_client(url, POOL_CONNECTIONS, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                       retry_on_error=[redis.ConnectionError, redis.TimeoutError], socket_timeout=5.0, **common),
        subscriber=_client(url, 2, retry=Retry(NoBackoff(), 0), health_check_interval=15, **common))


def _sentinel_maker(sentinel: SentinelPools) -> Callable[..., redis.Redis]:
    def make(_: str, max_connections: int, **kwargs: Any) -> redis.Redis:
        return sentinel.client(max_connections, POOL_TIMEOUT_S, **kwargs)
    return make


def _url_client(url: str, max_connections: int, **kwargs) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_TIMEOUT_S,
                                                 **kwargs)
    return redis.Redis(connection_pool=pool)

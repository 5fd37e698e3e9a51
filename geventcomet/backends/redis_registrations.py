"""Client registrations of the Redis backend: one sorted set, ``gc:clients``, scored by expiry time.

A poll refreshes its client at most every ``min(client_ttl / 4, 30 s)`` from each
process (the score covers the gap), and a refresh is queued, not waited for; only a
client this process has not written within the TTL waits for its write, so that a
notify to it through any process finds it. That write is the REGISTER script (ZCARD,
then ZADD only below ``max_clients_total`` or for a client already held); a refresh
is a plain ZADD of a client that is held. Every call goes through the poll-side
:class:`~.redis_batch.Batcher`, so a mass re-poll costs a few round trips.

Expiry scores are wall-clock seconds of the process that wrote them (``time.time()``
in production, a test's clock when one is given).
"""
from __future__ import annotations

from typing import Callable

import redis
from redis.commands.core import Script

from ..config import Config
from ..errors import BackendError, ClientLimitReached
from .redis_batch import REGISTER_OP, ZADD_OP, ZSCORE_OP, Batcher
from .redis_scripts import expire_args

#: How many registrations one EXPIRE script call deletes, and at most how many calls one
#: ``expire`` makes: registrations count toward ``max_clients_total`` until deleted.
EXPIRE_BATCH, EXPIRE_ROUNDS = 1000, 20


class Registrations:
    """This process's view of the shared registrations (see the module docstring).

    ``wall()`` gives the expiry scores' seconds; ``steady()`` times this process's own
    writes. ``expire_script`` is the EXPIRE script, bound to a client that may retry.
    """

    def __init__(self, config: Config, batcher: Batcher, expire_script: Script, wall: Callable[[], float],
                 steady: Callable[[], float]) -> None:
        self._config = config
        self._batcher = batcher
        self._expire_script = expire_script
        self._wall = wall
        self._steady = steady
        #: Seconds between two writes of a client this process holds.
        self.refresh_s = min(config.client_ttl_s / 4, 30.0)
        self._written: dict[str, float] = {}  # client -> when this process last wrote it (steady)

    def register(self, client: str) -> None:
        """Create or refresh ``client``; raises ClientLimitReached for a new one past the bound."""
        now = self._steady()
        written = self._written.get(client)
        if written is not None and now - written < self.refresh_s:
            return  # this process wrote it recently; the expiry score covers the gap
        score = self._wall() + self._config.client_ttl_s + self.refresh_s
        if written is not None and now - written < self._config.client_ttl_s:
            # Still registered (its score outlasts this by the refresh interval): refresh
            # in the background; a poll never waits for it.
            self._written[client] = now
            self._batcher.send(ZADD_OP, (client, score))
            return
        try:  # new here: wait, so a notify to it through any process finds it
            registered = self._batcher.call(REGISTER_OP, (client, score))
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not store the registration: {exc}") from None
        if not registered:  # new to Redis too, and gc:clients is full
            raise ClientLimitReached(self._config.max_clients_total, self._config.client_ttl_s)
        self._written[client] = now

    def is_registered(self, client: str) -> bool:
        """True while ``client``'s expiry score is not past."""
        try:
            expires = self._batcher.call(ZSCORE_OP, client)
        except redis.RedisError as exc:
            raise BackendError(f"Redis did not answer: {exc}") from None
        return expires is not None and float(expires) >= self._wall()

    def expire(self) -> list[str]:
        """Delete expired registrations (and their private channels) from Redis; their ids.

        Raises :class:`redis.RedisError` when Redis fails.
        """
        gone: list[str] = []
        for _ in range(EXPIRE_ROUNDS):
            keys, args = expire_args(self._wall(), EXPIRE_BATCH)
            batch = self._expire_script(keys=keys, args=args)
            gone += [c.decode() for c in batch]
            if len(batch) < EXPIRE_BATCH:
                break
        for client in gone:  # a re-registration must be written, however recent the last write
            self._written.pop(client, None)
        cutoff = self._steady() - self._config.client_ttl_s  # written longer ago: expired or soon
        for client in [c for c, t in self._written.items() if t < cutoff]:
            del self._written[client]
        return gone

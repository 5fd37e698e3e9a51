"""Housekeeping of the Redis backend's public channels: drop those whose whole backlog aged out.

A stream expires (``PEXPIRE``) one second after its last event is too old; a public
channel whose stream is gone has nothing left to give, so the SWEEP script drops its
seq counter and raises D (``gc:dropped``) atomically, so that its ids are never reused
(see :mod:`geventcomet.backends`). A channel somebody waits on in this process is kept:
waiters in other processes are not known here, and such a waiter is told
``recovered: false`` at its next event, never skipped. Private channels go with their
client's registration instead (:mod:`.redis_registrations`).
"""
from __future__ import annotations

from typing import Callable

import redis

from .. import protocol
from .redis_scripts import SEQ_KEY, SWEEP, sweep_args

#: Channel names one ``sweep`` looks at (HSCAN rounds of SWEEP_BATCH), so that a sweep of
#: the whole hash is spread over several calls.
SWEEP_BATCH, SWEEP_ROUNDS = 1000, 20


class IdleChannelSweep:
    """Resumable sweep of ``gc:seq``; ``waiter_count(channel)`` (set by the backend's
    ``start``) says how many requests of this process wait on a channel."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(SWEEP)
        self._cursor = 0
        self.waiter_count: Callable[[str], int] = lambda channel: 0

    def sweep(self) -> list[str]:
        """Drop the idle public channels among the next few HSCAN rounds; their names.

        Raises :class:`redis.RedisError` when Redis fails.
        """
        swept: list[str] = []
        for _ in range(SWEEP_ROUNDS):
            cursor, fields = self._client.hscan(SEQ_KEY, self._cursor, count=SWEEP_BATCH)
            self._cursor = int(cursor)
            names = [name for name in (f.decode() if isinstance(f, bytes) else f for f in fields)
                     if not name.startswith(protocol.PRIVATE_PREFIX) and not self.waiter_count(name)]
            if names:
                keys, args = sweep_args(names)
                swept += [n.decode() for n in self._script(keys=keys, args=args)]
            if self._cursor == 0:
                break
        return swept

"""Bayeux sessions in Redis, shared by every worker and node of the backend (no sticky sessions).

One hash per session, ``gc:bx:s:<clientId>``: ``epoch``, ``token``, ``connected``, a field
``sub:<name>`` per subscription and ``pos:<feed>`` per feed position. Every request of the
session restarts the key's ``PEXPIRE`` (``bayeux_session_ttl_s``), so Redis itself frees an
idle session; nothing here sweeps. A change is one Lua script that first checks the key
exists, so a subscribe or a connect landing after the session expired (or disconnected,
on another worker) never resurrects a half session.

The connections are the backend's own kind (:func:`~geventcomet.backends.redis_pools.open_pools`,
its *reader* pool: bounded, retried across a blip; every write here is idempotent), so
``redis+sentinel://`` URLs work as they do for the backend.

A connect's load and save go through a :class:`CommandBatcher`, as the backend's poll-side
reads do: the loads and saves of connects that arrive together (a fan-out wakes thousands)
share a few pipelines instead of each taking a pooled connection for a round trip of its own
(redis-py's per-command connection checkout, a ``poll`` for stale data and a socket option
read, was most of a Redis connect's CPU: ``bench/RESULTS-bayeux.md``).
"""
from __future__ import annotations

from typing import cast

from ..backends.redis import MAX_FLUSHERS
from ..backends.redis_batch import Batcher
from ..backends.redis_pools import POOL_CONNECTIONS, open_pools
from ..errors import BackendError
from .sessions import Session, SessionStore

KEY_PREFIX = "gc:bx:s:"
_SUB, _POS = "sub:", "pos:"

#: KEYS[1] the session; ARGV: ttl_ms, n (fields to set), n field/value pairs, then fields to delete.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i]) end
for i = 3 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

#: KEYS[1] the session; ARGV[1] ttl_ms. Its fields (flat: name, value, ...), its idle clock restarted.
_LOAD = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return fields
"""


class CommandBatcher(Batcher):
    """Each call is a list of Redis commands; the commands of calls queued together go as
    one pipeline, and each call gets its own commands' replies (a list)."""

    def _run(self, batch: list) -> list:
        # A call whose arguments cannot be sent (a lone surrogate has no UTF-8) fails alone:
        # in the pipeline it would fail every call queued with it.
        results: list = [_unsendable(commands) for _, commands, _ in batch]
        sent = [commands for (_, commands, _), refused in zip(batch, results) if refused is None]
        replies = self._execute([command for commands in sent for command in commands]) if sent else []
        start = 0
        for index, (_, commands, _) in enumerate(batch):
            if results[index] is None:
                results[index] = replies[start: start + len(commands)]
                start += len(commands)
        return results


def _unsendable(commands: list[tuple]) -> BaseException | None:
    for command in commands:
        for arg in command:
            if isinstance(arg, str) and not arg.isascii():
                try:
                    arg.encode()
                except UnicodeEncodeError as exc:
                    return BackendError(f"cannot send to Redis: {exc.reason}")
    return None


class RedisSessions(SessionStore):
    """Sessions under ``gc:bx:s:`` in the backend's Redis."""

    sweeps = False

    def __init__(self, url: str, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self._pools = open_pools(url)
        self.redis = self._pools.reader
        self._update = self.redis.register_script(_UPDATE)
        self._load = self.redis.register_script(_LOAD)
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._batcher = CommandBatcher(self.redis, (self._update, self._load),
                                       flushers=max(1, min(MAX_FLUSHERS, POOL_CONNECTIONS - 1)))

    def create(self, session: Session) -> None:
        fields = _fields(session.positions, session.subscriptions)
        fields.update({"epoch": session.epoch or "", "token": session.token or "", "connected": "0"})
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(KEY_PREFIX + session.client_id, mapping=cast(dict, fields))
                pipe.pexpire(KEY_PREFIX + session.client_id, self._ttl_ms)
                pipe.execute()
        except Exception as exc:
            raise BackendError(f"redis: {exc}") from None

    def load(self, client_id: str) -> Session | None:
        key = KEY_PREFIX + client_id
        [flat] = self._call([("EVALSHA", self._load.sha, 1, key, self._ttl_ms)])
        if not flat:
            return None
        session = Session(client_id)
        for name, value in zip((k.decode() for k in flat[::2]), (v.decode() for v in flat[1::2])):
            if name.startswith(_POS):
                session.positions[name[len(_POS):]] = int(value)
            elif name.startswith(_SUB):
                session.subscriptions.append(name[len(_SUB):])
            elif name == "epoch":
                session.epoch = value or None
            elif name == "token":
                session.token = value or None
            elif name == "connected":
                session.connected = value == "1"
        session.subscriptions.sort()
        return session

    def subscribe(self, client_id: str, positions: dict[str, int], epoch: str | None,
                  names: list[str]) -> bool:
        fields = _fields(positions, names)
        if epoch:
            fields["epoch"] = epoch
        return self._change(client_id, fields, [])

    def unsubscribe(self, client_id: str, names: list[str], feeds: list[str]) -> bool:
        return self._change(client_id, {}, [_SUB + name for name in names] + [_POS + feed for feed in feeds])

    def save(self, client_id: str, positions: dict[str, int], epoch: str) -> bool:
        fields = _fields(positions, [])
        fields.update({"epoch": epoch, "connected": "1"})
        return self._change(client_id, fields, [])

    def delete(self, client_id: str) -> None:
        try:
            self.redis.delete(KEY_PREFIX + client_id)
        except Exception as exc:
            raise BackendError(f"redis: {exc}") from None

    def close(self) -> None:
        self._pools.disconnect()

    def _change(self, client_id: str, fields: dict[str, str], deleted: list[str]) -> bool:
        args: list[str | int] = [self._ttl_ms, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._call([("EVALSHA", self._update.sha, 1, KEY_PREFIX + client_id, *args, *deleted)])[0])

    def _call(self, commands: list[tuple]) -> list:
        try:
            replies = self._batcher.call(0, commands)  # one kind of call: the op is not read
        except Exception as exc:
            raise BackendError(f"redis: {exc}") from None
        for reply in replies:
            if isinstance(reply, Exception):
                raise BackendError(f"redis: {reply}")
        return cast(list, replies)


def _fields(positions: dict[str, int], names: list[str]) -> dict[str, str]:
    fields = {_POS + feed: str(seq) for feed, seq in positions.items()}
    fields.update({_SUB + name: "1" for name in names})
    return fields

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
"""
from __future__ import annotations

from typing import cast

from ..backends.redis_pools import open_pools
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


class RedisSessions(SessionStore):
    """Sessions under ``gc:bx:s:`` in the backend's Redis."""

    sweeps = False

    def __init__(self, url: str, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self._pools = open_pools(url)
        self.redis = self._pools.reader
        self._update = self.redis.register_script(_UPDATE)
        self._ttl_ms = max(int(ttl_s * 1000), 1)

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
        try:
            with self.redis.pipeline(transaction=False) as pipe:  # one round trip; no MULTI needed
                pipe.hgetall(key)
                pipe.pexpire(key, self._ttl_ms)
                raw = cast(dict, pipe.execute()[0])
        except Exception as exc:
            raise BackendError(f"redis: {exc}") from None
        if not raw:
            return None
        session = Session(client_id)
        for name, value in ((k.decode(), v.decode()) for k, v in raw.items()):
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
        try:
            return bool(self._update(keys=[KEY_PREFIX + client_id], args=[*args, *deleted]))
        except Exception as exc:
            raise BackendError(f"redis: {exc}") from None


def _fields(positions: dict[str, int], names: list[str]) -> dict[str, str]:
    fields = {_POS + feed: str(seq) for feed, seq in positions.items()}
    fields.update({_SUB + name: "1" for name in names})
    return fields

"""Publishing straight into a server cluster's Redis, for programs that run beside it.

:class:`RedisPublisher` runs the very Lua scripts the server's Redis backend runs
(:mod:`geventcomet.backends.redis_scripts` PUBLISH, :mod:`geventcomet.backends.redis_publish_many`
PUBLISH_MANY), so an event it stores gets the next id of its channel, is remembered under
its Idempotency-Key exactly as a ``POST /notify`` would be, and wakes the waiters of every
server process through the ``gc:wake`` message the script publishes. Those modules, and
:mod:`geventcomet.protocol`, import neither gevent nor the server (checked by a test), so a
Celery worker imports this without monkey-patching anything.

Give it the server's ``Config`` (or the same ``--backlog``, ``--backlog-age``,
``--idempotency-ttl`` and ``--max-idempotency-keys``) so that the streams it writes are
bounded as the server bounds them.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from .. import protocol, strictjson
from ..backends import redis_scripts as scripts
from ..backends.redis_publish_many import PUBLISH_MANY, Encoded, parse_reply, publish_many_args
from ..config import Config
from ..errors import CometError
from .backoff import Backoff
from .errors import BadRequest, NotFound
from .policy import Attempts
from .publisher import new_key


class RedisPublisher:
    """``publish``, ``publish_many`` and ``notify_client``, as :class:`~.Publisher` has them,
    through Redis instead of HTTP. Retries connection errors and timeouts (with the same
    Idempotency-Key) for ``retry_for_s``; thread-safe (redis-py's pool is)."""

    def __init__(self, redis_url: str, *, config: Config | None = None, retry_for_s: float = 30.0,
                 backoff: Backoff | None = None) -> None:
        self.config = config or Config(backend=redis_url)
        self.retry_for_s, self.backoff = retry_for_s, backoff or Backoff()
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
        self._settings = scripts.StreamSettings.of(self.config, "redis-publisher-" + secrets.token_hex(4))
        self._publish = self._redis.register_script(scripts.PUBLISH)
        self._publish_many = self._redis.register_script(PUBLISH_MANY)

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> int:
        """Store ``data`` on ``channel``; returns the event's id."""
        return self._one(_checked_channel(channel), data, idempotency_key)

    def notify_client(self, client_id: str, data: Any, *, idempotency_key: str | None = None) -> int:
        """Send ``data`` to a registered client's private channel (:class:`NotFound` otherwise)."""
        try:
            protocol.validate_client(client_id)
        except CometError as exc:
            raise BadRequest(400, exc.message) from None
        expiry = self._call(lambda: self._redis.zscore(scripts.CLIENTS_KEY, client_id))
        if expiry is None or float(expiry) < time.time():
            raise NotFound(404, f"no registered client {client_id!r} (never registered, or expired)")
        return self._one(protocol.private_channel(client_id), data, idempotency_key)

    def publish_many(self, events: Iterable[Any], *, idempotency_key: str | None = None) -> list[int]:
        """Store a batch atomically (one script call), in order; returns the ids."""
        encoded = []
        for event in events:
            channel, data = _pair(event)
            encoded.append(Encoded(channel, protocol.event_prefix(channel), _suffix(data)))
        if not encoded or len(encoded) > self.config.max_batch_events:
            raise BadRequest(400, f"a batch has 1 to {self.config.max_batch_events} events")
        key = idempotency_key or new_key()
        call = publish_many_args(self._settings, encoded, key, "")
        return parse_reply(self._call(lambda: self._publish_many(*call), lambda r: int(r[1]) == 2)).seqs

    def _one(self, channel: str, data: Any, key: str | None) -> int:
        call = scripts.publish_args(self._settings, channel, protocol.event_prefix(channel), _suffix(data),
                                    key or new_key(), "")
        return int(self._call(lambda: self._publish(*call), lambda r: int(r[2]) == 2)[1])

    def _call(self, command: Any, refused: Any = lambda reply: False) -> Any:
        """``command()``'s reply, retried on connection errors and timeouts, and while the
        script ``refused`` a new key (the remembered keys are at their bound: nothing stored)."""
        attempts = Attempts(self.backoff, self.retry_for_s)
        while True:
            try:
                reply = command()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                time.sleep(attempts.failed(f"Redis: {exc}"))
                continue
            if refused(reply):
                time.sleep(attempts.failed("Redis holds --max-idempotency-keys keys", 1.0))
                continue
            return reply

    def close(self) -> None:
        self._redis.close()


def _checked_channel(channel: str) -> str:
    try:
        return protocol.validate_channel(channel)
    except CometError as exc:
        raise BadRequest(400, exc.message) from None


def _pair(event: Any) -> tuple[str, Any]:
    """``(channel, data)`` of a batch item: a pair, or a ``{"channel"|"client", "data"}`` dict."""
    if isinstance(event, Mapping):
        if "client" in event:
            return protocol.private_channel(event["client"]), event["data"]
        return _checked_channel(event["channel"]), event["data"]
    channel, data = event
    return _checked_channel(channel), data


def _suffix(data: Any) -> bytes:
    """The stored event's bytes after its id, for strict-JSON ``data`` (the server's rules)."""
    try:
        strictjson.check(data, strictjson.MAX_DEPTH - 1)  # the envelope object counts, as on the server
        return b',"data":' + protocol.encode_json(data).encode() + b"}"
    except (strictjson.StrictJSONError, TypeError, ValueError, UnicodeEncodeError) as exc:
        raise BadRequest(400, f"data is not strict JSON: {exc}") from None

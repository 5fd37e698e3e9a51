"""Batch publishing on Redis: one Lua script stores a whole ``POST /notify`` batch, or nothing.

PUBLISH_MANY does for every event what :data:`~.redis_scripts.PUBLISH` does for one (the
same keys, the same event bytes, the same wake-up message on ``gc:wake`` per event), in
one script call, so Redis runs it atomically: no reader, on any node, sees part of a batch.
Every refusal (a new Idempotency-Key batch while the remembered keys would pass
``max_idempotency_keys``) is decided before the first write. (A Lua script is not rolled
back if Redis fails in the middle of it, e.g. out of memory under ``maxmemory``: that is
the one case where a batch may be stored in part, as Redis documents for scripts.)

The batch's key covers all of it: event ``i`` is remembered under
:func:`~geventcomet.backends.batch_key` ``(key, i)`` on its channel; a retry finding them
all returns their seqs and stores nothing.

This module imports neither gevent nor redis: :mod:`geventcomet.client.redis_publisher`
runs the same script from a plain program.
"""
from __future__ import annotations

from typing import NamedTuple

from ..errors import BackendError
from . import batch_key
from .redis_scripts import (
    DROPPED_KEY,
    EPOCH_KEY,
    IKEYS_KEY,
    SEQ_KEY,
    STREAM_PREFIX,
    WAKE_CHANNEL,
    WRITER_PRELUDE,
    Args,
    StreamSettings,
    epoch_candidate,
    idempotency_redis_key,
)

PUBLISH_MANY = WRITER_PRELUDE + """
-- KEYS: epoch, seq hash, dropped, key index, then per event: stream, idempotency key
-- ARGV: candidate epoch, backlog, age ms, idempotency ttl ms, origin, has key, wake channel,
--       max idempotency keys, now ms, then per event: channel, event prefix, event suffix
-- Returns {epoch, 0 new | 1 duplicate | 2 refused: too many keys, seq of each event...}
local epoch = current_epoch(KEYS[1], ARGV[1])
local now = now_ms(ARGV[9])
local n = (#ARGV - 9) / 3
if ARGV[6] == '1' then
  local seen = {epoch, 1}
  for i = 1, n do
    local seq = redis.call('GET', KEYS[4 + 2 * i])
    if not seq then seen = nil break end
    seen[#seen + 1] = tonumber(seq)
  end
  if seen then return seen end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) + n > tonumber(ARGV[8]) then return {epoch, 2} end
end
local out = {epoch, 0}
local age = tonumber(ARGV[3])
for i = 1, n do
  local channel, stream, ikey = ARGV[7 + 3 * i], KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  if redis.call('HEXISTS', KEYS[2], channel) == 0 then
    local dropped = tonumber(redis.call('GET', KEYS[3]) or '0')
    if dropped > 0 then redis.call('HSET', KEYS[2], channel, dropped + 1) end
  end
  local seq = redis.call('HINCRBY', KEYS[2], channel, 1)
  local encoded = ARGV[8 + 3 * i] .. seq .. ARGV[9 + 3 * i]
  redis.call('XADD', stream, 'MAXLEN', ARGV[2], seq .. '-0', 't', now, 'e', encoded)
  trim_aged(stream, now - age)
  redis.call('PEXPIRE', stream, age + 1000)
  if ARGV[6] == '1' then
    redis.call('SET', ikey, seq, 'PX', ARGV[4])
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ikey)
  end
  redis.call('PUBLISH', ARGV[7], channel .. '\\n' .. seq .. '\\n' .. epoch .. '\\n' .. ARGV[5] .. '\\n' .. encoded)
  out[#out + 1] = seq
end
return out
"""


def event_suffix(data_json: str) -> bytes:
    """The stored event's bytes after its seq (the prefix is ``protocol.event_prefix``)."""
    try:
        return b',"data":' + data_json.encode() + b"}"
    except UnicodeEncodeError:
        raise BackendError("the event's data cannot be encoded as UTF-8 (a lone surrogate?)") from None


class Encoded(NamedTuple):
    """One event of a batch as the script takes it: its channel and the bytes around its seq."""

    channel: str
    prefix: bytes
    suffix: bytes


def publish_many_args(settings: StreamSettings, events: list[Encoded], idempotency_key: str | None,
                      now_ms: str) -> Args:
    """PUBLISH_MANY of ``events`` (each stored as ``prefix + seq + suffix``), in order."""
    keys: list[str] = [EPOCH_KEY, SEQ_KEY, DROPPED_KEY, IKEYS_KEY]
    args: list[object] = [epoch_candidate(), settings.backlog, settings.age_ms, settings.key_ttl_ms,
                          settings.origin, "0" if idempotency_key is None else "1", WAKE_CHANNEL,
                          settings.max_keys, now_ms]
    for index, event in enumerate(events):
        key = batch_key(idempotency_key, index)
        keys += [STREAM_PREFIX + event.channel,
                 EPOCH_KEY if key is None else idempotency_redis_key(event.channel, key)]
        args += [event.channel, event.prefix, event.suffix]
    return tuple(keys), tuple(args)


class BatchReply(NamedTuple):
    """What PUBLISH_MANY answered: the epoch, 0 new / 1 duplicate / 2 refused, the seqs."""

    epoch: str
    outcome: int
    seqs: list[int]


def parse_reply(reply: list) -> BatchReply:
    """The script's raw reply (bytes epoch, integers) as a :class:`BatchReply`."""
    epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return BatchReply(epoch, int(reply[1]), [int(seq) for seq in reply[2:]])

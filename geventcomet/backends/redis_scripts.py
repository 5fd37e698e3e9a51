"""The Lua scripts of the Redis backend, the keys they share, and each script's KEYS/ARGV layout.

Keys: ``gc:epoch``, ``gc:seq`` (hash channel -> last seq), ``gc:s:CHANNEL``
(stream), ``gc:i:LEN:CHANNEL:KEY`` (idempotency; ``LEN`` is the channel's length, so
no two (channel, key) pairs share a key even though both may contain ``:``),
``gc:dropped`` (D: the highest last seq of a dropped channel, see
:mod:`geventcomet.backends`), ``gc:clients`` (sorted set: client -> expiry, s),
``gc:ikeys`` (sorted set: idempotency key name -> expiry, ms of the scripts' clock: an
exact count of the remembered keys, pruned by each publish that carries a key), and
the pub/sub channel ``gc:wake``. Each script runs atomically in Redis.

Each script's argument order is known in one place: the ``*_args`` function below it
builds its ``(keys, args)``, and nothing else spells them out.

Time: PUBLISH and READ take the time in ms as their last argument. ``""`` (production)
makes them read Redis's ``TIME``, the one clock every process and machine shares, so
there is no skew between nodes; a test's clock gives its own milliseconds instead.

Bounds: REGISTER adds a new client only while ``gc:clients`` holds fewer than
``max_clients_total`` (expired ones count until ``expire_idle`` removes them); a
refresh of a client it holds always works. PUBLISH with a new key is refused
(``duplicate`` = 2) while ``gc:ikeys`` holds ``max_idempotency_keys`` unexpired keys.
ZCARD is O(1), ZSCORE O(log N), and the prune O(log N + removed): cheap per call. Streams are never emptied and
kept: each expires (``PEXPIRE``) one second after its last event is too old, so a
channel without a stream has no backlog left.
"""
from __future__ import annotations

import random
from typing import NamedTuple

from ..config import Config
from . import Page

PREFIX = "gc:"
EPOCH_KEY, SEQ_KEY, DROPPED_KEY = PREFIX + "epoch", PREFIX + "seq", PREFIX + "dropped"
#: The secret that signs client ids when none is configured: set once (SET NX), read by every process.
CLIENT_SECRET_KEY = PREFIX + "client_secret"
CLIENTS_KEY, IKEYS_KEY, STREAM_PREFIX = PREFIX + "clients", PREFIX + "ikeys", PREFIX + "s:"
WAKE_CHANNEL = PREFIX + "wake"

#: A command's arguments: Redis keys and script arguments (bytes, str or numbers).
Args = tuple[tuple, tuple]


def idempotency_redis_key(channel: str, key: str) -> str:
    """The Redis key remembering ``key`` on ``channel``; the length prefix keeps pairs apart."""
    return f"{PREFIX}i:{len(channel)}:{channel}:{key}"


def epoch_candidate() -> str:
    """A fresh epoch, offered with each call that may find Redis without one (after a restart).

    Not a secret, only unlikely to repeat: ``random`` (reseeded in forked children) is
    used instead of ``secrets``, whose ``getrandom`` syscall per publish showed in profiles.
    """
    return f"{random.getrandbits(32):08x}"


def evalsha(sha: str, call: Args) -> tuple:
    """The raw ``EVALSHA`` command of a script call, for a pipeline."""
    keys, args = call
    return ("EVALSHA", sha, len(keys), *keys, *args)


class StreamSettings(NamedTuple):
    """What PUBLISH and READ are told on every call, fixed for a backend."""

    backlog: int  #: events kept per stream (XADD MAXLEN)
    age_ms: int  #: how long an event is kept
    key_ttl_ms: int  #: how long an idempotency key is remembered
    max_keys: int  #: idempotency keys remembered at most
    origin: str  #: this process, so that its own wake-ups are known as such

    @classmethod
    def of(cls, config: Config, origin: str) -> StreamSettings:
        return cls(config.backlog, max(int(config.backlog_age_s * 1000), 1),
                   int(config.idempotency_ttl_s * 1000), config.max_idempotency_keys, origin)


# -- Lua written once, shared by the scripts ----------------------------------

_CURRENT_EPOCH = """
-- The epoch; a missing one (Redis lost its data) is created from the candidate.
local function current_epoch(key, candidate)
  local epoch = redis.call('GET', key)
  if not epoch then
    epoch = candidate
    redis.call('SET', key, epoch)
  end
  return epoch
end
"""

_NOW_MS = """
-- Milliseconds: the caller's clock when it sends one (tests), else Redis's TIME.
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_TRIM_AGED = """
-- Delete a stream's entries published before cutoff (ms), oldest first, at most 100;
-- the id of the oldest entry kept, or nil.
local function trim_aged(stream, cutoff)
  for i = 1, 100 do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #head == 0 then return nil end
    if tonumber(head[1][2][2]) >= cutoff then return head[1][1] end
    redis.call('XDEL', stream, head[1][1])
  end
  return nil
end
"""

#: The Lua functions a script that writes events needs (``current_epoch``, ``now_ms``, ``trim_aged``).
WRITER_PRELUDE = _CURRENT_EPOCH + _NOW_MS + _TRIM_AGED

PUBLISH = WRITER_PRELUDE + """
-- KEYS: epoch, seq hash, stream, idempotency key (unused unless ARGV[9] == '1'), dropped,
--       key index
-- ARGV: channel, event prefix, event suffix, candidate epoch, backlog, age ms,
--       idempotency ttl ms, origin, has key, wake channel, max idempotency keys, now ms,
--       return the wake-up ('1': --redis-min-replicas, the caller publishes it once WAIT
--       says the replicas have the event) or publish it ('0')
-- Returns {epoch, seq, 0 new | 1 duplicate | 2 refused: too many keys[, wake-up]}
local epoch = current_epoch(KEYS[1], ARGV[4])
local now = now_ms(ARGV[12])
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local kept = ARGV[13] == '1' and redis.call('XRANGE', KEYS[3], seen .. '-0', seen .. '-0')
    if kept and #kept == 1 then  -- a retry after WAIT failed: its wake-up was never sent
      local wake = ARGV[1] .. '\\n' .. seen .. '\\n' .. epoch .. '\\n' .. ARGV[8] .. '\\n' .. kept[1][2][4]
      return {epoch, tonumber(seen), 1, wake}
    end
    return {epoch, tonumber(seen), 1}
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[11]) then return {epoch, 0, 2} end
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  local dropped = tonumber(redis.call('GET', KEYS[5]) or '0')
  if dropped > 0 then redis.call('HSET', KEYS[2], ARGV[1], dropped + 1) end
end
local seq = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local encoded = ARGV[2] .. seq .. ARGV[3]
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[5], seq .. '-0', 't', now, 'e', encoded)
trim_aged(KEYS[3], now - tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]) + 1000)
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], seq, 'PX', ARGV[7])
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[7]), KEYS[4])
end
local wake = ARGV[1] .. '\\n' .. seq .. '\\n' .. epoch .. '\\n' .. ARGV[8] .. '\\n' .. encoded
if ARGV[13] == '1' then return {epoch, seq, 0, wake} end
redis.call('PUBLISH', ARGV[10], wake)
return {epoch, seq, 0}
"""


def publish_args(settings: StreamSettings, channel: str, event_prefix: bytes, event_suffix: bytes,
                 idempotency_key: str | None, now_ms: str) -> Args:
    """PUBLISH of the event ``event_prefix + seq + event_suffix`` to ``channel``; it publishes its
    wake-up (:class:`~.redis_batch.PublishBatcher` sets the last argument to "1" to get it back)."""
    if idempotency_key is None:  # the key slot is unused: any key will do
        key, has_key = EPOCH_KEY, "0"
    else:
        key, has_key = idempotency_redis_key(channel, idempotency_key), "1"
    return ((EPOCH_KEY, SEQ_KEY, STREAM_PREFIX + channel, key, DROPPED_KEY, IKEYS_KEY),
            (channel, event_prefix, event_suffix, epoch_candidate(), settings.backlog, settings.age_ms,
             settings.key_ttl_ms, settings.origin, has_key, WAKE_CHANNEL, settings.max_keys, now_ms,
             "0"))


READ = _CURRENT_EPOCH + _NOW_MS + _TRIM_AGED + """
-- KEYS: epoch, seq hash, stream, dropped
-- ARGV: channel, since ('' none), cursor epoch ('' none), candidate epoch, age ms,
--       page: max events, max bytes, first event free ('1'); now ms
-- Returns {epoch, last, first, encoded events of the page...}
local epoch = current_epoch(KEYS[1], ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if last < 0 then
  local dropped = tonumber(redis.call('GET', KEYS[4]) or '0')
  if dropped > 0 then last = dropped + 1 else last = 0 end
end
local first = last + 1
local kept = trim_aged(KEYS[3], now_ms(ARGV[9]) - tonumber(ARGV[5]))
if kept then first = tonumber(string.match(kept, '^(%d+)')) end
local lo = first
if ARGV[3] == '' or ARGV[3] == epoch then
  if ARGV[2] == '' then return {epoch, last, first} end
  local since = tonumber(ARGV[2])
  if since >= last then return {epoch, last, first} end
  if since + 1 > first then lo = since + 1 end
end
local out = {epoch, last, first}
local count, budget, size = tonumber(ARGV[6]), tonumber(ARGV[7]), 0
if count < 1 then return out end
for _, entry in ipairs(redis.call('XRANGE', KEYS[3], lo .. '-0', '+', 'COUNT', count)) do
  local encoded = entry[2][4]
  size = size + #encoded
  if size > budget and (#out > 3 or ARGV[8] ~= '1') then break end
  out[#out + 1] = encoded
end
return out
"""


def read_args(channel: str, since: int | None, epoch: str | None, page: Page, candidate: str, age_ms: int,
              now_ms: str) -> Args:
    """READ of ``channel`` after ``since`` for a cursor of ``epoch``, at most ``page``."""
    return ((EPOCH_KEY, SEQ_KEY, STREAM_PREFIX + channel, DROPPED_KEY),
            (channel, "" if since is None else since, epoch or "", candidate, age_ms,
             page.events, page.size, "1" if page.first_free else "0", now_ms))


REGISTER = """
-- Register new clients within the bound; a client already held is refreshed.
-- KEYS: clients; ARGV: limit, then (expiry score, client) pairs
-- Returns 1 (registered) or 0 (refused: the set holds `limit` clients) per client.
local held = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  if held < limit or redis.call('ZSCORE', KEYS[1], ARGV[i + 1]) then
    held = held + redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


def register_args(limit: int, expiries: dict[str, float]) -> Args:
    """REGISTER of every client in ``expiries`` (client -> expiry score), within ``limit``."""
    return (CLIENTS_KEY,), (limit, *[x for client, score in expiries.items() for x in (score, client)])


EXPIRE = """
-- KEYS: clients, seq hash, dropped; ARGV: now, stream key prefix, limit
-- Returns the clients removed (at most `limit`), their private channels gone with them.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local dropped = tonumber(redis.call('GET', KEYS[3]) or '0')
local top = dropped
for _, client in ipairs(gone) do
  redis.call('ZREM', KEYS[1], client)
  local last = tonumber(redis.call('HGET', KEYS[2], '@' .. client) or '0')
  if last > top then top = last end
  redis.call('HDEL', KEYS[2], '@' .. client)
  redis.call('DEL', ARGV[2] .. '@' .. client)
end
if top > dropped then redis.call('SET', KEYS[3], top) end
return gone
"""


def expire_args(now: float, limit: int) -> Args:
    """EXPIRE of at most ``limit`` registrations whose expiry score is ``now`` or less."""
    return (CLIENTS_KEY, SEQ_KEY, DROPPED_KEY), (now, STREAM_PREFIX, limit)


SWEEP = """
-- Drop public channels whose stream expired (their whole backlog aged out), raising D.
-- KEYS: seq hash, dropped; ARGV: stream key prefix, candidate channel names...
local dropped = tonumber(redis.call('GET', KEYS[2]) or '0')
local top, gone = dropped, {}
for i = 2, #ARGV do
  local name = ARGV[i]
  local last = redis.call('HGET', KEYS[1], name)
  if last and redis.call('EXISTS', ARGV[1] .. name) == 0 then
    if tonumber(last) > top then top = tonumber(last) end
    redis.call('HDEL', KEYS[1], name)
    gone[#gone + 1] = name
  end
end
if top > dropped then redis.call('SET', KEYS[2], top) end
return gone
"""


def sweep_args(names: list[str]) -> Args:
    """SWEEP of the channels ``names`` (those whose stream still exists are kept)."""
    return (SEQ_KEY, DROPPED_KEY), (STREAM_PREFIX, *names)

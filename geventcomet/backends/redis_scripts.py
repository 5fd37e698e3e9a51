"""The Lua scripts of the Redis backend, and the key layout they share.

Keys: ``gc:epoch``, ``gc:seq`` (hash channel -> last seq), ``gc:s:CHANNEL``
(stream), ``gc:i:LEN:CHANNEL:KEY`` (idempotency; ``LEN`` is the channel's length, so
no two (channel, key) pairs share a key even though both may contain ``:``),
``gc:dropped`` (D: the highest last seq of a dropped channel, see
:mod:`geventcomet.backends`), ``gc:clients`` (sorted set: client -> expiry, s),
``gc:ikeys`` (sorted set: idempotency key name -> expiry, ms of Redis's clock: an
exact count of the remembered keys, pruned by each publish that carries a key), and
the pub/sub channel ``gc:wake``. Each script runs atomically in Redis.

Bounds: REGISTER adds a new client only while ``gc:clients`` holds fewer than
``max_clients_total`` (expired ones count until ``expire_idle`` removes them); a
refresh of a client it holds always works. PUBLISH with a new key is refused
(``duplicate`` = 2) while ``gc:ikeys`` holds ``max_idempotency_keys`` unexpired keys.
ZCARD is O(1), ZSCORE O(log N), and the prune O(log N + removed): cheap per call. Streams are never emptied and
kept: each expires (``PEXPIRE``) one second after its last event is too old, so a
channel without a stream has no backlog left.
"""

import random

PREFIX = "gc:"


def idempotency_redis_key(channel: str, key: str) -> str:
    """The Redis key remembering ``key`` on ``channel``; the length prefix keeps pairs apart."""
    return f"{PREFIX}i:{len(channel)}:{channel}:{key}"


def epoch_candidate() -> str:
    """A fresh epoch, offered with each call that may find Redis without one (after a restart).

    Not a secret, only unlikely to repeat: ``random`` (reseeded in forked children) is
    used instead of ``secrets``, whose ``getrandom`` syscall per publish showed in profiles.
    """
    return f"{random.getrandbits(32):08x}"


PUBLISH = """
-- KEYS: epoch, seq hash, stream, idempotency key (unused unless ARGV[9] == '1'), dropped,
--       key index
-- ARGV: channel, event prefix, event suffix, candidate epoch, backlog, age ms,
--       idempotency ttl ms, origin, has key, wake channel, max idempotency keys
-- Returns {epoch, seq, 0 new | 1 duplicate | 2 refused: too many keys}
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {epoch, tonumber(seen), 1} end
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
local cutoff = now - tonumber(ARGV[6])
for i = 1, 100 do
  local head = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= cutoff then break end
  redis.call('XDEL', KEYS[3], head[1][1])
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]) + 1000)
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], seq, 'PX', ARGV[7])
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[7]), KEYS[4])
end
redis.call('PUBLISH', ARGV[10], ARGV[1] .. '\\n' .. seq .. '\\n' .. epoch .. '\\n' .. ARGV[8] .. '\\n' .. encoded)
return {epoch, seq, 0}
"""

READ = """
-- KEYS: epoch, seq hash, stream, dropped
-- ARGV: channel, since ('' none), cursor epoch ('' none), candidate epoch, age ms,
--       page: max events, max bytes, first event free ('1')
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if last < 0 then
  local dropped = tonumber(redis.call('GET', KEYS[4]) or '0')
  if dropped > 0 then last = dropped + 1 else last = 0 end
end
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[5])
local first = last + 1
for i = 1, 100 do
  local head = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if #head == 0 then break end
  if tonumber(head[1][2][2]) >= cutoff then
    first = tonumber(string.match(head[1][1], '^(%d+)'))
    break
  end
  redis.call('XDEL', KEYS[3], head[1][1])
end
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

EXPIRE = """
-- KEYS: clients, seq hash, dropped; ARGV: now, stream key prefix, limit
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

"""What the Redis backend reports of itself for ``/stats``: counts and channel names (read-only)."""
from __future__ import annotations

import redis

from ..errors import BackendError
from . import redis_scripts as scripts


def counts(reader: redis.Redis, now_s: float) -> dict[str, int]:
    """Live registrations, channels and remembered Idempotency-Keys, in one round trip."""
    try:
        with reader.pipeline(transaction=False) as pipe:
            pipe.zcount(scripts.CLIENTS_KEY, now_s, "+inf")
            pipe.hlen(scripts.SEQ_KEY)
            # gc:ikeys is scored on the scripts' clock (Redis's); ours is close enough for a count
            pipe.zcount(scripts.IKEYS_KEY, int(now_s * 1000), "+inf")
            clients, channels, keys = pipe.execute()
    except redis.RedisError as exc:
        raise BackendError(f"Redis did not answer: {exc}") from None
    return {"clients": clients, "channels": channels, "idempotency_keys": keys}


def channel_names(reader: redis.Redis, limit: int) -> list[str]:
    """At most ``limit`` public channel names (private ``@ID`` channels left out)."""
    names = []
    try:
        for name, _ in reader.hscan_iter(scripts.SEQ_KEY, count=max(limit, 100)):
            if not name.startswith(b"@"):
                names.append(name.decode())
                if len(names) >= limit:
                    break
    except redis.RedisError as exc:
        raise BackendError(f"Redis did not answer: {exc}") from None
    return names

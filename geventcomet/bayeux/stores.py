"""Pick the Bayeux session store that lives where the backend lives (see :mod:`.sessions`)."""
from __future__ import annotations

import logging

from ..config import Config
from .sessions import MemorySessions, SessionStore

log = logging.getLogger(__name__)


def open_sessions(config: Config) -> SessionStore:
    """The session store for ``config.backend``'s kind: memory, SQLite, or Redis (``redis://``,
    ``rediss://``, ``unix://``, ``redis+sentinel://``: whatever the Redis backend's pools take)."""
    scheme = config.backend.split(":", 1)[0].lower()
    ttl_s = config.bayeux_session_ttl_s
    if scheme == "sqlite":
        from .sessions_sqlite import SQLiteSessions  # stdlib, but only opened when used
        return SQLiteSessions(config.backend, ttl_s)
    if scheme.startswith("redis") or scheme == "unix":
        from .sessions_redis import RedisSessions  # redis-py is an optional dependency
        return RedisSessions(config.backend, ttl_s)
    if scheme != "memory":
        log.warning("no Bayeux session store for a %r backend: sessions are kept in this process", scheme)
    return MemorySessions(ttl_s, knows_all_readers=scheme == "memory")

"""Pick the Bayeux session store that lives where the backend lives (see :mod:`.sessions`)."""
from __future__ import annotations

from ..config import Config
from .sessions import MemorySessions, SessionStore


def open_sessions(config: Config) -> SessionStore:
    """The session store for ``config.backend``'s kind: memory, sqlite or redis."""
    scheme = config.backend.split(":", 1)[0].lower()
    ttl_s = config.bayeux_session_ttl_s
    if scheme == "sqlite":
        from .sessions_sqlite import SQLiteSessions  # stdlib, but only opened when used
        return SQLiteSessions(config.backend, ttl_s)
    if scheme == "redis":
        from .sessions_redis import RedisSessions  # redis-py is an optional dependency
        return RedisSessions(config.backend, ttl_s)
    return MemorySessions(ttl_s)

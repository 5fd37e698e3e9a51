"""geventcomet.client: publish to and subscribe from a geventcomet server, from Python.

Blocking (:class:`Publisher`, :class:`Subscriber`: scripts, Django, Flask, Celery, threads,
and gevent programs, unchanged) on the standard library's ``http.client``; asyncio
(:class:`AsyncPublisher`, :class:`AsyncSubscriber`) on httpx, the ``client`` extra
(``pip install 'geventcomet[client]'``), imported on first use, so the blocking flavour
needs nothing installed. :class:`RedisPublisher` stores straight into the Redis a server
cluster uses (the ``redis`` package). Imports neither gevent nor the server. See
``docs/python-client.md``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backoff import Backoff
from .cursor_store import CursorStore, FileCursorStore
from .errors import AuthError, BadRequest, CometClientError, NotFound, PayloadTooLarge, Refused, Unavailable
from .events import Event, Gap
from .publisher import Publisher
from .subscriber import Subscriber

if TYPE_CHECKING:
    from .async_publisher import AsyncPublisher
    from .async_subscriber import AsyncSubscriber
    from .redis_publisher import RedisPublisher

__all__ = ["AsyncPublisher", "AsyncSubscriber", "AuthError", "Backoff", "BadRequest", "CometClientError",
           "CursorStore", "Event", "FileCursorStore", "Gap", "NotFound", "PayloadTooLarge", "Publisher",
           "RedisPublisher", "Refused", "Subscriber", "Unavailable"]


def __getattr__(name: str) -> Any:
    """The flavours that need another package are imported on first use: the asyncio ones
    need httpx, :class:`RedisPublisher` needs redis."""
    if name == "AsyncPublisher":
        from .async_publisher import AsyncPublisher
        return AsyncPublisher
    if name == "AsyncSubscriber":
        from .async_subscriber import AsyncSubscriber
        return AsyncSubscriber
    if name == "RedisPublisher":
        from .redis_publisher import RedisPublisher
        return RedisPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

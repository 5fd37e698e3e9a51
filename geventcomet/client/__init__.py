"""geventcomet.client: publish to and subscribe from a geventcomet server, from Python.

Blocking (:class:`Publisher`, :class:`Subscriber`: scripts, Django, Flask, Celery, threads,
and gevent programs, unchanged) and asyncio (:class:`AsyncPublisher`,
:class:`AsyncSubscriber`). :class:`RedisPublisher` stores straight into the Redis a server
cluster uses. Needs the ``client`` extra (``pip install 'geventcomet[client]'``: httpx);
imports neither gevent nor the server. See ``docs/python-client.md``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import compat  # noqa: F401  (first: it must run before httpx is imported)
from .backoff import Backoff
from .cursor_store import CursorStore, FileCursorStore
from .errors import AuthError, BadRequest, CometClientError, NotFound, PayloadTooLarge, Refused, Unavailable
from .events import Event, Gap
from .publisher import AsyncPublisher, Publisher
from .subscriber import AsyncSubscriber, Subscriber

if TYPE_CHECKING:
    from .redis_publisher import RedisPublisher

__all__ = ["AsyncPublisher", "AsyncSubscriber", "AuthError", "Backoff", "BadRequest", "CometClientError",
           "CursorStore", "Event", "FileCursorStore", "Gap", "NotFound", "PayloadTooLarge", "Publisher",
           "RedisPublisher", "Refused", "Subscriber", "Unavailable"]


def __getattr__(name: str) -> Any:
    """:class:`RedisPublisher` is imported on first use: it needs the ``redis`` package."""
    if name == "RedisPublisher":
        from .redis_publisher import RedisPublisher
        return RedisPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The backend contract, and ``open_backend(url)`` that picks an implementation by URL scheme.

A backend owns the truth: per-channel seq counters, bounded histories, the epoch
and client registrations. It does not hold waiting requests; the :class:`~geventcomet.hub.Hub`
does. A backend tells the hub about every publish, local or (for shared backends)
from another process, through the ``wake`` callback given to :meth:`Backend.start`.

Methods may block the calling greenlet on I/O (Redis, SQLite's thread) but never
the whole process. Everything a backend returns is already encoded for the wire.
"""
from __future__ import annotations

import abc
import importlib
from typing import Callable, NamedTuple

from ..config import Config


class ChannelRead(NamedTuple):
    """The answer to ``read``: the events after the client's position, and whether that is all.

    ``events`` are encoded event objects (``protocol.encode_event``) in seq order;
    ``last_seq`` is the position to hand back in the cursor; ``recovered`` is False
    when something between the client's position and ``last_seq`` can no longer be given.
    """

    events: list[bytes]
    last_seq: int
    recovered: bool
    epoch: str


class Backend(abc.ABC):
    """Where events and registrations live. One instance per server process."""

    #: Set by subclasses: a short alphanumeric id that changes whenever history is lost.
    epoch: str

    def start(self, wake: Callable[[str], int], wake_all: Callable[[], int]) -> None:
        """Begin calling ``wake(channel)`` after every publish to ``channel``, from any process.

        ``wake_all()`` wakes every local waiter: for when wake-ups may have been missed
        (a broker reconnect) or history changed under them (a new epoch).
        """
        self._wake = wake
        self._wake_all = wake_all

    @abc.abstractmethod
    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        """Store an event and return its seq; it is readable before this returns.

        Publishing again with the same ``idempotency_key`` (within the configured
        window) stores nothing and returns the first seq. Raises
        :class:`~geventcomet.errors.BackendError` when the write was not acknowledged.
        """

    @abc.abstractmethod
    def read(self, channel: str, since: int | None, epoch: str | None) -> ChannelRead:
        """Events of ``channel`` after ``since`` (None: none, start from now), decided by
        :func:`~geventcomet.protocol.plan_read`; ``epoch`` is the cursor's, if any."""

    @abc.abstractmethod
    def register(self, client: str) -> None:
        """Create or refresh a client registration (its idle clock restarts)."""

    @abc.abstractmethod
    def is_registered(self, client: str) -> bool:
        """True while the client's registration has not expired."""

    @abc.abstractmethod
    def expire_idle(self) -> list[str]:
        """Drop registrations idle longer than the TTL (and their private channels); return their ids."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """``{"clients": .., "channels": ..}`` for /stats."""

    @abc.abstractmethod
    def channel_names(self, limit: int) -> list[str]:
        """Up to ``limit`` public channel names, for the Notify page."""

    def close(self) -> None:
        """Release connections and threads; the backend is not used afterwards."""


#: URL scheme -> "module:Class", imported only when used so optional deps stay optional.
BACKENDS = {
    "memory": "geventcomet.backends.memory:MemoryBackend",
    "sqlite": "geventcomet.backends.sqlite:SQLiteBackend",
    "redis": "geventcomet.backends.redis:RedisBackend",
}


def open_backend(config: Config) -> Backend:
    """Build the backend named by ``config.backend`` (``memory``, ``sqlite:///..``, ``redis://..``)."""
    scheme = config.backend.split(":", 1)[0].lower()
    if scheme not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r}: use memory, sqlite:///PATH or redis://HOST:PORT/DB")
    module_name, class_name = BACKENDS[scheme].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"backend {scheme!r} is not available: {exc}") from None
    return getattr(module, class_name)(config)

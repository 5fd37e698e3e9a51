"""The backend contract, and ``open_backend(url)`` that picks an implementation by URL scheme.

A backend owns the truth: per-channel seq counters, bounded histories, the epoch
and client registrations. It does not hold waiting requests; the :class:`~geventcomet.hub.Hub`
does. A backend tells the hub about every publish, local or (for shared backends)
from another process, through the ``wake`` callback given to :meth:`Backend.start`.

Methods may block the calling greenlet on I/O (Redis, SQLite's thread) but never
the whole process. Everything a backend returns is already encoded for the wire.

Ids are never reused within an epoch, even when a channel is dropped (its backlog
aged out, or its client's registration expired) and created again: a backend
remembers one number per epoch, D, the highest last seq of any channel it dropped.
A channel created while D > 0 starts at D + 2, and a channel that does not exist
reads as ``last = D + 1``: a cursor from an old life of the channel (at most D) is
then below ``first - 1`` and gets ``recovered: false``, while a subscriber parked on
the absent channel (at D + 1) gets the new events with ``recovered: true``.
"""
from __future__ import annotations

import abc
import importlib
import secrets
from typing import Callable, ClassVar, Iterable, NamedTuple, cast

from ..config import Config
from ..security import mask_credentials


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


class Page(NamedTuple):
    """How much one read may return: at most ``events`` events of at most ``size`` bytes in all.

    ``first_free``: the first event is taken whatever its size, so that a reply always
    carries at least one event when there is one and a client always progresses.
    """

    events: int
    size: int
    first_free: bool = True


#: A page that takes nothing: the read only reports the channel's position.
EMPTY_PAGE = Page(0, 0, False)


def fill_page(events: Iterable[bytes], page: Page) -> list[bytes]:
    """The leading ``events`` that fit in ``page`` (see :class:`Page`)."""
    taken: list[bytes] = []
    size = 0
    for event in events:
        if len(taken) >= page.events:
            break
        size += len(event)
        if size > page.size and (taken or not page.first_free):
            break
        taken.append(event)
    return taken


def batch_key(key: str | None, index: int) -> str | None:
    """The key event ``index`` of a batch is remembered under: a newline cannot occur in an
    ``Idempotency-Key`` header, so it never equals the key of a single notify."""
    return None if key is None else f"{key}\n{index}"


def absent_last(dropped: int) -> int:
    """The last seq a channel that does not exist reads as, given D (see the module docstring)."""
    return dropped + 1 if dropped > 0 else 0


class Backend(abc.ABC):
    """Where events and registrations live. One instance per server process."""

    #: Set by subclasses: a short alphanumeric id that changes whenever history is lost.
    epoch: str
    #: True when several processes may use it at once, each waking its own waiters on every
    #: publish from any of them (``--workers N`` and gunicorn need that); False by default.
    shared: ClassVar[bool] = False
    _config: Config
    #: The client-id secret this backend keeps (see :meth:`client_secret`), once known.
    _kept_client_secret: bytes | None = None

    def start(self, wake: Callable[[str], int], wake_all: Callable[[], int],
              waiter_count: Callable[[str], int] = lambda channel: 0) -> None:
        """Begin calling ``wake(channel)`` after every publish to ``channel``, from any process.

        ``wake_all()`` wakes every local waiter: for when wake-ups may have been missed
        (a broker reconnect) or history changed under them (a new epoch).
        ``waiter_count(channel)`` says how many local requests wait on a channel: one
        that somebody waits on is never dropped as idle.
        """
        self._wake = wake
        self._wake_all = wake_all
        self._waiter_count = waiter_count

    def full_page(self) -> Page:
        """The most one reply may carry: ``max_reply_events`` events, ``max_reply_bytes`` bytes."""
        return Page(self._config.max_reply_events, self._config.max_reply_bytes)

    def client_secret(self) -> bytes:
        """The key that signs client ids (:mod:`geventcomet.clientid`): ``--client-secret``
        when set, else one this backend keeps, the same for every process that shares it."""
        if self._config.client_secret:
            return self._config.client_secret.encode()
        if self._kept_client_secret is None:
            self._kept_client_secret = self.keep_client_secret()
        return self._kept_client_secret

    def keep_client_secret(self) -> bytes:
        """The secret this backend keeps when none is configured: by default a random one
        for this process (a memory backend's ids die with it anyway); durable and shared
        backends store one, so a restart and every worker agree."""
        return secrets.token_urlsafe(32).encode()

    def health(self) -> str | None:
        """None while the backend works; else why it does not (for the readiness check).

        Cheap: no round trip to a server, so it may be called on every readiness probe.
        """
        return None

    @abc.abstractmethod
    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        """Store an event and return its seq; it is readable before this returns.

        Publishing again with the same ``idempotency_key`` (within the configured
        window) stores nothing and returns the first seq. Raises
        :class:`~geventcomet.errors.BackendError` when the write was not acknowledged.
        """

    def publish_many(self, events: list[tuple[str, str]], idempotency_key: str | None = None) -> list[int]:
        """Store ``events`` (``(channel, data_json)`` pairs) in order and return their seqs: each
        channel's events get consecutive seqs, in the order given.

        All or nothing: the three backends store every event or none (a raised
        :class:`~geventcomet.errors.BackendError` means none was stored). ``idempotency_key``
        covers the whole batch: event ``i`` is remembered under :func:`batch_key` ``(key, i)``
        on its channel, so a retry stores nothing and returns the same seqs. This default,
        for other backends, publishes one at a time and is NOT all or nothing.
        """
        return [self.publish(channel, data_json, batch_key(idempotency_key, index))
                for index, (channel, data_json) in enumerate(events)]

    @abc.abstractmethod
    def read(self, channel: str, since: int | None, epoch: str | None, page: Page | None = None) -> ChannelRead:
        """Events of ``channel`` after ``since`` (None: none, start from now), decided by
        :func:`~geventcomet.protocol.plan_read`; ``epoch`` is the cursor's, if any.

        At most ``page`` (default :meth:`full_page`) is returned; when the events owed do
        not fit, ``last_seq`` is the seq of the last one returned, so a cursor built from
        it resumes exactly there (events of one channel are contiguous seqs).
        """

    @abc.abstractmethod
    def register(self, client: str) -> None:
        """Create or refresh a client registration (its idle clock restarts)."""

    @abc.abstractmethod
    def is_registered(self, client: str) -> bool:
        """True while the client's registration has not expired."""

    @abc.abstractmethod
    def expire_idle(self) -> list[str]:
        """Housekeeping, called periodically: drop registrations idle longer than the TTL (and
        their private channels), and channels whose backlog aged out that nobody waits on.
        Returns the ids of the expired clients."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """``{"clients": .., "channels": .., ...}``: what clients made the backend hold, for /stats."""

    @abc.abstractmethod
    def channel_names(self, limit: int) -> list[str]:
        """Up to ``limit`` public channel names, for the Notify page."""

    def close(self) -> None:
        """Release connections and threads; the backend is not used afterwards."""

    @classmethod
    def check_url(cls, url: str) -> None:
        """Raise ValueError (one line, saying what to write) if ``url`` cannot name this backend."""


#: URL scheme -> "module:Class", imported only when used so optional deps stay optional.
BACKENDS = {
    "memory": "geventcomet.backends.memory:MemoryBackend",
    "sqlite": "geventcomet.backends.sqlite:SQLiteBackend",
    "redis": "geventcomet.backends.redis:RedisBackend",
    "redis+sentinel": "geventcomet.backends.redis:RedisBackend",
}

#: URL scheme -> (the optional package it needs, the extra that installs it).
OPTIONAL_PACKAGES = {"redis": ("redis", "redis"), "redis+sentinel": ("redis", "redis")}


def backend_class(url: str) -> "type[Backend]":
    """The class that serves ``url`` (``memory``, ``sqlite:///..``, ``redis://..``), not yet built;
    ValueError (one line) for a URL no backend takes or whose package is not installed."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in BACKENDS:
        raise ValueError(f"unknown backend {mask_credentials(url)!r}: "
                         "use memory, sqlite:///PATH, redis://HOST:PORT/DB or "
                         "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME/DB")
    module_name, class_name = BACKENDS[scheme].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        extra = OPTIONAL_PACKAGES.get(scheme)
        if extra is not None and exc.name == extra[0]:
            raise ValueError(f"the {scheme} backend needs the {extra[0]!r} package: "
                             f"pip install 'geventcomet[{extra[1]}]'") from None
        raise ValueError(f"backend {scheme!r} is not available: {exc}") from None
    found: type[Backend] = getattr(module, class_name)
    found.check_url(url)
    return found


def open_backend(config: Config) -> Backend:
    """Build the backend named by ``config.backend`` (``memory``, ``sqlite:///..``, ``redis://..``)."""
    build = cast("Callable[[Config], Backend]", backend_class(config.backend))  # every backend takes its Config
    return build(config)

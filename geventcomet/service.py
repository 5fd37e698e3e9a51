"""The Comet service: subscribe, wait, publish, with no HTTP.

:class:`CometService` owns the :class:`~geventcomet.hub.Hub` (the parked requests),
the backend (the events), the counters and the limits. Every transport (the
long-poll in :mod:`geventcomet.poll`, the SSE stream in :mod:`geventcomet.stream`)
is a thin adapter over it, and tests drive it without a socket.

Errors are :class:`~geventcomet.errors.CometError` (each with its HTTP status): a backend
failure is always :class:`~geventcomet.errors.Unavailable` (503), a bound of the backend a
503 with its own message and ``Retry-After: 10``.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict
from typing import Callable, Mapping, cast

import gevent
from gevent.event import Event

from . import clientid, metrics_record, misbehaviour, protocol
from .backends import Backend
from .config import FD_RESERVE, Config
from .counters import Published, Stats, StreamCounts, fd_limit, rss_bytes
from .errors import AuthRefused, BackendError, CometError, LimitReached, NotFound, Unavailable
from .hub import Hub
from .longpoll import PollResult, hold
from .peer import Peer

log = logging.getLogger(__name__)

#: Retry-After of a request refused by a bound of the backend (channels, clients, keys).
LIMIT_RETRY_S = 10
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Count watches (the ``/stats?waiting=N`` test hook) held at once; more get 503.
MAX_COUNT_WATCHES = 8

#: A subscription: the client id, its channels (the private one last), a position per channel.
Subscription = tuple[str, tuple[str, ...], dict[str, "int | None"]]


def unavailable(exc: BackendError) -> Unavailable:
    """The 503 for a backend failure: a bound (freed as state ages out) says which one."""
    metrics_record.count_backend_error()
    if isinstance(exc, LimitReached):
        return Unavailable(str(exc), retry_after_s=LIMIT_RETRY_S)
    return Unavailable(f"backend unavailable: {exc}")


def client_refused(reason: str) -> AuthRefused:
    """403 ``auth: "client"`` for a request claiming a client id it does not prove."""
    misbehaviour.note("unproven client id", reason)  # never the id: a minted one is a credential
    return AuthRefused("client", f"forbidden: {reason}")


class CometService:
    """Channels, clients and waiting, for every transport. One per server process."""

    def __init__(self, config: Config, backend: Backend, hub: Hub | None = None) -> None:
        self.config = config
        self.backend = backend
        self.hub = hub or Hub()
        self.stats = Stats()
        self.streams = StreamCounts()
        self.started = time.monotonic()
        fd_cap = max(fd_limit() - FD_RESERVE, 1)  # each held request holds a socket
        if config.max_waiting > fd_cap:
            log.warning("max_waiting %d is above the open-file limit less %d; using %d",
                        config.max_waiting, FD_RESERVE, fd_cap)
        #: Requests held at once; more are refused (503) by :meth:`refuse_if_full`.
        self.max_waiting = min(config.max_waiting or fd_cap, fd_cap)
        #: Seconds a client told to reconnect at shutdown waits: 1 when the whole server
        #: stops, 0 when a restart hands this process's clients to others already listening.
        self.reconnect_after_s = 1
        #: More numbers for :meth:`snapshot`: each callable returns a dict merged into it
        #: (the HTTP server adds its connection counts here).
        self.stats_sources: list[Callable[[], dict]] = []
        #: Called after every stored publish as ``hook(channel, seq, data_json)``, in order (the
        #: Bayeux transport appends the event to its wildcard feeds); a hook may raise CometError.
        self.publish_hooks: list[Callable[[str, int, str], None]] = []
        #: Set when a graceful stop begins: /readyz answers 503 while requests are still served.
        self.draining = False
        #: Mints and checks client ids: a named id must be one this backend's secret signed.
        self.client_ids = clientid.ClientIds(backend.client_secret())
        self._count_watches = 0
        self._stopping = Event()
        self.backend.start(self.hub.wake, self.hub.wake_all, self.hub.waiter_count)  # a waited-on channel is kept
        self._housekeeper = gevent.spawn(self._expire_registrations)

    def close(self) -> None:
        """Stop housekeeping and release the backend."""
        self._stopping.set()
        self._housekeeper.join(timeout=1)
        self.backend.close()

    # -- subscribing and waiting ---------------------------------------------

    def held(self) -> int:
        """Requests held now: parked polls and streams, and open streams that are writing."""
        streams = self.streams
        return self.hub.waiting + streams.open - streams.parked

    def refuse_if_full(self) -> None:
        """503 + Retry-After when ``max_waiting`` requests are held already."""
        if self.held() >= self.max_waiting:
            raise Unavailable(f"server is at capacity ({self.max_waiting} waiting requests); retry later")

    def parse_register(self, query: str, *, resumable: bool = False,
                       last_event_id: str | None = None) -> protocol.RegisterRequest:
        """A register query validated against this server's limits (see ``protocol.parse_register``)."""
        config = self.config
        return protocol.parse_register(query, default_timeout_s=config.timeout_s, max_timeout_s=config.max_timeout_s,
                                       max_channels=config.max_channels, resumable=resumable,
                                       last_event_id=last_event_id)

    def subscribe(self, req: protocol.RegisterRequest, sub: str | None = None) -> Subscription:
        """Register (or refresh) the request's client (:meth:`choose_client`; ``sub``: a verified
        token's subject); its channels are the request's and its private one, at the cursor."""
        client = self.choose_client(req, sub)
        channels = (*req.channels, protocol.private_channel(client))
        self._backend(self.backend.register, client)
        positions = req.cursor.positions
        return client, channels, {channel: positions.get(channel) for channel in channels}

    def choose_client(self, req: protocol.RegisterRequest, sub: str | None = None) -> str:
        """The client id a request proves: ``sub`` (a verified token's subject) when given,
        else the id it names if this server minted it, else a fresh one. A request naming
        an id it does not prove, or whose cursor names ``@ID`` of an ID that does not verify,
        is refused (403 ``auth: "client"``): a chosen id is no credential. Only the chosen
        client's private channel is ever read, whatever else the cursor names."""
        named = req.client
        if sub is not None:
            if named is not None and named != sub:
                raise client_refused("client id differs from the token's sub")
            if not protocol.CLIENT_RE.match(sub):  # it names a channel and goes into cursors
                raise client_refused("the token's sub is not a valid client id (1 to 64 letters, digits, _ or -)")
            client = sub
        elif named is None:
            client = self.client_ids.mint()
        elif self.client_ids.verify(named):
            client = named
        else:
            raise client_refused("client id not issued by this server: register without client= "
                                 "(and without the old cursor's private position)")
        own = protocol.PRIVATE_PREFIX + client
        for channel in req.cursor.positions:  # a few entries; only the client's own is ever read
            if channel[0] == protocol.PRIVATE_PREFIX and channel != own and not self.client_ids.verify(channel[1:]):
                raise client_refused("the cursor names a private channel of a client id not issued by this server")
        return client

    def refresh(self, client: str) -> None:
        """Keep ``client``'s registration alive (activity on a stream counts as a poll)."""
        try:
            self.backend.register(client)
        except BackendError as exc:
            raise unavailable(exc) from None

    def wait(self, channels: tuple[str, ...], positions: Mapping[str, int | None], epoch: str | None,
             timeout_s: float, sock: Peer | socket.socket | None) -> PollResult:
        """The events after ``positions`` now, or when a publish brings some, or none at
        ``timeout_s``; :class:`~geventcomet.errors.ClientGone` if ``sock`` hangs up first."""
        try:
            return hold(self.hub, self.backend, channels, positions, epoch, timeout_s, sock)
        except BackendError as exc:
            raise unavailable(exc) from None

    # -- publishing ----------------------------------------------------------

    def publish(self, req: protocol.NotifyRequest, idempotency_key: str | None = None) -> Published:
        """Store the event and wake its channel's waiters (via the backend's wake-up)."""
        channel, = self._targets([req], idempotency_key)
        woken = self.hub.waiter_count(channel)
        started = time.perf_counter()
        seq = self._backend(self.backend.publish, channel, req.data_json, idempotency_key)
        metrics_record.observe_backend_publish(time.perf_counter() - started)
        self.stats.published += 1
        for hook in self.publish_hooks:
            hook(channel, seq, req.data_json)
        shown = "@***" if channel[0] == "@" else channel  # @ID names a client id: a credential
        log.debug("published %s#%d to %d waiters", shown, seq, woken)
        return Published(channel, seq, woken)

    def publish_many(self, reqs: list[protocol.NotifyRequest], idempotency_key: str | None = None) -> list[Published]:
        """Store a batch in order, all or nothing (:meth:`Backend.publish_many`), under one key."""
        channels = self._targets(reqs, idempotency_key)
        woken = {channel: self.hub.waiter_count(channel) for channel in channels}
        events = [(channel, req.data_json) for channel, req in zip(channels, reqs)]
        seqs = self._backend(self.backend.publish_many, events, idempotency_key)
        self.stats.published += len(seqs)
        for hook in self.publish_hooks:
            for channel, req, seq in zip(channels, reqs, seqs):
                hook(channel, seq, req.data_json)
        return [Published(channel, seq, woken[channel]) for channel, seq in zip(channels, seqs)]

    def _targets(self, reqs: list[protocol.NotifyRequest], key: str | None) -> list[str]:
        """Each notify's channel, or its client's private one (404 if not registered); 400 for a long key."""
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise CometError(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
        for client in (req.client for req in reqs if req.client is not None):
            if not self._backend(self.backend.is_registered, client):
                raise NotFound(f"no registered client {client!r} (never registered, or expired)")
        return [protocol.private_channel(req.client) if req.client else cast(str, req.channel) for req in reqs]

    # -- looking on ----------------------------------------------------------

    def channels(self, limit: int = 200) -> list[tuple[str, int]]:
        """Public channels (the backend's first ``limit``, and every one waited on), with waiters."""
        waiting = self.hub.channel_waiters()
        names = set(self._backend(self.backend.channel_names, limit)) | {c for c in waiting if c[0] != "@"}
        return [(name, waiting.get(name, 0)) for name in sorted(names)]

    def unready_reason(self) -> str | None:
        """Why this process should get no new clients now (draining, backend unhealthy), or None."""
        return "draining: the server is stopping" if self.hub.closing or self.draining else self.backend.health()

    def wait_for_waiting(self, count: int, timeout_s: float) -> None:
        """Block until ``count`` requests are parked, or ``timeout_s`` (a test instrument:
        woken once when the count is reached, not on every park and unpark)."""
        if self.hub.waiting >= count:
            return
        if self._count_watches >= MAX_COUNT_WATCHES:
            raise Unavailable(f"at most {MAX_COUNT_WATCHES} /stats?waiting requests at once")
        self._count_watches += 1
        reached = self.hub.watch_count(count)
        try:
            reached.wait(timeout_s)
        finally:
            self.hub.unwatch_count(count)
            self._count_watches -= 1

    def snapshot(self) -> dict:
        """The numbers ``/stats`` serves."""
        counts = self._backend(self.backend.counts)
        fanout = self.hub.last_fanout
        extra: dict = {}
        for source in self.stats_sources:
            extra.update(source())
        return {**extra, "waiting": self.hub.waiting, "held": self.held(), **counts, **asdict(self.stats),
                "streams": self.streams.open, "streams_opened": self.streams.opened,
                "misbehaviour": dict(misbehaviour.clients.counts),
                "last_fanout": fanout and {"waiters": fanout.waiters, "started_unix": fanout.started,
                                           "ms": round((fanout.ended - fanout.started) * 1000, 3)},
                "uptime_s": round(time.monotonic() - self.started, 3), "rss_bytes": rss_bytes(),
                "max_waiting": self.max_waiting, "epoch": self.backend.epoch}

    # -- internals -----------------------------------------------------------

    def _backend(self, method: Callable, *args: object):  # noqa: ANN202 (the method's own result)
        try:
            return method(*args)
        except BackendError as exc:
            raise unavailable(exc) from None

    def _expire_registrations(self) -> None:
        period = min(self.config.client_ttl_s / 4, 30.0)
        while not self._stopping.wait(period):
            try:
                gone = self.backend.expire_idle()
            except BackendError as exc:
                log.warning("could not expire registrations: %s", exc)
                continue
            if gone:
                log.debug("expired %d idle client registrations", len(gone))

"""Bayeux 1.0 (CometD, Faye) over the service: ``/bayeux`` and every path under it.

The long-polling subset real clients use (``docs/bayeux.md``): a request is a batch of
messages (:mod:`.messages`, over HTTP by :mod:`.transport`); the meta channels and
client publishes are :mod:`.meta`, the held ``/meta/connect`` is :mod:`.connect`;
channels, wildcards and their feeds are :mod:`.channels`; sessions live where the
backend lives (:mod:`.sessions`, :mod:`.stores`).

A batch is handled in order, except that its ``/meta/connect`` (one per request) is
held last, so that a subscribe or publish sent with it takes effect first; the
deliveries then come before the connect's reply, as CometD's server sends them.
"""
from __future__ import annotations

import logging
import time
import weakref
from dataclasses import asdict

import gevent

from .. import misbehaviour, protocol
from ..access import Access
from ..errors import BackendError, CometError
from ..replies import Headers, Reply
from ..service import CometService
from . import channels
from .connect import BayeuxStats, Connected, ConnectHandler
from .messages import Message, error, unknown_client
from .meta import MetaHandler
from .sessions import SessionStore
from .stores import open_sessions
from .transport import encode_reply, read_request

__all__ = ["BayeuxEndpoint"]

log = logging.getLogger(__name__)


class BayeuxEndpoint:
    """Answers ``POST``/``GET`` on ``/bayeux`` and ``/bayeux/*``."""

    def __init__(self, service: CometService, access: Access, sessions: SessionStore | None = None) -> None:
        self.service = service
        self.access = access
        config = service.config
        #: Where sessions live (tests drive its ``clock``).
        self.sessions = sessions or open_sessions(config)
        self.stats = BayeuxStats()
        self.connects = ConnectHandler(service, access, self.sessions, self.stats)
        self.meta = MetaHandler(service, access, self.sessions, int(self.connects.default_hold_s * 1000))
        self._sweep_every_s = max(config.bayeux_session_ttl_s / 4, 0.05)
        self._next_sweep = 0.0
        self._housekeeper: gevent.Greenlet | None = None
        service.stats_sources.append(self.snapshot)

    def close(self) -> None:
        """Stop sweeping and release the session store (the app's ``close`` should call it)."""
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
        self.sessions.close()

    def snapshot(self) -> dict:
        """``bayeux`` in ``/stats``: this process's counters and the sessions held (if known)."""
        return {"bayeux": {**asdict(self.stats), "sessions": self.sessions.count()}}

    def handle(self, environ: dict) -> Reply:
        """One Bayeux request: a JSON array of messages in, a JSON array of replies out."""
        try:
            batch, callback = read_request(environ, self.service.config.max_body_bytes)
        except CometError as exc:
            misbehaviour.note("bayeux-bad-request", exc.message[:100])
            raise
        if callback is not None:
            self.stats.callback_polls += 1
        if self._housekeeper is None and self.sessions.sweeps:
            self._housekeeper = gevent.spawn(_housekeep, weakref.ref(self), self._sweep_every_s)
        self._sweep()
        parts: list[bytes] = []
        connect: Message | None = None
        for message in batch:
            if message["channel"] == "/meta/connect" and connect is None:
                connect = message
            elif message["channel"] == "/meta/connect":
                parts.append(_encode(error(message, 400, "", "one /meta/connect per request")))
            else:
                parts.append(_encode(self._one(message, environ)))
        headers: Headers = ()
        if connect is not None:
            answer = self._connect(connect, environ)
            parts.extend(answer.deliveries)
            parts.append(answer.reply if isinstance(answer.reply, bytes) else _encode(answer.reply))
            if answer.close:
                headers = (("Connection", "close"),)
        return encode_reply(parts, callback, headers)

    def _one(self, message: Message, environ: dict) -> Message:
        channel = message["channel"]
        meta = self.meta
        if channel == "/meta/handshake":
            self.stats.handshakes += 1
            return meta.handshake(message)
        session = self._session(message)
        if session is None:
            self.stats.unknown_clients += 1
            return unknown_client(message)
        if channel == "/meta/subscribe":
            return meta.subscribe(message, session, environ)
        if channel == "/meta/unsubscribe":
            return meta.unsubscribe(message, session)
        if channel == "/meta/disconnect":
            return meta.disconnect(message, session)
        if channels.is_meta(channel):
            return error(message, 400, "", f"unknown meta channel {channel[:40]}")
        self.stats.published += 1
        return meta.publish(message, session, environ)

    def _connect(self, message: Message, environ: dict) -> Connected:
        session = self._session(message)
        if session is None:
            self.stats.unknown_clients += 1
            return Connected(unknown_client(message), [])
        return self.connects.connect(message, session, environ)

    def _session(self, message: Message):  # noqa: ANN202 (Session | None)
        client_id = message.get("clientId")
        if not isinstance(client_id, str) or not protocol.CLIENT_RE.match(client_id):
            return None  # not one this server could have made (``secrets.token_urlsafe``): never looked up
        return self.sessions.load(client_id)

    def _sweep(self) -> None:
        """Drop idle sessions now and then (on requests, and by the housekeeper when idle)."""
        if time.monotonic() >= self._next_sweep:
            self.sweep_now()

    def sweep_now(self) -> None:
        """Drop the sessions idle past the TTL (never a timer per session)."""
        self._next_sweep = time.monotonic() + self._sweep_every_s
        try:
            self.stats.expired += self.sessions.expire()
        except BackendError as exc:
            log.warning("could not expire Bayeux sessions: %s", exc)


def _housekeep(endpoint: "weakref.ref[BayeuxEndpoint]", period_s: float) -> None:
    """Sweep idle sessions every ``period_s`` while the endpoint lives (a weak reference:
    an app dropped without ``close()`` does not keep its sessions, nor this loop, alive)."""
    while True:
        gevent.sleep(period_s)  # the period of a housekeeping timer, as the service's own
        alive = endpoint()
        if alive is None:
            return
        alive.sweep_now()
        del alive


def _encode(message: Message) -> bytes:
    return protocol.json_bytes(message)

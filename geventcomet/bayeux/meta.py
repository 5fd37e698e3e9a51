"""The Bayeux meta channels and client publishes, over the service and a session store.

Each method takes one parsed message (and the HTTP environ, for authorization) and
returns its reply; none holds a request (the held ``/meta/connect`` is :mod:`.connect`).

- ``/meta/handshake``: a new session, ``clientId`` of 144 random bits (``secrets``), while
  the store holds fewer than ``--max-clients-total`` (memory, SQLite; Redis is not counted);
  ``ext.token``, when sent, must verify (it is kept with the session and re-checked by
  :class:`~geventcomet.access.Access` on every subscribe and publish).
- ``/meta/subscribe``: a name, a pattern or a list, at most ``--max-channels`` in a session
  (a connect reads one feed per subscription); each starts *now*: its feed's
  position is read from the backend and stored with the session, so nothing published
  after the reply can be missed, whichever worker serves the next connect.
- A publish is ``service.publish`` to the channel (``/register``, ``/stream`` and every
  Bayeux subscriber see it), then the same event appended to its wildcard feeds
  (:func:`~.channels.feeds_of_publish`). ``/service/**`` is acknowledged and not stored.
- A change of subscriptions, and a disconnect, publish to the session's control channel
  (:func:`~.channels.control_channel`), which a held connect listens on in any process:
  it returns and the client's next connect reads the new feeds.
"""
from __future__ import annotations

import secrets

from .. import protocol
from ..access import Access
from ..backends import EMPTY_PAGE
from ..errors import AuthRefused, BackendError
from ..service import LIMIT_RETRY_S, CometService, unavailable
from . import channels
from .channels import ChannelError
from .messages import (
    CONNECTION_TYPES,
    VERSION,
    Message,
    advice,
    check_data,
    error,
    ext_token,
    reply,
    subscriptions_of,
    unknown_client,
)
from .sessions import Session, SessionStore


class MetaHandler:
    """Handshake, subscribe, unsubscribe, disconnect and publish for one server process."""

    def __init__(self, service: CometService, access: Access, sessions: SessionStore, hold_ms: int) -> None:
        self.service = service
        self.access = access
        self.sessions = sessions
        self.hold_ms = hold_ms
        # Every publish (POST /notify too) reaches the wildcard feeds when the service calls
        # publish hooks; until it does, only Bayeux publishes do.
        hooks = getattr(service, "publish_hooks", None)
        self.feeds_by_hook = isinstance(hooks, list)
        if isinstance(hooks, list):
            hooks.append(self.append_to_feeds)

    def handshake(self, message: Message) -> Message:
        types = message.get("supportedConnectionTypes")
        if isinstance(types, list) and not set(map(str, types)) & set(CONNECTION_TYPES):
            return error(message, 400, "", "no common connection type", supportedConnectionTypes=CONNECTION_TYPES,
                         advice={"reconnect": "none"})
        held = self.sessions.count()
        if held is not None and held >= self.service.config.max_clients_total:
            return error(message, 503, "", "too many sessions (--max-clients-total); retry later",
                         advice={"reconnect": "handshake", "interval": LIMIT_RETRY_S * 1000})
        token = ext_token(message)
        if token is not None and self.access.tokens.enabled:
            try:
                self.access.tokens.claims(token)
            except AuthRefused as exc:
                return error(message, 403, "", exc.message, advice={"reconnect": "none"})
        client_id = secrets.token_urlsafe(18)
        control = channels.control_channel(client_id)
        read = self._read(control, None)
        self.sessions.create(Session(client_id, positions={control: read.last_seq}, epoch=read.epoch, token=token))
        return reply(message, True, version=VERSION, supportedConnectionTypes=CONNECTION_TYPES,
                     clientId=client_id, advice=advice(self.hold_ms))

    def subscribe(self, message: Message, session: Session, environ: dict) -> Message:
        names = subscriptions_of(message)
        if names is None:
            return error(message, 400, "", "subscribe without subscription")
        try:
            checked = [channels.check_subscription(name) for name in names]
        except ChannelError as exc:
            return error(message, 405, "", str(exc))
        if any(channels.is_meta(name) for name in checked):
            return error(message, 403, "", "meta channels cannot be subscribed to")
        wanted = [name for name in checked if not channels.is_service(name)]  # the server's, never delivered
        limit = self.service.config.max_channels
        if len({*session.subscriptions, *wanted}) > limit:  # a connect reads one feed per subscription
            return error(message, 400, "", f"more than {limit} subscriptions in one session (--max-channels)")
        refused = self._check_read(message, session, environ, wanted)
        if refused is not None:
            return refused
        positions: dict[str, int] = {}
        epoch = session.epoch
        for name in wanted:
            feed = channels.feed_of(name)
            read = self._read(feed, epoch)
            positions[feed], epoch = read.last_seq, epoch or read.epoch
        # Wake a held connect first, and store the wake-up's position with the subscription:
        # a connect that loads the new subscriptions does not return at once for it.
        positions[channels.control_channel(session.client_id)] = self.wake(session.client_id)
        if not self.sessions.subscribe(session.client_id, positions, epoch, wanted):
            return self._gone(message)
        return reply(message, True)

    def unsubscribe(self, message: Message, session: Session) -> Message:
        names = subscriptions_of(message)
        if names is None or not all(isinstance(name, str) for name in names):
            return error(message, 400, "", "unsubscribe without subscription")
        remaining = [name for name in session.subscriptions if name not in names]
        kept = {channels.feed_of(name) for name in remaining}
        dropped = [channels.feed_of(name) for name in names if channels.feed_of(name) not in kept]
        if not self.sessions.unsubscribe(session.client_id, list(names), dropped):
            return self._gone(message)
        self.wake(session.client_id)
        return reply(message, True)

    def disconnect(self, message: Message, session: Session) -> Message:
        self.sessions.delete(session.client_id)
        self.wake(session.client_id)  # a held connect of it returns now
        return reply(message, True)

    def publish(self, message: Message, session: Session, environ: dict) -> Message:
        channel = message["channel"]
        try:
            channels.check_name(channel)
        except ChannelError as exc:
            return error(message, 405, "", str(exc))
        if "data" not in message:
            return error(message, 400, "", "a publish needs data")
        refused = check_data(message["data"])
        if refused is not None:
            return error(message, 400, "", refused)
        if channels.is_service(channel):
            return reply(message, True)  # to the server only: nothing here listens
        token = ext_token(message) or session.token
        access = self.access
        try:
            if not access.is_admin_token(token):
                access.check_publish(access.publisher(token), channel)
        except AuthRefused as exc:
            return error(message, 403, "", exc.message)
        data_json = protocol.encode_json(message["data"])
        sent = self.service.publish(protocol.NotifyRequest(channel, None, data_json))
        if not self.feeds_by_hook:
            self.append_to_feeds(channel, sent.seq, data_json)
        return reply(message, True)

    def append_to_feeds(self, channel: str, seq: int, data_json: str) -> None:
        """Append a publish to ``channel`` to its wildcard feeds (a ``/``-channel only)."""
        if channel[:1] != "/":
            return  # not a Bayeux name (a private channel, a feed, a control channel)
        feeds = self.sessions.wildcard_feeds(channel)
        if not feeds:
            return  # no session subscribes to a pattern that matches it (see .sessions)
        event_json = protocol.encode_event(channel, seq, data_json).decode()
        # Keyed by the event: a notify retried with its Idempotency-Key (its first try stored,
        # or failed before its feeds) calls this again, and must not append the event twice.
        key = f"bx:{channel}#{seq}"
        backend = self.service.backend
        try:
            if self.sessions.knows_all_readers:
                # The feeds may differ on a retry (a pattern subscribed meanwhile): a key per feed.
                for feed in feeds:
                    backend.publish(feed, event_json, key)
            else:  # every matching feed, the same list on a retry: one batch, all or none
                backend.publish_many([(feed, event_json) for feed in feeds], key)
        except BackendError as exc:
            raise unavailable(exc) from None

    def wake(self, client_id: str) -> int:
        """Make a held connect of this session return, in whichever process holds it; the
        wake-up's position in the session's control channel."""
        try:
            return self.service.backend.publish(channels.control_channel(client_id), "0")
        except BackendError as exc:
            raise unavailable(exc) from None

    def _check_read(self, message: Message, session: Session, environ: dict, names: list[str]) -> Message | None:
        if not self.access.active or not names:
            return None
        token = ext_token(message) or session.token
        auth_environ = {**environ, "HTTP_AUTHORIZATION": f"Bearer {token}"} if token else environ
        try:
            self.access.check_read(auth_environ, tuple(names), None)
        except AuthRefused as exc:
            return error(message, 403, "", exc.message)
        return None

    def _read(self, feed: str, epoch: str | None):  # noqa: ANN202 (a backend ChannelRead)
        try:
            return self.service.backend.read(feed, None, epoch, EMPTY_PAGE)
        except BackendError as exc:
            raise unavailable(exc) from None

    @staticmethod
    def _gone(message: Message) -> Message:
        return unknown_client(message)

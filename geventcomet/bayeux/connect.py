"""``/meta/connect``: held like a long-poll, answered with the session's deliveries.

The connect reads the session's feeds (one per subscription, see :mod:`.channels`) and
its control channel from the stored positions, through ``service.wait``: the same
park-before-read hold as ``GET /register``, woken through the hub by any process's
publish. It answers at once when there is something to deliver, when the session's
subscriptions change (the control channel), at the hold time, or when the server stops.
Then the positions reached are saved with the session, so the next connect, on any
worker, starts exactly there: nothing published between two connects is lost.

Hold time: a session's first connect is answered at once (CometD's server does the
same, and both clients count themselves connected only then); later ones hold for the
client's ``advice.timeout`` when it sends one (``0``: at once), else ``--timeout``,
never more than ``--max-timeout`` nor half the session TTL.

When the backlog no longer reaches back to a stored position (history trimmed, an
epoch change), the reply says so: ``ext: {"geventcomet": {"recovered": false}}``, and the
deliveries are what the backlog still holds.

A reply lost on its way (the connection dies after the positions were saved) loses its
deliveries: Bayeux without the ack extension is at-most-once for that one reply, as
with CometD's server.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import protocol
from ..access import Access
from ..service import CometService
from . import channels
from .messages import Message, advice, client_timeout_ms, reply, unknown_client
from .sessions import Session, SessionStore


@dataclass(slots=True)
class BayeuxStats:
    """Counters since start (this process), under ``bayeux`` in ``/stats``."""

    handshakes: int = 0
    connects: int = 0
    delivered: int = 0
    published: int = 0
    unknown_clients: int = 0
    expired: int = 0
    gaps: int = 0  # connect replies that said recovered: false
    callback_polls: int = 0  # requests over JSONP (callback-polling)


#: What a connect reply says when the backlog no longer reached back to the session's position.
GAP_EXT = {"geventcomet": {"recovered": False}}
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")


@dataclass(slots=True)
class Connected:
    """A connect's answer: its reply (a message, or already encoded), the deliveries
    (encoded) and whether to close."""

    reply: Message | bytes
    deliveries: list[bytes]
    close: bool = False


class ConnectHandler:
    """Holds ``/meta/connect`` requests of one server process."""

    def __init__(self, service: CometService, access: Access, sessions: SessionStore, stats: BayeuxStats) -> None:
        self.service = service
        self.access = access
        self.sessions = sessions
        self.stats = stats
        config = service.config
        #: The longest hold: ``--max-timeout``, and half the session TTL (the hold refreshes it).
        self.max_hold_s = min(config.max_timeout_s, config.bayeux_session_ttl_s / 2)
        self.default_hold_s = min(config.timeout_s, self.max_hold_s)
        self.hold_ms = int(self.default_hold_s * 1000)
        self._advice_json = protocol.json_bytes(advice(self.hold_ms))

    def hold_s(self, message: Message, session: Session) -> float:
        if not session.connected:
            return 0.0
        asked_ms = client_timeout_ms(message)
        if asked_ms is None:
            return self.default_hold_s
        return min(asked_ms / 1000, self.max_hold_s)

    def connect(self, message: Message, session: Session, environ: dict) -> Connected:
        service = self.service
        service.refuse_if_full()
        control = channels.control_channel(session.client_id)
        names = tuple(session.subscriptions)
        feeds = (*channels.feeds_of(names), control)
        stored = session.positions
        positions = {feed: stored.get(feed) for feed in feeds}
        result = service.wait(feeds, positions, session.epoch, self.hold_s(message, session),
                              environ.get("geventcomet.socket") or environ.get("gunicorn.socket"))
        deliveries = channels.select_deliveries(result.events, names)
        stats = self.stats
        stats.connects += 1
        if not self.sessions.save(session.client_id, result.positions, result.epoch):
            stats.unknown_clients += 1
            return Connected(unknown_client(message), [])  # disconnected (or expired) meanwhile
        stats.delivered += len(deliveries)
        service.stats.delivered += len(deliveries)
        if not result.recovered:
            stats.gaps += 1
        if result.shutting_down:
            fields: Message = {"advice": advice(self.hold_ms, interval_ms=service.reconnect_after_s * 1000)}
            if not result.recovered:
                fields["ext"] = GAP_EXT
            return Connected(reply(message, True, **fields), deliveries, close=True)
        return Connected(self.encode_reply(message, session.client_id, result.recovered), deliveries)

    def encode_reply(self, message: Message, client_id: str, recovered: bool) -> bytes:
        """The usual connect reply, from bytes built once (``reply()`` + JSON: a fifth of a
        connect's cost). ``client_id`` is the session's own (server-made, plain characters)."""
        parts = [b'{"channel":"/meta/connect","successful":true']
        if "id" in message:
            message_id = message["id"]
            parts.append(b',"id":"' + message_id.encode() + b'"' if isinstance(message_id, str)
                         and _PLAIN_ID.match(message_id) else b',"id":' + protocol.json_bytes(message_id))
        parts.append(b',"clientId":"' + client_id.encode() + b'","advice":')
        parts.append(self._advice_json)
        if not recovered:
            parts.append(b',"ext":' + protocol.json_bytes(GAP_EXT))
        parts.append(b"}")
        return b"".join(parts)

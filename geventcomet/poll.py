"""``GET /register``: the long-poll transport, a thin adapter over the service.

Most of the traffic is this route, so it is kept flat: parse, subscribe, wait,
encode, with no per-poll object beyond what those steps need. Authorization
(:mod:`geventcomet.access`) is one flag check when tokens are off and there is no hook,
and one dict lookup for a re-poll with the same token. The server's fast
path reaches it through the web layer's ``respond()`` like every other route.
"""
from __future__ import annotations

import time

from . import metrics_record, protocol
from .access import Access
from .replies import JSON, Reply
from .service import CometService


class LongPoll:
    """``GET /register`` over one :class:`~geventcomet.service.CometService`."""

    def __init__(self, service: CometService, access: Access | None = None) -> None:
        self.service = service
        #: Who may read what; with tokens off and no hook it is not asked (one flag check).
        self.access = access or Access(service.config)

    def register(self, environ: dict) -> Reply:
        """Answer one poll: events, or a timeout, or (at shutdown) 503 "reconnect" with the cursor."""
        service = self.service
        service.refuse_if_full()
        req = service.parse_register(environ.get("QUERY_STRING", ""))
        access = self.access
        sub = access.check_read(environ, req.channels, req.client) if access.active else None
        client, channels, positions = service.subscribe(req, sub)
        epoch, timeout_s = req.cursor.epoch, req.timeout_s
        del req, sub  # a held poll keeps this frame: not the parsed query
        held_since = time.monotonic()
        result = service.wait(channels, positions, epoch, timeout_s,
                              environ.get("geventcomet.socket") or environ.get("gunicorn.socket"))
        metrics_record.observe_poll(time.monotonic() - held_since, result)  # hold time; a gap counted
        cursor = protocol.encode_cursor(result.epoch, result.positions)
        if result.shutting_down:
            body = protocol.json_reply({"error": "server is shutting down; poll again with this cursor",
                                        "reconnect": True, "cursor": cursor, "client": client})
            return (503, body, JSON, (("Retry-After", str(service.reconnect_after_s)), ("Connection", "close")))
        stats = service.stats
        stats.polls += 1
        stats.delivered += len(result.events)
        stats.timeouts += result.timeout
        return (200, protocol.encode_poll_reply(result.events, cursor, timeout=result.timeout,
                                                recovered=result.recovered, client=client,
                                                epoch=result.epoch), JSON, ())

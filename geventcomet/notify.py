"""``POST /notify``: one event or a batch (``{"events": [...]}``), checked, then published.

The admin token (header, ``?token=``, a form field or the Notify page's cookie) publishes
anywhere; otherwise a publisher token's ``publish`` claim must cover every channel. A token
sent in the head is judged before the body is read, and a refusal then leaves the body unread
(the connection closes after the reply). A batch is checked whole (names, data, the token for
each channel) before any event is stored, then stored all or nothing (``service.publish_many``).
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlencode

from . import notify_body, protocol
from .access import ADMIN_COOKIE, Access
from .auth import Claims, request_token
from .errors import BadRequest, CometError
from .replies import JSON, Headers, Reply
from .service import CometService


class NotifyEndpoint:
    """The publish route over one service."""

    def __init__(self, service: CometService, access: Access) -> None:
        self.service = service
        self.access = access

    def notify(self, environ: dict) -> Reply:
        """``POST /notify``: the admin token (header, ``?token=``, form field or the page's
        cookie) publishes anywhere; else a subscriber token's ``publish`` must cover the channel."""
        abandon = environ.get("geventcomet.abandon_body", lambda: None)
        access = self.access
        try:
            length = protocol.check_body_length(
                environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked",
                self.service.config.max_body_bytes)
            token = request_token(environ)
            admin = access.is_admin_token(token) or access.has_admin_cookie(environ)
            # A token sent in the head is judged before the body is read.
            claims = access.publisher(token) if token is not None and not admin else None
        except CometError as exc:
            raise _unread_body(exc, abandon) from None
        body = environ["wsgi.input"].read(length)
        batch = notify_body.decode_batch(environ.get("CONTENT_TYPE", ""), body, self.service.config.max_batch_events)
        if batch is not None:
            if not admin and token is None:
                claims = access.publisher(None)  # 401 where a token is needed: a batch has no form field
            return self._batch(batch, environ, admin, claims)
        req = protocol.parse_notify(environ.get("CONTENT_TYPE", ""), body)
        form_admin = token is None and access.is_admin_token(req.token)
        if not admin and not form_admin and token is None:
            claims = access.publisher(req.token)
        if not (admin or form_admin):
            access.check_publish(claims, protocol.private_channel(req.client) if req.client else str(req.channel))
        sent = self.service.publish(req, environ.get("HTTP_IDEMPOTENCY_KEY") or None)
        if "text/html" in environ.get("HTTP_ACCEPT", ""):  # the Notify page's form
            query = urlencode({"sent": sent.channel, "id": sent.seq, "woken": sent.woken})
            headers: Headers = (("Location", f"/notify?{query}"),)
            if form_admin:  # the page asked for the token once; the cookie keeps it
                headers += (("Set-Cookie", f"{ADMIN_COOKIE}={access.admin_cookie}; Path=/; HttpOnly; "
                                           "SameSite=Strict"),)
            return (303, b"", "text/plain", headers)
        return (200, protocol.notify_reply(sent.channel, sent.seq, sent.woken), JSON, ())

    def _batch(self, batch: list[notify_body.Fields], environ: dict, admin: bool,
                      claims: Claims | None) -> Reply:
        """``POST /notify`` with ``{"events": [...]}``: every event checked (names, data, the
        token's ``publish`` for each channel) before any is stored, then all stored or none."""
        reqs = [batch_request(index, fields) for index, fields in enumerate(batch)]
        for req in () if admin else reqs:
            self.access.check_publish(claims, protocol.private_channel(req.client) if req.client else str(req.channel))
        sent = self.service.publish_many(reqs, environ.get("HTTP_IDEMPOTENCY_KEY") or None)
        return (200, protocol.json_reply({"events": [{"channel": one.channel, "id": one.seq, "woken": one.woken}
                                                     for one in sent]}), JSON, ())


def batch_request(index: int, fields: notify_body.Fields) -> protocol.NotifyRequest:
    """One event of a batch, validated as by :func:`protocol.parse_notify`; errors name it (``events[3]``)."""
    channel, client, data, _ = fields
    try:
        if (channel is None) == (client is None):
            raise BadRequest("give exactly one of channel and client")
        field, name = ("channel", channel) if channel is not None else ("client", client)
        if not isinstance(name, str):
            raise BadRequest(f"{field} must be a string")
        protocol.validate_channel(name) if channel is not None else protocol.validate_client(name)
        return protocol.NotifyRequest(channel, client, protocol.encode_json(data))
    except BadRequest as exc:
        raise BadRequest(f"events[{index}]: {exc.message}") from None


def _unread_body(exc: CometError, abandon: Callable[[], None]) -> CometError:
    """Refuse without reading the body: the connection closes after the reply."""
    abandon()
    exc.headers = (*exc.headers, ("Connection", "close"))
    return exc

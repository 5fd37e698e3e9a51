"""Who may read which channel, who may publish where, who is the admin: the server's policy.

Reading (``/register``, ``/stream``): each channel asked for must be public (tokens off and
no hook: every channel; else those matching ``--public-channels``), or covered by the
token's ``channels``, or granted by the hook. A client's private channel is not decided
here: :meth:`CometService.subscribe <geventcomet.service.CometService.subscribe>` checks the
client id (signed by the server, or the token's ``sub``), which :meth:`Access.check_read`
returns.

Publishing (``/notify``): the admin token (``--notify-token``) anywhere; with tokens on, a
token whose ``publish`` covers the channel (``@ID`` for a notify to a client); with neither
configured, anyone (today's open server).

Speed: with tokens off and no hook, :attr:`Access.active` is False and a transport does
nothing more than read it. With tokens on, a re-poll is one dict lookup (the verifier's).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from typing import Callable

from .auth import Claims, Patterns, TokenVerifier, bearer, request_token
from .auth_hook import AuthorizationHook, Authorize
from .config import Config
from .errors import AuthRefused

log = logging.getLogger(__name__)

#: The Notify page's cookie: it holds an HMAC of a fixed label under the admin token
#: (never the token itself), so it proves the holder once knew the token.
ADMIN_COOKIE = "gc_admin"
_ADMIN_COOKIE_LABEL = b"geventcomet notify page"


class Access:
    """The policy over one configuration, optional hook (and, for tests, clock)."""

    def __init__(self, config: Config, authorize: Authorize | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.tokens = TokenVerifier(config, clock=clock) if clock else TokenVerifier(config)
        self.public = Patterns.parse(p.strip() for p in config.public_channels.split(","))
        self.hook = AuthorizationHook(authorize, ttl_s=config.client_ttl_s) if authorize else None
        #: False: every channel is readable and this policy need not be asked (tokens off, no hook).
        self.active = self.tokens.enabled or self.hook is not None
        self._admin = config.notify_token.encode()
        self.admin_cookie = admin_cookie_value(config.notify_token) if config.notify_token else ""

    @property
    def admin_required(self) -> bool:
        return bool(self._admin)

    # -- reading ---------------------------------------------------------------

    def check_read(self, environ: dict, channels: tuple[str, ...], client: str | None) -> str | None:
        """Refuse (:class:`AuthRefused`) unless every channel may be read; the token's ``sub``.
        Called only when :attr:`active` (else every channel is readable)."""
        token = request_token(environ) if self.tokens.enabled else None
        claims = self.tokens.claims(token) if token is not None else None
        public = self.public.covers
        if claims is None:
            needed = [c for c in channels if not public(c)]
        else:
            claimed = claims.channels.covers
            needed = [c for c in channels if not (public(c) or claimed(c))]
        if needed and self.hook is not None:
            granted = self.hook.granted(environ, channels, needed, client, token)
            needed = [c for c in needed if c not in granted]
        if needed:
            if token is None and self.hook is None:
                raise AuthRefused("missing", f"channel {needed[0]} needs a token: send Authorization: "
                                             "Bearer TOKEN (or ?token=TOKEN)", status=401)
            raise AuthRefused("channel", f"no access to channel {needed[0]}")
        return claims.sub if claims is not None else None

    # -- publishing and the admin ------------------------------------------------

    def is_admin_token(self, token: str | None) -> bool:
        """``token`` is the admin token (constant-time comparison)."""
        return bool(self._admin) and token is not None and hmac.compare_digest(token.encode(), self._admin)

    def has_admin_cookie(self, environ: dict) -> bool:
        value = cookie_value(environ.get("HTTP_COOKIE", ""), ADMIN_COOKIE)
        return bool(self.admin_cookie) and value is not None and hmac.compare_digest(
            value.encode(), self.admin_cookie.encode())

    def publisher(self, token: str | None) -> Claims | None:
        """The claims a publishing (non-admin) token carries: 401 if it is invalid or expired,
        and if the server needs a credential and there is none; None on an open server."""
        if token is not None and self.tokens.enabled:
            return self.tokens.claims(token)
        if token is not None and self._admin:
            raise AuthRefused("invalid", "invalid notify token", status=401)
        if self._admin or self.tokens.enabled:
            raise AuthRefused("missing", "this server needs a notify token: send Authorization: Bearer TOKEN",
                              status=401)
        return None

    def check_publish(self, claims: Claims | None, channel: str) -> None:
        """403 unless ``claims`` (a publisher's, None on an open server) cover ``channel``."""
        if claims is not None and not claims.publish.covers(channel):
            shown = "@***" if channel.startswith("@") else channel
            raise AuthRefused("publish", f"the token may not publish to {shown}")

    def check_admin(self, environ: dict, *, cookie: bool = False) -> None:
        """The admin token as a bearer header (or, with ``cookie``, the page's cookie):
        401 if none was sent, 403 if it is wrong. Nothing is needed when none is configured."""
        if not self._admin:
            return
        sent = bearer(environ.get("HTTP_AUTHORIZATION", ""))
        if self.is_admin_token(sent) or (cookie and self.has_admin_cookie(environ)):
            return
        if sent is None and cookie_value(environ.get("HTTP_COOKIE", ""), ADMIN_COOKIE) is None:
            raise AuthRefused("admin", "this needs the admin token: send Authorization: Bearer TOKEN",
                              status=401)
        raise AuthRefused("admin", "wrong admin token")


def admin_cookie_value(admin_token: str) -> str:
    digest = hmac.new(admin_token.encode(), _ADMIN_COOKIE_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def cookie_value(header: str, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header (no quoting: ours is base64url)."""
    if name not in header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None

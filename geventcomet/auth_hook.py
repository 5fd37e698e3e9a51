"""The authorization hook: an app's own callable decides which channels a request may read.

``make_app(config, authorize=fn)`` or ``--authorizer module:function``. The callable gets an
:class:`~geventcomet.auth.AuthRequest` and the tuple of channels asked for, and returns the
channels it grants (any iterable). It may raise :class:`~geventcomet.errors.Forbidden` to
refuse with its own message; any other exception is logged (the first one with its
traceback) and answered 403, never 500.

It is called once per registration identity, not once per poll: the grant is remembered,
bounded and for ``client_ttl_s`` (then asked again, so a revoked session ends within that),
keyed on the request's credentials (its ``Cookie`` and token, which a re-poll repeats) or,
with neither, on the client id it names. A refusal is not remembered: a user who logs in
is served at the next poll.
"""
from __future__ import annotations

import importlib
import logging
import time
from typing import Callable, Iterable, NamedTuple

from .auth import AuthRequest
from .errors import AuthRefused, Forbidden

log = logging.getLogger(__name__)

Authorize = Callable[[AuthRequest, tuple[str, ...]], Iterable[str]]
#: Grants remembered at once; the oldest is dropped beyond this.
MAX_CACHED_GRANTS = 100_000


class Grant(NamedTuple):
    until: float  # monotonic seconds
    asked: tuple[str, ...]
    granted: frozenset[str]


def load_authorizer(spec: str) -> Authorize:
    """The callable named ``module:function`` (``ValueError``, a start-up error, if there is none)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"authorizer {spec!r} must be module:function")
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"authorizer {spec!r} cannot be loaded: {exc}") from None
    if not callable(target):
        raise ValueError(f"authorizer {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


class AuthorizationHook:
    """Asks ``authorize`` and remembers its grants (see the module docstring)."""

    def __init__(self, authorize: Authorize, *, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_CACHED_GRANTS) -> None:
        self.authorize = authorize
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self.calls = 0
        self.failures = 0
        self._grants: dict[str, Grant] = {}

    def granted(self, environ: dict, channels: tuple[str, ...], needed: list[str], client: str | None,
                token: str | None) -> frozenset[str]:
        """The channels of ``channels`` the hook grants this request; remembered when it grants
        every one of ``needed`` (those no token or public pattern covers)."""
        key = identity(environ, client, token)
        grant = self._grants.get(key) if key is not None else None
        now = self.clock()
        if grant is not None and grant.until > now and grant.asked == channels:
            return grant.granted
        granted = self._ask(environ, channels)
        if key is not None and granted.issuperset(needed):
            grants = self._grants
            grants.pop(key, None)
            if len(grants) >= self.max_entries:
                del grants[next(iter(grants))]  # insertion order: the oldest goes
            grants[key] = Grant(now + self.ttl_s, channels, granted)
        return granted

    def _ask(self, environ: dict, channels: tuple[str, ...]) -> frozenset[str]:
        self.calls += 1
        try:
            granted = self.authorize(AuthRequest.from_environ(environ), channels)
            return frozenset(channel for channel in granted if isinstance(channel, str))
        except Forbidden as exc:
            raise AuthRefused("channel", exc.message) from None
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.exception("the authorizer failed (answered 403; later failures are counted, not logged)")
            raise AuthRefused("channel", "the authorizer could not grant these channels") from None


def identity(environ: dict, client: str | None, token: str | None) -> str | None:
    """What a re-poll of the same registration repeats: its cookie and token, else its client id."""
    cookie = environ.get("HTTP_COOKIE", "")
    if cookie or token:
        return f"r\0{cookie}\0{token or ''}"
    return f"c\0{client}" if client else None

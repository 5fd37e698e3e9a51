"""Subscriber tokens: verify a JWT once, remember its claims until ``exp``, match channel patterns.

Tokens are on when ``token_secret`` (HS256) or ``token_public_key`` (a PEM file: RS256 or
ES256) is set. PyJWT is imported only then, so a server without tokens does not need it.

A token's claims: ``exp`` (required), ``sub`` (the client id it speaks for, optional),
``channels`` (patterns the holder may read), ``publish`` (patterns it may publish to). A
pattern is an exact channel name or a prefix ending in ``*``. Private channels (``@ID``)
are matched only by patterns that start with ``@`` (``"@*"``, ``"@ID"``): a bare ``"*"``
covers every public channel and no client's private one.

Speed: a poll repeats its token. :class:`TokenVerifier` checks a signature once per token
string and keeps the claims in a bounded dict until their ``exp`` (an expired entry is
refused even while cached, by the verifier's own clock), so a re-poll costs one dict lookup
and one comparison with the clock. Failed tokens are not cached: a stream of distinct bad
tokens must not push the good ones out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, unquote_plus

from .config import Config
from .errors import AuthRefused

#: Verdicts remembered at once; the oldest is dropped beyond this.
MAX_CACHED_TOKENS = 100_000
#: Signature algorithms per kind of key: pinned, so a token cannot choose ``none`` or turn
#: the public key into an HMAC secret.
HMAC_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Patterns:
    """Channel patterns: exact names, and prefixes (a pattern ending in ``*``)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> "Patterns":
        exact, prefixes = set(), []
        for pattern in patterns:
            if pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            elif pattern:
                exact.add(pattern)
        return cls(frozenset(exact), tuple(prefixes))

    def covers(self, channel: str) -> bool:
        if channel in self.exact:
            return True
        if self.prefixes:  # a plain loop: a poll asks this for each of its channels
            private = channel[0] == "@"
            for prefix in self.prefixes:
                # "@*" covers private channels; "" (from "*") only public ones.
                if channel.startswith(prefix) and (not private or prefix[:1] == "@"):
                    return True
        return False

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants, until ``exp`` (Unix seconds)."""

    exp: float
    sub: str | None = None
    channels: Patterns = field(default_factory=Patterns)
    publish: Patterns = field(default_factory=Patterns)


def claims_from(payload: dict[str, Any]) -> Claims:
    """The claims of a decoded payload; :class:`AuthRefused` ``invalid`` if malformed."""
    exp, sub = payload.get("exp"), payload.get("sub")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise AuthRefused("invalid", "the token has no numeric exp claim", status=401)
    if sub is not None and not isinstance(sub, str):
        raise AuthRefused("invalid", "the token's sub claim must be a string", status=401)
    lists = {}
    for name in ("channels", "publish"):
        value = payload.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise AuthRefused("invalid", f"the token's {name} claim must be a list of strings", status=401)
        lists[name] = Patterns.parse(value)
    return Claims(float(exp), sub, lists["channels"], lists["publish"])


class TokenVerifier:
    """Checks JWTs against the configured keys, once per token (see the module docstring).

    ``clock`` returns Unix seconds (tests drive it); ``decode`` is the signature check
    (``token -> payload dict``), replaceable to count calls.
    """

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 max_entries: int = MAX_CACHED_TOKENS) -> None:
        self.enabled = bool(config.token_secret or config.token_public_key)
        if self.enabled:
            require_jwt(bool(config.token_public_key))
        self.clock = clock
        self.max_entries = max_entries
        self._cache: dict[str, Claims] = {}
        self._keys: dict[str, Any] = {}
        if config.token_secret:
            self._keys.update(dict.fromkeys(HMAC_ALGORITHMS, config.token_secret))
        if config.token_public_key:
            self._keys.update(dict.fromkeys(PUBLIC_KEY_ALGORITHMS, load_public_key(config.token_public_key)))
        self.decode: Callable[[str], dict[str, Any]] = self.verify_signature

    def claims(self, token: str) -> Claims:
        """The token's claims; :class:`AuthRefused` (401) if invalid or expired."""
        claims = self._cache.get(token)
        if claims is None:
            claims = claims_from(self.decode(token))
            cache = self._cache
            if len(cache) >= self.max_entries:
                del cache[next(iter(cache))]  # dicts keep insertion order: the oldest goes
            cache[token] = claims
        if claims.exp <= self.clock():
            self._cache.pop(token, None)
            raise AuthRefused("expired", "the token has expired: get a fresh one", status=401)
        return claims

    def verify_signature(self, token: str) -> dict[str, Any]:
        """The payload of a token whose signature verifies with a pinned algorithm."""
        import jwt  # lazily: PyJWT is needed only with tokens on

        if len(token) > MAX_TOKEN_CHARS:
            raise AuthRefused("invalid", f"the token is longer than {MAX_TOKEN_CHARS} characters", status=401)
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
            if key is None or not isinstance(algorithm, str):
                raise AuthRefused("invalid", f"the token's algorithm is not accepted here "
                                             f"(accepted: {', '.join(sorted(self._keys))})", status=401)
            # exp is required here but compared with self.clock (in claims), not the wall clock.
            payload = jwt.decode(token, key, algorithms=[algorithm],
                                 options={"require": ["exp"], "verify_exp": False, "verify_aud": False})
        except jwt.PyJWTError as exc:
            raise AuthRefused("invalid", f"invalid token: {exc}", status=401) from None
        if not isinstance(payload, dict):
            raise AuthRefused("invalid", "the token's payload is not an object", status=401)
        return payload

    def cached(self) -> int:
        """Verdicts held now (for ``/stats``)."""
        return len(self._cache)


def require_jwt(public_key: bool) -> None:
    """``ValueError`` (a start-up error, not a 500 per request) when tokens are configured but
    PyJWT (or, for a public key, ``cryptography``) is not installed."""
    try:
        import jwt
    except ImportError:
        raise ValueError("tokens need PyJWT: pip install 'geventcomet[jwt]'") from None
    if public_key and not jwt.algorithms.has_crypto:
        raise ValueError("RS256/ES256 tokens need cryptography: pip install 'geventcomet[jwt]'")


def load_public_key(path: str) -> Any:
    """The public key in the PEM file ``path``; ``ValueError`` (a start-up error) if unusable."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        with open(path, "rb") as file:
            return load_pem_public_key(file.read())
    except (OSError, ValueError) as exc:
        raise ValueError(f"token_public_key {path!r} is not a readable PEM public key: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None


def bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def request_token(environ: dict) -> str | None:
    """The request's token: the ``Authorization`` header wins over ``?token=``."""
    header = environ.get("HTTP_AUTHORIZATION")
    if header:
        token = bearer(header)
        if token is not None:
            return token
    query = environ.get("QUERY_STRING", "")
    if "token=" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "token":
            return value or None
    return None


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an authorization hook sees of a request: headers (lower-case names), cookies,
    the query (one value per name, the first) and the peer's address (``None`` if unknown)."""

    headers: dict[str, str]
    cookies: dict[str, str]
    query: dict[str, str]
    peer: str | None

    @classmethod
    def from_environ(cls, environ: dict) -> "AuthRequest":
        from http.cookies import CookieError, SimpleCookie

        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and isinstance(value, str)}
        cookies: dict[str, str] = {}
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(headers["cookie"])
            except CookieError:
                pass  # an unparsable Cookie header is no cookie, as in a browser
            cookies = {name: morsel.value for name, morsel in jar.items()}
        query: dict[str, str] = {}
        for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
            query.setdefault(key, value)
        peer = environ.get("REMOTE_ADDR")
        if peer is None:  # the server's fast path passes its socket, not REMOTE_ADDR
            address = getattr(environ.get("geventcomet.socket"), "address", None)
            peer = address[0] if isinstance(address, tuple) else None
        return cls(headers, cookies, query, peer)


#: Query parameters that carry credentials or positions: never written to a log.
SECRET_PARAMETERS = frozenset({"token", "client", "since", "last_event_id"})


def masked_request_line(line: str) -> str:
    """``GET /register?channel=a&token=T HTTP/1.1`` with every secret value as ``***``
    (a parameter name is compared decoded, so ``tok%65n=`` is masked too)."""
    method, _, rest = line.partition(" ")
    target, _, version = rest.partition(" ")
    path, question, query = target.partition("?")
    if not question:
        return line
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}=***" if equals and unquote_plus(name) in SECRET_PARAMETERS else part)
    return f"{method} {path}?{'&'.join(parts)}{' ' if version else ''}{version}"


def masked_channel(channel: str) -> str:
    """A channel name for a log line: a private channel's name is its client id, a credential."""
    return "@***" if channel.startswith("@") else channel

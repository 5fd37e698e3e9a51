"""Browser-facing defences, with no I/O: same-origin and Host checks, security headers.

- :func:`same_origin` compares an ``Origin`` header with the request's own origin
  by scheme, host and port (default ports normalised). The request's scheme is
  ``http`` (this server speaks no TLS) unless a TLS-terminating proxy says
  ``X-Forwarded-Proto: https``. A browser cannot forge that header cross-origin:
  it is not CORS-safelisted, so it needs a preflight, and the preflight (which
  carries no such header) is judged cross-origin first.
- An ``Origin`` that matches ``Host`` is still no proof of a friendly page: after a
  DNS rebinding, ``http://evil.example`` *is* the request's origin. The defence is
  :class:`HostPolicy` (``--allowed-hosts``): a request naming another ``Host``
  gets 421, so a rebound name never reaches a handler.
- :data:`NOSNIFF` goes on every reply (the JSON 404 echoes the path);
  :func:`page_headers` adds a Content-Security-Policy, frame and referrer
  protection for HTML pages. The shipped pages keep their inline ``<script>`` and
  ``<style>`` blocks: each is allowed by its SHA-256 (CSP level 2 hashes), so no
  other inline code runs even if markup were ever injected.
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from .errors import CometError

NOSNIFF: tuple[tuple[str, str], ...] = (("X-Content-Type-Options", "nosniff"),)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# host (a DNS name or IPv4, or a bracketed IPv6 literal) and an optional port, nothing else:
# none of the sub-delimiters RFC 3986 allows in a reg-name (a "," would let "evil,a.example.org"
# pass a ".example.org" rule), and browsers send host names in ASCII (punycode) only.
_AUTHORITY_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?\Z")
_ORIGIN_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)\Z", re.DOTALL)
_INLINE_RE = re.compile(r"<(script|style)(\s[^>]*)?>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")  # greedy: up to the last @, as urlsplit
_SECRET_PARAM_RE = re.compile(r"([?&;](?:password|passwd|pass|pwd|token|secret|auth|key)=)[^&;#\s]*", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """``text`` with the secrets of any URL in it masked, for logs.

    ``redis://:pw@h/0`` -> ``redis://:***@h/0``, ``redis://user:pw@h`` -> ``redis://user:***@h``,
    ``redis://tok@h`` -> ``redis://***@h``, and ``?password=pw`` -> ``?password=***``.
    """
    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"
    if "://" not in text:
        return text
    return _SECRET_PARAM_RE.sub(r"\1***", _USERINFO_RE.sub(userinfo, text))


class MisdirectedRequest(CometError):
    """421: the request names a Host this server was not told to answer for."""

    status, reason = 421, "Misdirected Request"


def _authority(text: str, scheme: str) -> tuple[str, str] | None:
    """``(host, port)`` lower-cased with the scheme's default port filled in; None if malformed."""
    match = _AUTHORITY_RE.match(text)
    if match is None or not text.isascii():
        return None
    host, port = match.group(1).lower(), match.group(2)
    if port is not None:
        if int(port) > 65535:
            return None
        port = str(int(port))  # "080" is port 80
    return host, port or _DEFAULT_PORTS.get(scheme, "")


@lru_cache(maxsize=1024)  # browsers repeat the same few (origin, host) pairs
def same_origin(origin: str, host: str | None, forwarded_proto: str | None = None) -> bool:
    """True when ``origin`` is the origin of a request with this ``Host`` (and proxy scheme)."""
    if not host:
        return False
    scheme = "https" if (forwarded_proto or "").split(",", 1)[0].strip().lower() == "https" else "http"
    match = _ORIGIN_RE.match(origin)
    if match is None or match.group(1).lower() != scheme:
        return False
    theirs = _authority(match.group(2), scheme)
    return theirs is not None and theirs == _authority(host, scheme)


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` header values the server answers (``--allowed-hosts``).

    Entries: ``example.com`` (any port), ``example.com:8080`` (that port only),
    ``.example.com`` (the domain and its subdomains, any port), ``[::1]:8080``, or ``*``.
    """

    exact: frozenset[tuple[str, str | None]]  # (host, port or None for any port)
    suffixes: tuple[str, ...]
    any_host: bool

    @classmethod
    def parse(cls, text: str) -> "HostPolicy":
        exact: set[tuple[str, str | None]] = set()
        suffixes: list[str] = []
        any_host = False
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            if entry == "*":
                any_host = True
                continue
            if entry.startswith(".") and _authority(entry[1:], "") is not None:
                suffixes.append(entry.lower())
                continue
            parsed = _authority(entry, "")
            if parsed is None:
                raise ValueError(f"allowed_hosts: {entry!r} is not a host or host:port")
            exact.add((parsed[0], parsed[1] or None))
        return cls(frozenset(exact), tuple(suffixes), any_host)

    def allows(self, host_header: str | None) -> bool:
        if self.any_host:
            return True
        if not host_header:
            return False
        parsed = _authority(host_header, "")
        if parsed is None:
            return False
        host, port = parsed
        if (host, None) in self.exact or (host, port or None) in self.exact:
            return True
        return any(host.endswith(suffix) or host == suffix[1:] for suffix in self.suffixes)


@lru_cache(maxsize=16)
def host_policy(allowed_hosts: str) -> HostPolicy:
    """The parsed policy for a config's ``allowed_hosts`` (parsed once)."""
    return HostPolicy.parse(allowed_hosts)


@lru_cache(maxsize=4096)  # keyed by the raw header: the same few values on every request
def _host_allowed(allowed_hosts: str, host_header: str | None) -> bool:
    return host_policy(allowed_hosts).allows(host_header)


def check_host(allowed_hosts: str, host_header: str | None) -> None:
    """Raise 421 unless ``host_header`` is allowed; an empty ``allowed_hosts`` allows all."""
    if allowed_hosts and not _host_allowed(allowed_hosts, host_header):
        shown = (host_header or "")[:100]
        raise MisdirectedRequest(f"this server does not answer for Host {shown!r} (see --allowed-hosts)"
                                 if host_header else "a Host header is required (see --allowed-hosts)")


def inline_hashes(html: str) -> tuple[list[str], list[str]]:
    """CSP sources (``'sha256-..'``) for the inline scripts and the style blocks of a page."""
    scripts: list[str] = []
    styles: list[str] = []
    for tag, attrs, body in _INLINE_RE.findall(html):
        if tag.lower() == "script" and "src=" in (attrs or "").lower():
            continue  # an external script: covered by 'self'
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        (scripts if tag.lower() == "script" else styles).append(f"'sha256-{digest}'")
    return scripts, styles


def content_security_policy(pages: Iterable[str]) -> str:
    """A policy that runs the shipped pages' own code and nothing else.

    Scripts from this origin plus the hashed inline blocks; fetch and EventSource to
    this origin only; forms post here only; never framed.
    """
    scripts: list[str] = []
    styles: list[str] = []
    for html in pages:
        page_scripts, page_styles = inline_hashes(html)
        scripts += [s for s in page_scripts if s not in scripts]
        styles += [s for s in page_styles if s not in styles]
    return "; ".join((
        "default-src 'none'",
        " ".join(("script-src 'self'", *scripts)),
        " ".join(("style-src 'self'", *styles)),
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ))


def page_headers(pages: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Headers for an HTML reply: ``pages`` are the HTML texts (templates) the server ships."""
    return (*NOSNIFF,
            ("Content-Security-Policy", content_security_policy(pages)),
            ("X-Frame-Options", "DENY"),
            # not "no-referrer": under it a form's POST carries "Origin: null" (Fetch's origin
            # serialisation), and the Notify page's own form would be refused as cross-origin
            ("Referrer-Policy", "same-origin"))


@lru_cache(maxsize=1)
def shipped_page_headers() -> tuple[tuple[str, str], ...]:
    """:func:`page_headers` for the pages in ``geventcomet/static`` (read once, package data)."""
    from importlib import resources
    static = resources.files("geventcomet").joinpath("static")
    pages = [item.read_text("utf-8") for item in sorted(static.iterdir(), key=lambda i: i.name)
             if item.name.endswith(".html")]
    return page_headers(pages)

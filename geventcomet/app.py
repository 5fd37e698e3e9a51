"""The WSGI application: routes, CORS, auth, and the register / notify / stats handlers.

``make_app(config)`` builds the backend and the hub and returns a :class:`CometApp`,
a plain WSGI callable that also runs under gunicorn's gevent worker. Client
mistakes become :class:`~geventcomet.errors.CometError` and a JSON ``{"error": ..}``
with their status; anything else is logged with its traceback and answered with a
generic 500, never the traceback.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import resource
import secrets
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from html import escape
from http import HTTPStatus
from importlib import resources
from string import Template
from typing import Callable, Iterable, cast
from urllib.parse import parse_qs, urlencode

import gevent
from gevent.event import Event

from . import misbehaviour, protocol, security
from .backends import Backend, open_backend
from .config import FD_RESERVE, Config
from .errors import (
    BackendError,
    ClientGone,
    CometError,
    Forbidden,
    LimitReached,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    Unavailable,
)
from .hub import Hub
from .longpoll import hold

log = logging.getLogger(__name__)

Reply = tuple[int, bytes, str, tuple[tuple[str, str], ...]]  # status, body, type, headers
JSON = "application/json"
STATUS_TEXT = {200: "200 OK"}  # filled in by status_line()
_CORS_ALLOW_HEADERS = "Content-Type, Authorization, Idempotency-Key, Last-Event-ID"
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Retry-After of a request refused by a bound of the backend (channels, clients, keys).
LIMIT_RETRY_S = 10
#: ``/stats?waiting=N`` requests (a test hook) held at once; more get 503.
MAX_STATS_WAITS = 8


@dataclass(slots=True)
class Stats:
    """Counters since start, for ``GET /stats``."""

    published: int = 0
    delivered: int = 0  # events written to clients
    polls: int = 0  # register replies sent
    timeouts: int = 0
    disconnects: int = 0
    gc_collections: int = 0  # cyclic collections, and the seconds they took (server process only)
    gc_s: float = 0.0
    accept_pauses: int = 0  # times accepting paused because the process ran out of open files


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CometApp:
    """The geventcomet WSGI application. Build it with :func:`make_app`."""

    def __init__(self, config: Config, backend: Backend, hub: Hub) -> None:
        self.config = config
        self.backend = backend
        self.hub = hub
        self.stats = Stats()
        self.started = time.monotonic()
        fd_cap = max(fd_limit() - FD_RESERVE, 1)  # each held request holds a socket
        if config.max_waiting > fd_cap:
            log.warning("max_waiting %d is above the open-file limit less %d; using %d",
                        config.max_waiting, FD_RESERVE, fd_cap)
        self.max_waiting = min(config.max_waiting or fd_cap, fd_cap)
        self._origins = config.cors_origin_set
        self._token = config.notify_token.encode()
        self._stopping = Event()
        self._stats_waits = 0
        #: More numbers for ``/stats``: each callable returns a dict merged into the snapshot
        #: (the HTTP server adds its connection counts here).
        self.stats_sources: list[Callable[[], dict]] = []
        #: Headers added to every response (a worker process names itself here).
        self.extra_headers: tuple[tuple[str, str], ...] = ()
        #: Retry-After of the "reconnect" reply at shutdown: 1 s when the whole server stops,
        #: 0 when a restart hands this worker's clients to workers already listening.
        self.reconnect_after_s = 1
        self.routes: dict[str, dict[str, Callable[[dict], Reply | Iterable[bytes]]]] = {
            "/": {"GET": self.index},
            "/register": {"GET": self.register},
            "/notify": {"GET": self.notify_page, "POST": self.notify},
            "/stats": {"GET": self.stats_json},
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
        }
        from .browser import install_routes
        install_routes(self)
        backend.start(hub.wake, hub.wake_all, hub.waiter_count)  # a waited-on channel is never dropped
        self._housekeeper = gevent.spawn(self._expire_registrations)

    def close(self) -> None:
        """Stop housekeeping and release the backend."""
        self._stopping.set()
        self._housekeeper.join(timeout=1)
        self.backend.close()

    # -- WSGI entry --------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        environ["geventcomet.start_response"] = start_response  # for streaming handlers (/stream)
        reply = self.respond(environ)
        if not isinstance(reply, tuple):  # a streaming response sets its own headers
            return reply
        status, body, content_type, headers = reply
        start_response(status_line(status), [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                             ("Cache-Control", "no-store"), *headers])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    def respond(self, environ: dict) -> Reply | Iterable[bytes]:
        """Route one request: a whole :data:`Reply` (CORS and extra headers included), or a stream.

        The server's fast path calls this directly for ``GET /register`` with a small environ
        (method, path, query, ``HTTP_*`` headers, socket); WSGI servers go through ``__call__``.
        """
        cors: tuple[tuple[str, str], ...] = ()
        try:
            if self.config.allowed_hosts:  # before anything else: a rebound name reaches no handler
                security.check_host(self.config.allowed_hosts, environ.get("HTTP_HOST"))
            cors = self._cors_headers(environ)
            methods = self.routes.get(environ.get("PATH_INFO", ""))
            if methods is None:
                raise NotFound(f"no such path: {environ.get('PATH_INFO', '')[:100]}")
            method = environ["REQUEST_METHOD"]
            if method == "OPTIONS":
                reply: Reply | Iterable[bytes] = self._preflight(methods, cors)
            elif method in methods or (method == "HEAD" and "GET" in methods):
                reply = methods["GET" if method == "HEAD" else method](environ)
            else:
                allow = ", ".join(sorted(methods))
                raise MethodNotAllowed(f"{method} is not allowed here; use {allow}", headers=(("Allow", allow),))
        except CometError as exc:
            reply = (exc.status, json_bytes({"error": exc.message}), JSON, exc.headers)
        except ClientGone:
            self.stats.disconnects += 1
            raise  # the handler closes the connection without writing
        except Exception:
            log.exception("error handling %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            reply = (500, b'{"error": "internal server error"}', JSON, ())
        if not isinstance(reply, tuple):
            return reply
        status, body, content_type, headers = reply
        protection = security.shipped_page_headers() if content_type.startswith("text/html") else security.NOSNIFF
        return (status, body, content_type, (*headers, *cors, *self.extra_headers, *protection))

    def _cors_headers(self, environ: dict) -> tuple[tuple[str, str], ...]:
        origin = environ.get("HTTP_ORIGIN")
        if not origin or security.same_origin(origin, environ.get("HTTP_HOST"),
                                              environ.get("HTTP_X_FORWARDED_PROTO")):
            return ()  # not a cross-origin request: scheme, host and port all match
        if origin in self._origins or "*" in self._origins:
            return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
        raise Forbidden(f"origin {origin[:100]} is not allowed (see --cors-origins)")

    def _preflight(self, methods: dict, cors: tuple) -> Reply:
        allow = ", ".join(sorted({*methods, "OPTIONS"}))
        return (204, b"", JSON, (("Allow", allow), *((("Access-Control-Allow-Methods", allow),
                ("Access-Control-Allow-Headers", _CORS_ALLOW_HEADERS),
                ("Access-Control-Max-Age", "600")) if cors else ())))

    # -- handlers ----------------------------------------------------------

    def held(self) -> int:
        """Requests held now: parked polls and streams, and open streams that are writing."""
        stream = getattr(self, "stream", None)  # set by browser.install_routes
        return self.hub.waiting + (stream.open - stream.parked if stream else 0)

    def refuse_if_full(self) -> None:
        """503 + Retry-After when ``max_waiting`` requests are held already."""
        if self.held() >= self.max_waiting:
            raise Unavailable(f"server is at capacity ({self.max_waiting} waiting requests); retry later")

    def register(self, environ: dict) -> Reply:
        config = self.config
        self.refuse_if_full()
        req = protocol.parse_register(environ.get("QUERY_STRING", ""), default_timeout_s=config.timeout_s,
                                      max_timeout_s=config.max_timeout_s, max_channels=config.max_channels)
        client = req.client or secrets.token_urlsafe(12)
        channels = (*req.channels, protocol.private_channel(client))
        self._call_backend(self.backend.register, client)
        positions = {channel: req.cursor.positions.get(channel) for channel in channels}
        sock = environ.get("geventcomet.socket") or environ.get("gunicorn.socket")
        result = self._call_backend(hold, self.hub, self.backend, channels, positions, req.cursor.epoch,
                                    req.timeout_s, sock)
        cursor = protocol.encode_cursor(result.epoch, result.positions)
        if result.shutting_down:
            body = json_bytes({"error": "server is shutting down; poll again with this cursor",
                               "reconnect": True, "cursor": cursor, "client": client})
            return (503, body, JSON, (("Retry-After", str(self.reconnect_after_s)), ("Connection", "close")))
        if result.woken:  # part of a fan-out: see CometHandler.handle_one_response
            environ["geventcomet.woken"] = True
        stats = self.stats
        stats.polls += 1
        stats.delivered += len(result.events)
        stats.timeouts += result.timeout
        return (200, protocol.encode_poll_reply(result.events, cursor, timeout=result.timeout,
                                                recovered=result.recovered, client=client,
                                                epoch=result.epoch), JSON, ())

    def notify(self, environ: dict) -> Reply:
        abandon = environ.get("geventcomet.abandon_body", lambda: None)
        try:
            length = protocol.check_body_length(
                environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked",
                self.config.max_body_bytes)
        except CometError as exc:
            raise _unread_body(exc, abandon) from None
        header_token = _bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        if self._token and header_token is not None and not self._token_ok(header_token):
            raise _unread_body(Unauthorized("invalid notify token"), abandon)
        req = protocol.parse_notify(environ.get("CONTENT_TYPE", ""), environ["wsgi.input"].read(length))
        if self._token and header_token is None and not self._token_ok(req.token):
            raise Unauthorized("this server needs a notify token: send Authorization: Bearer TOKEN")
        if req.client is not None:
            if not self._call_backend(self.backend.is_registered, req.client):
                raise NotFound(f"no registered client {req.client!r} (never registered, or expired)")
            channel = protocol.private_channel(req.client)
        else:
            channel = cast(str, req.channel)  # parse_notify gives exactly one of the two
        key = environ.get("HTTP_IDEMPOTENCY_KEY") or None
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise CometError(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
        woken = self.hub.waiter_count(channel)
        seq = self._call_backend(self.backend.publish, channel, req.data_json, key)
        self.stats.published += 1
        log.debug("published %s#%d to %d waiters", channel, seq, woken)
        if "text/html" in environ.get("HTTP_ACCEPT", ""):  # the Notify page's form
            query = urlencode({"sent": channel, "id": seq, "woken": woken})
            return (303, b"", "text/plain", (("Location", f"/notify?{query}"),))
        return (200, json_bytes({"channel": channel, "id": seq, "woken": woken}), JSON, ())

    def notify_page(self, environ: dict) -> Reply:
        waiting = self.hub.channel_waiters()
        names = sorted(set(self.backend.channel_names(200)) | {c for c in waiting if c[0] != "@"})
        rows = "".join(f"<tr><td>{escape(c)}</td><td>{waiting.get(c, 0)}</td></tr>" for c in names)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        sent = ""
        if "sent" in query:
            sent = (f'<p class="sent">Sent event #{escape(query.get("id", ["?"])[0])} to '
                    f'{escape(query["sent"][0])}, waking {escape(query.get("woken", ["0"])[0])}.</p>')
        page = _template("notify.html").substitute(
            rows=rows or '<tr><td colspan="2">no channels yet</td></tr>', sent=sent,
            waiting=self.hub.waiting, token_field=(
                '<label>Token <input name="token" type="password"></label>' if self._token else ""))
        return (200, page.encode(), "text/html; charset=utf-8", ())

    def stats_json(self, environ: dict) -> Reply:
        """``/stats``; with ``?waiting=N[&timeout=S]`` (``--test-hooks`` only) it first waits
        until N requests are held, or S seconds."""
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "waiting" in query:
            self._wait_for_waiting(query)
        return (200, json_bytes(self.snapshot()), JSON, ())

    def _wait_for_waiting(self, query: dict[str, list[str]]) -> None:
        # A test instrument, not a feature: off unless --test-hooks, a few at once, and
        # woken once (when the count is reached), not on every park and unpark.
        if not self.config.test_hooks:
            raise NotFound("/stats?waiting=N is a test hook: start the server with --test-hooks")
        value = query["waiting"][0]
        if not (value.isascii() and value.isdigit() and len(value) < 10):
            raise CometError("waiting must be a non-negative integer")
        target = int(value)
        timeout_s = protocol.parse_timeout(query.get("timeout", [None])[0], self.config.timeout_s,
                                           self.config.max_timeout_s)
        if self.hub.waiting >= target:
            return
        if self._stats_waits >= MAX_STATS_WAITS:
            raise Unavailable(f"at most {MAX_STATS_WAITS} /stats?waiting requests at once")
        self._stats_waits += 1
        reached = self.hub.watch_count(target)
        try:
            reached.wait(timeout_s)
        finally:
            self.hub.unwatch_count(target)
            self._stats_waits -= 1

    def healthz(self, environ: dict) -> Reply:
        """Liveness: the process's event loop answers."""
        return (200, b'{"alive":true}', JSON, ())

    def readyz(self, environ: dict) -> Reply:
        """Readiness: 503 with the reason while draining or while the backend is unhealthy
        (a SQLite writer that failed and is restarting, an unreachable Redis)."""
        reason = "draining: the server is stopping" if self.hub.closing else self.backend.health()
        if reason is not None:
            return (503, json_bytes({"ready": False, "reason": reason}), JSON, (("Retry-After", "1"),))
        return (200, b'{"ready":true}', JSON, ())

    def index(self, environ: dict) -> Reply:
        return (200, json_bytes({"name": "geventcomet", "endpoints": sorted(self.routes)}), JSON, ())

    def snapshot(self) -> dict:
        """The numbers ``/stats`` serves."""
        counts = self._call_backend(self.backend.counts)
        stream = getattr(self, "stream", None)  # set by browser.install_routes
        streams = {"streams": stream.open, "streams_opened": stream.opened} if stream else {}
        fanout = self.hub.last_fanout
        extra: dict = {}
        for source in self.stats_sources:
            extra.update(source())
        return {**extra, "waiting": self.hub.waiting, "held": self.held(), **counts, **asdict(self.stats),
                **streams, "misbehaviour": dict(misbehaviour.clients.counts),
                "last_fanout": fanout and {"waiters": fanout.waiters, "started_unix": fanout.started,
                                           "ms": round((fanout.ended - fanout.started) * 1000, 3)},
                "uptime_s": round(time.monotonic() - self.started, 3), "rss_bytes": rss_bytes(),
                "max_waiting": self.max_waiting, "epoch": self.backend.epoch}

    # -- helpers -----------------------------------------------------------

    def _token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._token)

    def _call_backend(self, method, *args):
        try:
            return method(*args)
        except LimitReached as exc:  # not a failure: a bound, freed as state ages out
            raise Unavailable(str(exc), retry_after_s=LIMIT_RETRY_S) from None
        except BackendError as exc:
            raise Unavailable(f"backend unavailable: {exc}") from None

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


def _unread_body(exc: CometError, abandon: Callable[[], None]) -> CometError:
    """Refuse without reading the body: the connection closes after the reply."""
    abandon()
    exc.headers = (*exc.headers, ("Connection", "close"))
    return exc


def _bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def status_line(status: int) -> str:
    """``200`` -> ``"200 OK"``."""
    text = STATUS_TEXT.get(status)
    if text is None:
        try:
            text = STATUS_TEXT[status] = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            text = f"{status} Unknown"
    return text


@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    return Template(resources.files("geventcomet").joinpath("static", name).read_text("utf-8"))


def json_bytes(value: object) -> bytes:
    """Compact ASCII JSON; never ``NaN``/``Infinity`` (served JSON must parse strictly)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def make_app(config: Config | None = None, backend: Backend | None = None) -> CometApp:
    """Build the WSGI app for ``config`` (defaults from the environment).

    ``backend`` overrides the one ``config.backend`` names (tests use this).
    """
    config = config or Config.from_env()
    return CometApp(config, backend or open_backend(config), Hub())

"""The web layer: routes, Host and CORS checks, the notify token, errors as JSON.

``make_app(config)`` builds a :class:`~geventcomet.service.CometService` and
returns a :class:`CometApp` over it: a plain WSGI callable that also runs under
gunicorn's gevent worker. The routes are thin: the transports
(:mod:`~geventcomet.poll`, :mod:`~geventcomet.stream`, :mod:`~geventcomet.bayeux`),
the publish route (:mod:`~geventcomet.notify`) and the pages
(:mod:`~geventcomet.pages`) do the work. Client mistakes are
:class:`~geventcomet.errors.CometError` and become a JSON ``{"error": ..}`` with
their status; anything else is logged with its traceback and answered with a
generic 500, never the traceback.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable
from urllib.parse import parse_qs

from . import pages, protocol, security
from .access import Access
from .auth_hook import Authorize, load_authorizer
from .backends import Backend, open_backend
from .bayeux import BayeuxEndpoint
from .config import Config
from .counters import Stats
from .errors import AuthRefused, ClientGone, CometError, Forbidden, MethodNotAllowed, NotFound
from .hub import Hub
from .metrics import MetricsEndpoint
from .metrics_record import count_refusal
from .notify import NotifyEndpoint
from .poll import LongPoll
from .replies import JSON, Headers, Reply, Streamed, status_line
from .service import CometService
from .stream import StreamEndpoint

__all__ = ["CometApp", "Reply", "Stats", "make_app"]

log = logging.getLogger(__name__)

Route = Callable[[dict], "Reply | Streamed"]
_CORS_ALLOW_HEADERS = "Content-Type, Authorization, Idempotency-Key, Last-Event-ID, Pragma"


class CometApp:
    """The geventcomet WSGI application over one service. Build it with :func:`make_app`.

    ``hub``, ``backend``, ``stats``, ``stats_sources``, ``max_waiting`` and
    ``reconnect_after_s`` are the service's (the server process reads and sets them here).
    """

    def __init__(self, service: CometService, access: Access | None = None) -> None:
        self.service = service
        self.config = service.config
        # The service's parts, as the server process (and tests) reach them from the app.
        self.hub: Hub = service.hub
        self.backend: Backend = service.backend
        self.stats: Stats = service.stats
        self.stats_sources: list[Callable[[], dict]] = service.stats_sources
        self.max_waiting: int = service.max_waiting
        self._origins = service.config.cors_origin_set
        #: Who may read, publish and administer (:mod:`geventcomet.access`).
        self.access = access or Access(service.config)
        #: Headers added to every response (a worker process names itself here).
        self.extra_headers: Headers = ()
        self.poll = LongPoll(service, self.access)
        #: The SSE transport (its ``heartbeat_s`` may be changed while running).
        self.stream = StreamEndpoint(service, access=self.access)
        self.bayeux = BayeuxEndpoint(service, self.access)
        self.metrics = MetricsEndpoint(service, self.access)
        self.publish = NotifyEndpoint(service, self.access)
        self.routes: dict[str, dict[str, Route]] = {
            "/": {"GET": self.index},
            "/register": {"GET": self.poll.register},
            "/stream": {"GET": self.stream.open_stream},
            "/notify": {"GET": self.notify_page, "POST": self.publish.notify},
            "/stats": {"GET": self.stats_json},
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
            "/metrics": {"GET": self.metrics.serve},
            "/bayeux": {"GET": self.bayeux.handle, "POST": self.bayeux.handle},
        }
        self.routes.update({path: {"GET": serve} for path, serve in pages.static_routes().items()})

    @property
    def reconnect_after_s(self) -> int:
        return self.service.reconnect_after_s

    @reconnect_after_s.setter
    def reconnect_after_s(self, seconds: int) -> None:
        self.service.reconnect_after_s = seconds

    def close(self) -> None:
        """Stop the transports' housekeeping, then the service (housekeeping, backend)."""
        self.bayeux.close()
        self.service.close()

    # -- entry points ------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        reply = self.respond(environ)
        head = environ["REQUEST_METHOD"] == "HEAD"
        if isinstance(reply, Streamed):
            start_response("200 OK", [("Content-Type", reply.content_type), *reply.headers])
            return [b""] if head else reply.body  # an unstarted generator holds nothing
        status, body, content_type, headers = reply
        start_response(status_line(status), [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                             ("Cache-Control", "no-store"), *headers])
        return [b"" if head else body]

    def respond(self, environ: dict) -> Reply | Streamed:
        """Route one request: a whole :data:`Reply` or a stream, with CORS and extra headers.

        WSGI servers come through ``__call__``; the server's fast path calls this directly
        for ``GET /register`` with a small environ (method, path, query, ``HTTP_*``
        headers, socket) and writes the reply itself.
        """
        cors: Headers = ()
        reply: Reply | Streamed
        try:
            if self.config.allowed_hosts:  # before anything else: a rebound name reaches no handler
                security.check_host(self.config.allowed_hosts, environ.get("HTTP_HOST"))
            cors = self._cors_headers(environ)
            path = environ.get("PATH_INFO", "")
            methods = self.routes.get(path)
            if methods is None and path.startswith("/bayeux/"):  # CometD posts to /bayeux/connect, ...
                methods = self.routes["/bayeux"]
            if methods is None:
                raise NotFound(f"no such path: {environ.get('PATH_INFO', '')[:100]}")
            method = environ["REQUEST_METHOD"]
            if method in methods:
                reply = methods[method](environ)
            elif method == "HEAD" and "GET" in methods:
                reply = methods["GET"](environ)
            elif method == "OPTIONS":
                reply = _preflight(methods, cors)
            else:
                allow = ", ".join(sorted(methods))
                raise MethodNotAllowed(f"{method} is not allowed here; use {allow}", headers=(("Allow", allow),))
        except AuthRefused as exc:
            count_refusal(exc.status)
            reply = (exc.status, protocol.json_reply({"error": exc.message, "auth": exc.kind}), JSON, exc.headers)
        except CometError as exc:
            count_refusal(exc.status)
            reply = (exc.status, protocol.json_reply({"error": exc.message}), JSON, exc.headers)
        except ClientGone:
            self.service.stats.disconnects += 1
            raise  # the handler closes the connection without writing
        except Exception:
            log.exception("error handling %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            count_refusal(500)
            reply = (500, b'{"error": "internal server error"}\n', JSON, ())
        if isinstance(reply, Streamed):
            return Streamed(reply.content_type, (*reply.headers, *cors, *self.extra_headers, *security.NOSNIFF),
                            reply.body)
        status, body, content_type, headers = reply
        protection = security.shipped_page_headers() if content_type.startswith("text/html") else security.NOSNIFF
        return (status, body, content_type, (*headers, *cors, *self.extra_headers, *protection))

    def _cors_headers(self, environ: dict) -> Headers:
        origin = environ.get("HTTP_ORIGIN")
        if not origin or security.same_origin(origin, environ.get("HTTP_HOST"),
                                              environ.get("HTTP_X_FORWARDED_PROTO")):
            return ()  # not a cross-origin request: scheme, host and port all match
        if origin in self._origins or "*" in self._origins:
            if environ.get("PATH_INFO", "").startswith("/bayeux"):
                # Faye's cross-origin transport sends credentials (XHR withCredentials); /bayeux
                # reads no cookie (its token travels in the handshake's ext), so allowing them is safe.
                return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                        ("Access-Control-Allow-Credentials", "true"))
            return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
        raise Forbidden(f"origin {origin[:100]} is not allowed (see --cors-origins)")

    # -- routes ------------------------------------------------------------

    def notify_page(self, environ: dict) -> Reply:
        """The Notify page; with an admin token configured it needs the token (or the cookie
        a correct form submit sets), and a browser without either gets the bare form."""
        access = self.access
        try:
            access.check_admin(environ, cookie=True)
        except AuthRefused as exc:
            if "text/html" not in environ.get("HTTP_ACCEPT", ""):
                raise
            return pages.login_page(exc.status)
        return pages.notify_page(self.service, environ.get("QUERY_STRING", ""),
                                 token_field=access.admin_required and not access.has_admin_cookie(environ))

    def stats_json(self, environ: dict) -> Reply:
        """``/stats``; with ``?waiting=N[&timeout=S]`` (``--test-hooks`` only) it first waits
        until N requests are parked, or S seconds."""
        self.access.check_admin(environ)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "waiting" in query:
            if not self.config.test_hooks:
                raise NotFound("/stats?waiting=N is a test hook: start the server with --test-hooks")
            value = query["waiting"][0]
            if not (value.isascii() and value.isdigit() and len(value) < 10):
                raise CometError("waiting must be a non-negative integer")
            timeout_s = protocol.parse_timeout(query.get("timeout", [None])[0], self.config.timeout_s,
                                               self.config.max_timeout_s)
            self.service.wait_for_waiting(int(value), timeout_s)
        return (200, protocol.json_reply(self.service.snapshot()), JSON, ())

    def healthz(self, environ: dict) -> Reply:
        """Liveness: the process's event loop answers."""
        return (200, b'{"alive":true}\n', JSON, ())

    def readyz(self, environ: dict) -> Reply:
        """Readiness: 503 with the reason while draining or while the backend is unhealthy
        (a SQLite writer that failed and is restarting, an unreachable Redis)."""
        reason = self.service.unready_reason()
        if reason is not None:
            return (503, protocol.json_reply({"ready": False, "reason": reason}), JSON, (("Retry-After", "1"),))
        return (200, b'{"ready":true}\n', JSON, ())

    def index(self, environ: dict) -> Reply:
        return (200, protocol.json_reply({"name": "geventcomet", "endpoints": sorted(self.routes)}), JSON, ())


def _preflight(methods: dict[str, Route], cors: Headers) -> Reply:
    allow = ", ".join(sorted({*methods, "OPTIONS"}))
    return (204, b"", JSON, (("Allow", allow), *((("Access-Control-Allow-Methods", allow),
            ("Access-Control-Allow-Headers", _CORS_ALLOW_HEADERS),
            ("Access-Control-Max-Age", "600")) if cors else ())))


def make_app(config: Config, backend: Backend | None = None, authorize: Authorize | None = None) -> CometApp:
    """Build the service and the WSGI app for ``config``.

    ``backend`` overrides the one ``config.backend`` names (tests use this). ``authorize``
    is the authorization hook (:mod:`geventcomet.auth_hook`); without it, ``config.authorizer``
    (``module:function``) names one, if set.
    """
    if authorize is None and config.authorizer:
        authorize = load_authorizer(config.authorizer)
    access = Access(config, authorize)
    if not access.active:
        log.warning("no --token-secret, --token-public-key or --authorizer: every channel is public "
                    "(readable by anyone who names it)")
    return CometApp(CometService(config, backend or open_backend(config)), access)

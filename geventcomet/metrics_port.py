"""``--metrics-port``: ``/metrics`` alone, on 127.0.0.1, with no token.

For a Prometheus on the same host (or a sidecar) that should not hold the admin token:
the listener is bound to loopback only, so only local processes reach it, and it serves
nothing but ``GET /metrics`` (anything else is a JSON 404 or 405). It is a plain gevent
WSGI server with a small pool: a scrape is one request every few seconds.

One process serves it from its own numbers; with ``--workers N`` the supervisor serves it
from the sum it keeps (:mod:`geventcomet.metrics_workers`), and the workers do not.
"""
from __future__ import annotations

import json
import logging
from typing import Callable, Iterable

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from .config import Config
from .errors import CometError
from .metrics_families import CONTENT_TYPE
from .replies import status_line

log = logging.getLogger("geventcomet.metrics")

#: Scrapes served at once; more wait in the listen queue.
MAX_SCRAPES = 16
#: The address: loopback only, whatever ``--host`` is.
METRICS_HOST = "127.0.0.1"
#: A connection's every read and write has this long: one that sends nothing is closed, so
#: idle connections cannot take the few scrape slots for good.
SCRAPE_TIMEOUT_S = 10.0


class MetricsServer(WSGIServer):
    """pywsgi with a deadline on each connection's reads and writes (pywsgi has none)."""

    def handle(self, sock, address) -> None:
        sock.settimeout(SCRAPE_TIMEOUT_S)
        super().handle(sock, address)


class MetricsApp:
    """The WSGI app of the metrics port: ``GET``/``HEAD /metrics`` and nothing else."""

    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self.exposition = exposition

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        status, body, content_type = 200, b"", CONTENT_TYPE
        headers = [("Cache-Control", "no-store")]
        if environ.get("PATH_INFO") != "/metrics":
            status, body = 404, b'{"error":"this port serves /metrics only"}'
        elif method not in ("GET", "HEAD"):
            status, body = 405, b'{"error":"use GET /metrics"}'
            headers.append(("Allow", "GET, HEAD"))
        else:
            try:
                body = self.exposition()
            except CometError as exc:
                status, body = exc.status, json.dumps({"error": exc.message}).encode()
        if status != 200:
            content_type = "application/json"
        start_response(status_line(status), [("Content-Type", content_type),
                                             ("Content-Length", str(len(body))), *headers])
        return [b"" if method == "HEAD" else body]


def serve_metrics_port(config: Config, exposition: Callable[[], bytes]) -> WSGIServer | None:
    """Start serving ``exposition()`` on 127.0.0.1:``config.metrics_port`` (None when it is 0).

    Raises OSError when the port cannot be bound (a start-up error, like the main port's).
    """
    if not config.metrics_port:
        return None
    server = MetricsServer((METRICS_HOST, config.metrics_port), MetricsApp(exposition), spawn=Pool(MAX_SCRAPES),
                        log=None, error_log=logging.getLogger("geventcomet.http"))
    server.start()
    log.info("metrics on http://%s:%d/metrics", METRICS_HOST, server.server_port)
    return server

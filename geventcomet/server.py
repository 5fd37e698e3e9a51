"""Run the app on gevent's WSGI server, and stop it without losing anyone.

Graceful stop (SIGTERM or SIGINT): close the listener, wake every held request
with a "reconnect" reply that keeps its cursor (503, ``Retry-After: 1``), wait for
those replies to go out, close what is left (idle keep-alive connections), exit 0.
Plain ``WSGIServer.stop`` would instead drop held clients with an EOF or a 500
(PITFALLS B5).
"""
from __future__ import annotations

import logging
import resource
import signal

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from .app import CometApp, make_app
from .config import Config
from .handler import CometHandler

log = logging.getLogger(__name__)

#: Listen queue length: a ramp of thousands of clients connects faster than one
#: accept loop drains it (the kernel caps this at net.core.somaxconn).
LISTEN_BACKLOG = 4096
#: After the held requests are answered, how long other in-flight requests get.
DRAIN_TIMEOUT_S = 0.5


class CometServer(WSGIServer):
    """A WSGIServer with :class:`CometHandler` and the config's limits at hand."""

    handler_class = CometHandler

    def __init__(self, listener, app: CometApp, config: Config, **kwargs) -> None:
        #: Read by the handler: header deadline, keep-alive timeout, head size.
        self.limits = config
        #: Greenlets of keep-alive connections waiting for their next request.
        self.idle_connections: set[gevent.Greenlet] = set()
        self.access_log_enabled = config.access_log
        kwargs.setdefault("log", logging.getLogger("geventcomet.access") if config.access_log else None)
        kwargs.setdefault("error_log", logging.getLogger("geventcomet.http"))
        super().__init__(listener, app, spawn=Pool(), **kwargs)
        self.app = app

    def stop_gracefully(self) -> None:
        """Stop accepting, answer every held request with "reconnect", close the rest."""
        self.close()
        hub = self.app.hub
        hub.shutdown()
        if not hub.idle.wait(1.0):
            log.warning("%d held requests were still waiting after 1 s", hub.waiting)
        for idle in list(self.idle_connections):
            idle.kill(block=False)
        self.pool.join(timeout=DRAIN_TIMEOUT_S)
        self.pool.kill(timeout=1)
        self.app.close()


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one; each waiting client holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def make_server(config: Config, app: CometApp | None = None, listener=None) -> CometServer:
    """Build (but do not start) a server for ``config``, on ``listener`` if given."""
    app = app or make_app(config)
    if listener is None:  # gevent takes a backlog only for an address it binds itself
        return CometServer((config.host, config.port), app, config, backlog=LISTEN_BACKLOG)
    return CometServer(listener, app, config)


def serve(config: Config, listener=None) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully. Returns the exit status."""
    if config.workers > 1:  # a supervisor of N processes, each running the code below
        from .workers import run_workers
        return run_workers(config)
    raise_open_file_limit()
    server = make_server(config, listener=listener)
    server.start()
    log.info("geventcomet listening on http://%s:%d/ (max %d waiting requests)",
             server.server_host, server.server_port, server.app.max_waiting)
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    log.info("stopping: answering %d held requests with reconnect", server.app.hub.waiting)
    server.stop_gracefully()
    log.info("stopped")
    return 0

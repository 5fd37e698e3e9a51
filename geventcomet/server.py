"""One server process: the app on gevent's WSGI server, started, announced, and stopped
without losing anyone.

This module serves ONE process and knows nothing of workers: ``geventcomet serve``
(:mod:`geventcomet.cli`) runs :func:`serve` here, or :mod:`geventcomet.supervisor` when
``--workers`` is above 1, whose workers (:mod:`geventcomet.workers`) run :func:`serve` again.

Once it listens, :func:`serve` logs a "listening on" line for people and announces its
address to the parent that asked, over the readiness pipe (:mod:`geventcomet.ready`).

Graceful stop (SIGTERM or SIGINT): close the listener, wake every held request
with a "reconnect" reply that keeps its cursor (503, ``Retry-After: 1``, or 0 when a
restart hands the clients to other workers), wait for
those replies to go out, close what is left (idle keep-alive connections), exit 0.
Plain ``WSGIServer.stop`` would not do this: it closes the listener, waits up to its
``stop_timeout`` for the handler greenlets and then kills them, so a request held
for a notify is cut without a reply (its client sees the connection close, with
nothing that says "poll again").
"""
from __future__ import annotations

import errno
import logging
import resource
import signal
import socket
import time

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from greenlet import greenlet

from . import misbehaviour, ready
from .app import CometApp, make_app
from .config import Config
from .connections import Connections
from .errors import BackendError
from .gctune import tune_gc
from .handler import CometHandler
from .metrics_port import serve_metrics_port
from .metrics_record import count_refusal
from .replies import error_reply

log = logging.getLogger(__name__)

#: Listen queue length: a ramp of thousands of clients connects faster than one
#: accept loop drains it (the kernel caps this at net.core.somaxconn).
LISTEN_BACKLOG = 4096
#: After the held requests are answered, how long other in-flight requests get.
DRAIN_TIMEOUT_S = 0.5
#: Out of file descriptors: accepting pauses this long, doubling up to the cap while it lasts.
ACCEPT_PAUSE_S, ACCEPT_PAUSE_CAP_S = 0.05, 1.0
#: At most one "out of open files" warning in this many seconds.
FD_WARNING_INTERVAL_S = 10.0
#: A refused connection is read (and discarded) for at most this long and this much before
#: it is closed, so that the refusal reaches the client instead of a reset.
REFUSAL_LINGER_S, REFUSAL_DRAIN_BYTES = 1.0, 16 * 1024
#: Open files kept back from client connections (listener, backend, logs, the refusal itself);
#: a quarter of the limit when that is less.
CONNECTION_FD_RESERVE = 100


class CometServer(WSGIServer):
    """A WSGIServer with :class:`CometHandler` and the config's limits at hand."""

    handler_class = CometHandler

    def __init__(self, listener, app: CometApp, config: Config, **kwargs) -> None:
        #: Read by the handler: header deadline, keep-alive timeout, head size.
        self.limits = config
        #: Greenlets of keep-alive connections waiting for their next request.
        self.idle_connections: set[greenlet] = set()
        #: Every open connection's greenlet (plain greenlets: see :mod:`geventcomet.connections`).
        self.open_connections = Connections()
        #: Open client connections, and those whose request head or body is being read
        #: (maintained by the handler; in /stats as ``connections``, ``reading_requests``).
        self.connections = 0
        self.reading_requests = 0
        self.access_log_enabled = config.access_log
        kwargs.setdefault("log", logging.getLogger("geventcomet.access") if config.access_log else None)
        kwargs.setdefault("error_log", logging.getLogger("geventcomet.http"))
        super().__init__(listener, app, spawn=self.open_connections.spawn, **kwargs)
        self.app = app
        app.stats_sources.append(self.connection_stats)
        self._accept_pause = 0.0
        self._per_host: dict[str | None, int] = {}  # client address -> open connections
        #: A new connection beyond this many open ones is refused at once (503).
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = config.max_connections or max(files - min(CONNECTION_FD_RESERVE, files // 4), 1)
        self._accept_timer = None
        self._fd_warned_at = -FD_WARNING_INTERVAL_S

    def handle(self, sock, address) -> None:
        """Serve one accepted connection, unless a connection bound says to refuse it at once.

        Every connection costs a socket and a greenlet for as long as it is open, whatever it
        sends (a slowloris holds one for the whole head deadline), so each counts here.
        """
        host = address[0] if isinstance(address, tuple) else None
        per_host = self._per_host
        if self.connections >= self.max_connections:
            return self._refuse(sock, "too-many-connections",
                                f"server is at capacity ({self.max_connections} connections); retry later")
        if self.limits.max_connections_per_ip and per_host.get(host, 0) >= self.limits.max_connections_per_ip:
            return self._refuse(sock, "too-many-connections-per-ip",
                                f"too many connections from your address "
                                f"({self.limits.max_connections_per_ip}, --max-connections-per-ip)")
        per_host[host] = per_host.get(host, 0) + 1
        try:
            super().handle(sock, address)
        finally:
            left = per_host[host] - 1
            if left:
                per_host[host] = left
            else:
                del per_host[host]

    def do_handle(self, sock, address) -> None:
        """Spawn the connection's greenlet, a plain one (:mod:`geventcomet.connections`)."""
        try:
            self.open_connections.spawn(self._handle, self.do_close, sock, address)
        except BaseException:
            self.do_close(sock, address)
            raise

    def stop(self, timeout: float | None = None) -> None:
        """Close the listener, give open connections ``timeout`` (``stop_timeout``) to end, kill the rest."""
        super().stop(timeout)  # gevent's waits only for a Pool's greenlets
        self.open_connections.join(self.stop_timeout if timeout is None else timeout)
        self.open_connections.kill(timeout=1)

    def _refuse(self, sock, kind: str, message: str) -> None:
        # A lingering close, bounded: closing with the client's request unread would send
        # a reset, which can destroy the reply before the client reads it.
        misbehaviour.note(kind)
        count_refusal(503)
        try:
            sock.send(error_reply(503, message, retry_after_s=1))  # one try: a client this early has room for it
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(REFUSAL_LINGER_S)
            drained = 0
            while drained < REFUSAL_DRAIN_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:  # includes the timeout: the client is slow to go, close anyway
            pass
        finally:
            sock.close()

    def connection_stats(self) -> dict:
        """``connections`` open and ``reading_requests`` mid-head or mid-body, for /stats."""
        return {"connections": self.connections, "reading_requests": self.reading_requests,
                "max_connections": self.max_connections}

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        else:
            self._accept_pause = 0.0
            return accepted
        # Out of file descriptors. gevent would log a traceback and back off; say it in
        # one line instead, and pause: new connections wait in the listen queue while the
        # connections already open are served as usual.
        self._accept_pause = min(self._accept_pause * 2 or ACCEPT_PAUSE_S, ACCEPT_PAUSE_CAP_S)
        self.app.stats.accept_pauses += 1
        now = time.monotonic()
        if now - self._fd_warned_at >= FD_WARNING_INTERVAL_S:
            self._fd_warned_at = now
            log.warning("out of open files (limit %d): new connections wait in the listen queue, "
                        "accepting again in %.2f s; see --max-waiting and the open-file limit",
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0], self._accept_pause)
        self.stop_accepting()
        self._accept_timer = self.loop.timer(self._accept_pause)
        self._accept_timer.start(self._resume_accepting)
        return None

    def _resume_accepting(self) -> None:
        if self._accept_timer is not None:
            self._accept_timer.close()
            self._accept_timer = None
        if not self.closed:
            self.start_accepting()

    def _close_if_idle(self, connection: greenlet) -> None:
        # Runs in the hub, so nothing switches between the check and the throw. Greenlet.kill
        # throws whatever the greenlet is doing by the time its callback runs: a keep-alive
        # connection whose next request arrived meanwhile was killed mid-request (a notify
        # answered 500, seen in the SIGHUP restart test). Such a one finishes its request.
        if connection in self.idle_connections and not connection.dead:
            connection.throw(GreenletExit)

    def stop_gracefully(self) -> None:
        """Stop accepting, answer every held request with "reconnect", close the rest."""
        self.close()
        hub = self.app.hub
        hub.shutdown()
        if not hub.idle.wait(1.0):
            log.warning("%d held requests were still waiting after 1 s", hub.waiting)
        for idle in list(self.idle_connections):
            self.loop.run_callback(self._close_if_idle, idle)
        self.open_connections.join(timeout=DRAIN_TIMEOUT_S)
        self.open_connections.kill(timeout=1)
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


def serve(config: Config, listener=None, *, extra_headers: tuple[tuple[str, str], ...] = (),
          stop: Event | None = None, handover: Event | None = None, ready_fd: int | None = None) -> int:
    """Serve ONE process until SIGTERM/SIGINT (or ``stop``), then stop gracefully; the exit status.

    ``listener`` is a bound socket to serve on (a worker's SO_REUSEPORT socket);
    ``extra_headers`` go on every response (a worker names itself). If ``handover`` is
    set when the stop comes, other workers are listening: held clients are told to poll
    again at once (``Retry-After: 0``) instead of in a second. Once listening, the address
    is announced on ``ready_fd`` (:mod:`geventcomet.ready`); a start that fails closes it.
    Several processes (``config.workers`` > 1) are :mod:`geventcomet.supervisor`'s job.
    """
    if config.workers > 1 and listener is None:
        raise ValueError("server.serve() runs one process: run geventcomet.supervisor.run_workers() "
                         f"for --workers {config.workers}")
    raise_open_file_limit()
    try:
        server = make_server(config, listener=listener)
    except (OSError, ValueError, BackendError) as exc:
        log.error("cannot start: %s", exc)
        ready.withdraw(ready_fd)
        return 1
    server.app.extra_headers = extra_headers
    tune_gc(server.app.stats)
    try:
        server.start()  # binds here when given an address
    except OSError as exc:
        log.error("cannot start: %s", exc)
        ready.withdraw(ready_fd)
        server.app.close()
        return 1
    try:
        metrics_listener = serve_metrics_port(config, server.app.metrics.exposition)  # None without the flag
    except OSError as exc:
        log.error("cannot start: --metrics-port %d: %s", config.metrics_port, exc)
        ready.withdraw(ready_fd)
        server.stop()
        server.app.close()
        return 1
    log.info("geventcomet listening on http://%s:%d/ (max %d waiting requests)",
             server.server_host, server.server_port, server.app.max_waiting)
    ready.announce(ready_fd, server.server_host, server.server_port)
    stop = stop or Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    server.app.service.draining = True  # /readyz answers 503 before any held request is told to reconnect
    if handover is not None and handover.is_set():
        server.app.reconnect_after_s = 0
    elif config.drain_delay_s:
        log.info("draining: /readyz answers 503 for %.1f s while requests are still served", config.drain_delay_s)
        gevent.sleep(config.drain_delay_s)  # the load balancer's probe sees 503 and stops sending meanwhile
    log.info("stopping: answering %d held requests with reconnect", server.app.hub.waiting)
    server.stop_gracefully()
    if metrics_listener is not None:
        metrics_listener.stop(timeout=1)
    log.info("stopped")
    return 0

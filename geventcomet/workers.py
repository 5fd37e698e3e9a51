"""Inside a worker process of ``geventcomet serve --workers N`` (the supervisor is
:mod:`geventcomet.supervisor`).

A worker is started by its supervisor with four things: its configuration as JSON in
:data:`WORKER_ENV`, the write end of a heartbeat pipe (:mod:`geventcomet.heartbeat`),
the write end of a readiness pipe (:mod:`geventcomet.ready`) and the write end of a
metrics pipe, on which it reports its counters every second and once more as it stops
(:mod:`geventcomet.metrics_workers`). It binds its own
listening socket to the supervisor's port with ``SO_REUSEPORT`` (the kernel spreads new
connections across every socket bound so), serves like a single server
(:func:`geventcomet.server.serve`), announces itself once it listens, and stops:

- gracefully on SIGTERM or SIGINT (held polls answered with a reconnect reply);
- gracefully on SIGUSR1, telling held polls to come back at once (``Retry-After: 0``):
  a restart, the new worker already listens;
- gracefully when its supervisor is gone (its heartbeat write fails).

Every response carries ``X-Geventcomet-Worker: PID``, to see the spreading.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys

import gevent
from gevent.event import Event

from . import heartbeat, ready
from .config import Config
from .logs import configure_logging

log = logging.getLogger("geventcomet.workers")

#: Environment variable carrying a worker's configuration (JSON) from the parent.
WORKER_ENV = "GEVENTCOMET_WORKER_CONFIG"
#: What a worker process runs: monkey-patching first, before anything imports sockets.
WORKER_COMMAND = ("from gevent import monkey; monkey.patch_all(); "
                  "from geventcomet.workers import worker_main; worker_main()")


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with ``SO_REUSEPORT``, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_headers() -> tuple[tuple[str, str], ...]:
    """The header that tells which worker process answered (tests use it to pin workers)."""
    return (("X-Geventcomet-Worker", str(os.getpid())),)


def worker_main() -> None:
    """Entry point of a worker process (monkey-patched by :data:`WORKER_COMMAND`)."""
    # Imported here: gunicorn's workers import this module for worker_headers() alone.
    from . import metrics_workers
    from .metrics import process_numbers
    from .server import LISTEN_BACKLOG, serve

    config = Config(**json.loads(os.environ[WORKER_ENV]))
    configure_logging(config.log_level, config.log_format)
    ready_fd, beat_fd, metrics_fd = ready.take_fd(), heartbeat.take_fd(), metrics_workers.take_fd()
    try:
        listener = reuseport_socket(config.host, config.port)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        log.error("cannot start worker: %s", exc)
        sys.exit(1)
    stop, handover = Event(), Event()
    gevent.spawn(heartbeat.beat, beat_fd, stop)
    reporter = gevent.spawn(metrics_workers.report, metrics_fd, process_numbers, stop)

    def hand_over() -> None:  # SIGUSR1: a restart; the new worker already listens
        handover.set()
        stop.set()

    gevent.signal_handler(signal.SIGUSR1, hand_over)
    code = serve(config, listener, extra_headers=worker_headers(), stop=stop, handover=handover,
                 ready_fd=ready_fd)
    reporter.kill()
    metrics_workers.final_report(metrics_fd, lambda: process_numbers(probe_backend=False))  # its last counts
    sys.exit(code)

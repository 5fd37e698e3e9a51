"""``geventcomet serve --workers N``: N server processes on one port, over a shared backend.

How this works
--------------
The parent (this module's :func:`run_workers`) is a small supervisor that serves no
request. It checks that the backend is shared and reachable, reserves the port
(a bound, never listening ``SO_REUSEPORT`` socket, so ``--port 0`` picks one port
for all), then starts N worker processes. Each worker binds its own listening
socket to that port with ``SO_REUSEPORT``, so the kernel spreads new connections
across the workers, and runs the ordinary server. A notify reaching any worker
wakes waiters on all of them through the backend (Redis pub/sub); a client may
poll a different worker every time because its cursor, not the worker, holds its
position.

- A worker that dies is replaced (with a growing pause if it keeps dying at
  once); its clients' connections break, they re-poll with their cursor, land on
  a live worker and lose nothing.
- SIGTERM or SIGINT to the parent forwards SIGTERM to every worker, which stops
  gracefully (held polls answered with a reconnect reply), then the parent exits 0.
- SIGHUP to the parent recycles the workers one at a time, with no moment when
  nobody listens: a new worker starts and listens first, then the old one stops
  gracefully (SIGUSR1: its held polls are told ``Retry-After: 0``); its clients
  re-poll at once with their cursors and land on the others. A new
  worker that does not start ends the restart and the old one keeps serving. (The
  original ASP.NET design lost every registration when IIS recycled its worker
  process; here recycling is a signal.)
- A worker whose event loop stops answering for ``--worker-stall-timeout`` is killed
  and replaced (:mod:`geventcomet.heartbeat`).
- A worker whose parent disappears stops too (its heartbeat write fails, or its
  parent pid changes).
- Every response carries ``X-Geventcomet-Worker: PID``, to see the spreading.

The memory backend is refused: each worker would keep its own events and
registrations, so a notify reaching one worker would never wake a client held by
another. SQLite is refused as well: its wake-ups do not cross processes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import gevent
from gevent.event import Event

from . import heartbeat
from .config import Config
from .logs import configure_logging

log = logging.getLogger("geventcomet.workers")

#: Environment variable carrying a worker's configuration (JSON) from the parent.
WORKER_ENV = "GEVENTCOMET_WORKER_CONFIG"
#: A worker that dies sooner than this after starting counts as crashing at start.
QUICK_DEATH_S = 2.0
#: Pause before replacing a worker that keeps crashing at start: doubling up to this.
RESTART_PAUSE_CAP_S = 5.0
#: How long workers get to stop gracefully before they are killed.
STOP_TIMEOUT_S = 10.0
#: How long all workers get to start listening.
START_TIMEOUT_S = 30.0
_WORKER_CMD = ("from gevent import monkey; monkey.patch_all(); "
               "from geventcomet.workers import worker_main; worker_main()")


def check_shared_backend(config: Config) -> None:
    """Refuse backends that several processes cannot share, saying why."""
    scheme = config.backend.split(":", 1)[0].lower()
    if scheme == "memory":
        raise ValueError(
            f"--workers {config.workers} needs a shared backend such as --backend redis://HOST:PORT/DB: "
            "with the memory backend every worker keeps its own events and registrations, so a notify "
            "reaching one worker would never wake clients waiting on another")
    if scheme == "sqlite":
        raise ValueError(
            f"--workers {config.workers} cannot use the sqlite backend: its wake-ups do not cross "
            "processes; use --backend redis://HOST:PORT/DB for several workers (or one sqlite worker)")


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` with ``SO_REUSEPORT``, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    """Keeps ``config.workers`` worker processes running until told to stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = Event()
        self.procs: dict[int, subprocess.Popen] = {}  # slot -> running worker
        self.ready: dict[int, Event] = {}
        self.failed = Event()  # a worker died during start-up
        self.started = False  # every worker listened once
        self._env: dict[str, str] = {}
        self._relays: dict[int, gevent.Greenlet] = {}  # pid -> the greenlet copying its log
        self._restarting: gevent.Greenlet | None = None

    def run(self) -> int:
        config = self.config
        check_shared_backend(config)
        from .backends import open_backend
        open_backend(config).close()  # a clear error now, rather than N crashing workers
        reserved = reuseport_socket(config.host, config.port)
        port = reserved.getsockname()[1]
        worker_config = dataclasses.replace(config, workers=1, port=port)
        self._env = {**os.environ, WORKER_ENV: json.dumps(dataclasses.asdict(worker_config))}
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self.stopping.set)
        gevent.signal_handler(signal.SIGHUP, self.restart)
        self.ready = {slot: Event() for slot in range(config.workers)}
        keepers = [gevent.spawn(self._keep, slot) for slot in range(config.workers)]
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._all_ready():
                remaining = deadline - time.monotonic()
                if self.failed.is_set() or self.stopping.is_set() or remaining <= 0:
                    log.error("cannot start: not every worker started listening (see the log above)")
                    return 1
                waiting_for = [e for e in self.ready.values() if not e.is_set()]
                gevent.wait([self.failed, self.stopping, *waiting_for], timeout=remaining, count=1)
            self.started = True
            log.info("geventcomet: all %d workers listening on http://%s:%d/ (pids %s)", config.workers,
                     config.host, port, " ".join(str(p.pid) for p in self.procs.values()))
            self.stopping.wait()
            log.info("stopping %d workers", len(self.procs))
            return 0
        finally:
            self.stopping.set()
            self._stop_all()
            gevent.killall(keepers, timeout=1)
            reserved.close()

    def _keep(self, slot: int) -> None:
        quick_deaths = 0
        while not self.stopping.is_set():
            ready = self.ready.setdefault(slot, Event())
            ready.clear()
            proc = self.procs[slot] = self._spawn(ready)
            started = time.monotonic()
            code = proc.wait()
            self._relays.pop(proc.pid).join(timeout=1)
            while self.procs[slot] is not proc and not self.stopping.is_set():
                proc, started = self.procs[slot], time.monotonic()  # a restart handed it over
                code = proc.wait()
                self._relays.pop(proc.pid).join(timeout=1)
            if self.stopping.is_set():
                return
            if not self.started:
                self.failed.set()  # during start-up: the parent reports it and exits
                return
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            pause = min(0.1 * 2 ** quick_deaths, RESTART_PAUSE_CAP_S) if quick_deaths else 0
            log.warning("worker %d (pid %d) exited with status %s; starting a replacement%s", slot, proc.pid,
                        code, f" in {pause:.1f} s" if pause else "")
            if self.stopping.wait(pause):
                return

    def _spawn(self, ready: Event) -> subprocess.Popen:
        beat_read, beat_write = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CMD],
                                    env={**self._env, heartbeat.ENV: str(beat_write)}, pass_fds=(beat_write,),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except BaseException:
            os.close(beat_read)
            raise
        finally:
            os.close(beat_write)
        self._relays[proc.pid] = gevent.spawn(self._relay, proc, ready)
        gevent.spawn(heartbeat.watch, proc, beat_read, ready, self.config.worker_stall_timeout_s, START_TIMEOUT_S)
        return proc

    def restart(self) -> None:
        """Recycle every worker, one at a time (SIGHUP); see the module docstring."""
        if not self.started or self.stopping.is_set():
            log.warning("not restarting: the workers are still starting or already stopping")
        elif self._restarting is not None and not self._restarting.dead:
            log.warning("a restart is already under way; this one is ignored")
        else:
            self._restarting = gevent.spawn(self._restart_all)

    def _restart_all(self) -> None:
        log.info("restarting %d workers, one at a time", len(self.procs))
        for slot in sorted(self.procs):
            if self.stopping.is_set():
                return
            ready = Event()
            new = self._spawn(ready)
            gevent.wait([ready, self.stopping, self._relays[new.pid]], timeout=START_TIMEOUT_S, count=1)
            if self.stopping.is_set() or not ready.is_set():
                if not self.stopping.is_set():
                    log.error("restart stopped: a new worker did not start listening; worker %d "
                              "(pid %d) keeps serving", slot, self.procs[slot].pid)
                _stop(new, timeout_s=1.0)
                self._relays.pop(new.pid).join(timeout=1)
                return
            old, self.procs[slot] = self.procs[slot], new  # its keeper watches the new one
            log.info("worker %d: pid %d is listening; stopping pid %d", slot, new.pid, old.pid)
            _stop(old, STOP_TIMEOUT_S, signal.SIGUSR1)  # a graceful stop; its clients come back at once
        log.info("restart done: workers %s", " ".join(str(p.pid) for p in self.procs.values()))

    def _all_ready(self) -> bool:
        return len(self.ready) == self.config.workers and all(e.is_set() for e in self.ready.values())

    @staticmethod
    def _relay(proc: subprocess.Popen, ready: Event) -> None:
        """Copy a worker's log lines to ours; its "listening on" line means it is ready."""
        for line in proc.stderr or ():
            sys.stderr.write(line)
            if "listening on http://" in line:
                ready.set()
        sys.stderr.flush()

    def _stop_all(self) -> None:
        procs = [p for p in self.procs.values() if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            _stop(proc, max(deadline - time.monotonic(), 0.1), signum=None)
        if self._restarting is not None:  # it sees `stopping` and stops the worker it started
            self._restarting.join(timeout=STOP_TIMEOUT_S)


def _stop(proc: subprocess.Popen, timeout_s: float, signum: int | None = signal.SIGTERM) -> None:
    """Send ``signum`` (a graceful stop; None: already sent), then SIGKILL after ``timeout_s``."""
    if signum is not None and proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait(5)


def run_workers(config: Config) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit status."""
    return Supervisor(config).run()


# -- inside a worker -----------------------------------------------------------

def worker_headers() -> tuple[tuple[str, str], ...]:
    """The header that tells which worker process answered (tests use it to pin workers)."""
    return (("X-Geventcomet-Worker", str(os.getpid())),)


def worker_main() -> None:
    """Entry point of a worker process (monkey-patched by its command line)."""
    from .server import LISTEN_BACKLOG, serve

    config = Config(**json.loads(os.environ[WORKER_ENV]))
    configure_logging(config.log_level)
    try:
        listener = reuseport_socket(config.host, config.port)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        log.error("cannot start worker: %s", exc)
        sys.exit(1)
    stop, handover = Event(), Event()
    beat = os.environ.get(heartbeat.ENV)
    gevent.spawn(heartbeat.beat, int(beat) if beat else None, os.getppid(), stop)

    def hand_over() -> None:  # SIGUSR1: a restart; the new worker already listens
        handover.set()
        stop.set()

    gevent.signal_handler(signal.SIGUSR1, hand_over)
    sys.exit(serve(config, listener, extra_headers=worker_headers(), stop=stop, handover=handover))

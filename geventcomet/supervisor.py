"""``geventcomet serve --workers N``: N server processes on one port, over a shared backend.

How this works
--------------
The supervisor (:func:`run_workers`) is a small process that serves no request. It
checks that the backend is shared (:attr:`Backend.shared <geventcomet.backends.Backend.shared>`)
and reachable, reserves the port (a bound, never listening ``SO_REUSEPORT`` socket, so
``--port 0`` picks one port for all), then starts N worker processes
(:mod:`geventcomet.workers`). Each binds its own listening socket to that port with
``SO_REUSEPORT``, so the kernel spreads new connections across the workers. A notify
reaching any worker wakes waiters on all of them through the backend (Redis pub/sub); a
client may poll a different worker every time because its cursor, not the worker, holds
its position.

Each worker gets two inherited pipes: it announces on the readiness pipe
(:mod:`geventcomet.ready`) once it listens, and it beats on the heartbeat pipe
(:mod:`geventcomet.heartbeat`), and it reports its metrics on a third pipe: the supervisor
keeps the whole server's sum, retired workers included, in a file every worker's ``/metrics``
reads, and serves ``--metrics-port`` itself (:mod:`geventcomet.metrics_workers`). A worker's
log goes straight to the supervisor's stderr.

- Start-up: once every worker has announced itself, the supervisor logs "all N workers
  listening" and announces itself on its own readiness pipe, with the workers' pids. A
  worker that exits (or closes its readiness pipe) before listening fails the start at
  once: the supervisor stops the others and exits 1.
- A worker that dies is replaced (with a growing pause if it keeps dying at
  once); its clients' connections break, they re-poll with their cursor, land on
  a live worker and lose nothing.
- SIGTERM or SIGINT to the supervisor forwards SIGTERM to every worker, which stops
  gracefully (held polls answered with a reconnect reply), then the supervisor exits 0.
- SIGHUP recycles the workers one at a time, with no moment when nobody listens: a new
  worker starts and announces itself first, then the old one stops gracefully (SIGUSR1:
  its held polls are told ``Retry-After: 0``); its clients re-poll at once with their
  cursors and land on the others. A new worker that does not start ends the restart and
  the old one keeps serving. (The original ASP.NET design lost every registration when
  IIS recycled its worker process; here recycling is a signal.)
- A worker whose event loop stops answering for ``--worker-stall-timeout`` is killed
  and replaced; a worker whose supervisor is gone stops (both: the heartbeat pipe).

Runs in a gevent monkey-patched process (the ``geventcomet`` command is one): the
keepers wait on their worker processes in greenlets.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import gevent
from gevent.event import Event

from . import heartbeat, metrics_workers, ready
from .backends import backend_class, open_backend
from .config import Config
from .errors import BackendError
from .metrics_families import exposition
from .metrics_port import serve_metrics_port
from .workers import WORKER_COMMAND, WORKER_ENV, reuseport_socket

log = logging.getLogger("geventcomet.supervisor")

#: A worker that dies sooner than this after starting counts as crashing at start.
QUICK_DEATH_S = 2.0
#: Pause before replacing a worker that keeps crashing at start: doubling up to this.
RESTART_PAUSE_CAP_S = 5.0
#: How long workers get to stop gracefully before they are killed.
STOP_TIMEOUT_S = 10.0
#: How long a worker gets to start listening.
START_TIMEOUT_S = 30.0


def check_shared_backend(config: Config) -> None:
    """Refuse a backend that several processes cannot share, saying why (ValueError)."""
    if not backend_class(config.backend).shared:
        scheme = config.backend.split(":", 1)[0].lower()
        raise ValueError(
            f"--workers {config.workers} cannot use the {scheme} backend, which is not shared between "
            "processes: a notify reaching one worker would never wake clients waiting on another. "
            f"--workers {config.workers} needs a shared backend such as --backend redis://HOST:PORT/DB "
            "(or run one process)")


class Supervisor:
    """Keeps ``config.workers`` worker processes running until told to stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = Event()
        self.procs: dict[int, subprocess.Popen] = {}  # slot -> running worker
        self.listening: dict[int, Event] = {slot: Event() for slot in range(config.workers)}
        self.failed = Event()  # a worker died (or gave up) during start-up
        self.started = False  # every worker listened once
        self.port = config.port
        self._env: dict[str, str] = {}
        self._restarting: gevent.Greenlet | None = None
        #: The whole server's metrics: what every worker reported (see metrics_workers).
        self.metrics = metrics_workers.Aggregate()

    def run(self, ready_fd: int | None = None) -> int:
        """Run until SIGTERM/SIGINT; the exit status. Announces on ``ready_fd`` once all listen."""
        config = self.config
        reserved = reuseport_socket(config.host, config.port)
        self.port = reserved.getsockname()[1]
        # The supervisor serves --metrics-port (the sum); workers serve /metrics from its file.
        worker_config = dataclasses.replace(config, workers=1, port=self.port, metrics_port=0)
        metrics_dir = tempfile.mkdtemp(prefix="geventcomet-metrics-")
        self.metrics.path = os.path.join(metrics_dir, "merged.json")
        self.metrics.write()
        self._env = {**os.environ, WORKER_ENV: json.dumps(dataclasses.asdict(worker_config)),
                     metrics_workers.FILE_ENV: self.metrics.path}
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self.stopping.set)
        gevent.signal_handler(signal.SIGHUP, self.restart)
        keepers: list[gevent.Greenlet] = []
        metrics_server = None
        try:
            metrics_server = serve_metrics_port(config, lambda: exposition(self.metrics.merged))
            keepers = [gevent.spawn(self._keep, slot) for slot in range(config.workers)]
            if not self._wait_all_listening():
                log.error("cannot start: not every worker started listening (see the log above)")
                return 1
            self.started = True
            pids = tuple(p.pid for p in self.procs.values())
            log.info("geventcomet: all %d workers listening on http://%s:%d/ (pids %s)", config.workers,
                     config.host, self.port, " ".join(map(str, pids)))
            ready.announce(ready_fd, config.host, self.port, workers=pids)
            ready_fd = None
            self.stopping.wait()
            log.info("stopping %d workers", len(self.procs))
            return 0
        finally:
            ready.withdraw(ready_fd)
            self.stopping.set()
            self._stop_all()
            gevent.killall(keepers, timeout=1)
            reserved.close()
            if metrics_server is not None:
                metrics_server.stop(timeout=1)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _wait_all_listening(self) -> bool:
        """Until every slot's worker listens (True), or one fails, a stop comes, or time is up."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(e.is_set() for e in self.listening.values()):
            remaining = deadline - time.monotonic()
            if self.failed.is_set() or self.stopping.is_set() or remaining <= 0:
                return False
            waiting_for = [e for e in self.listening.values() if not e.is_set()]
            gevent.wait([self.failed, self.stopping, *waiting_for], timeout=remaining, count=1)
        return True

    def _keep(self, slot: int) -> None:
        quick_deaths = 0
        while not self.stopping.is_set():
            listening = self.listening[slot]
            listening.clear()
            proc, _ = self._spawn(slot, listening)
            self.procs[slot] = proc
            started = time.monotonic()
            code = proc.wait()
            while self.procs[slot] is not proc and not self.stopping.is_set():
                proc, started = self.procs[slot], time.monotonic()  # a restart handed it over
                code = proc.wait()
            if self.stopping.is_set():
                return
            if not self.started:
                self.failed.set()  # during start-up: the supervisor reports it and exits
                return
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            pause = min(0.1 * 2 ** quick_deaths, RESTART_PAUSE_CAP_S) if quick_deaths else 0
            log.warning("worker %d (pid %d) exited with status %s; starting a replacement%s", slot, proc.pid,
                        code, f" in {pause:.1f} s" if pause else "")
            if self.stopping.wait(pause):
                return

    def _spawn(self, slot: int, listening: Event) -> tuple[subprocess.Popen, gevent.Greenlet]:
        """Start a worker; the greenlet returned ends True once it listens, False if it never will."""
        beat_read, beat_write = os.pipe()
        metrics_read, metrics_write = os.pipe()
        announced = ready.ReadyPipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER_COMMAND],
                env={**self._env, heartbeat.ENV: str(beat_write), metrics_workers.FD_ENV: str(metrics_write),
                     **announced.child_env()},
                pass_fds=(beat_write, metrics_write, *announced.pass_fds), stdout=subprocess.DEVNULL)
        except BaseException:
            os.close(beat_read)
            os.close(metrics_read)
            announced.close()
            raise
        finally:
            ready.close_now(beat_write)  # at once, so that the worker's exit is an end of file here
            ready.close_now(metrics_write)
            announced.spawned()
        gevent.spawn(self.metrics.watch, proc.pid, metrics_read)
        waiting = gevent.spawn(self._await_listening, slot, proc, announced, listening)
        gevent.spawn(heartbeat.watch, proc, beat_read, listening, self.config.worker_stall_timeout_s,
                     START_TIMEOUT_S)
        return proc, waiting

    def _await_listening(self, slot: int, proc: subprocess.Popen, announced: ready.ReadyPipe,
                         listening: Event) -> bool:
        try:
            announcement = announced.wait(START_TIMEOUT_S)
        except (TimeoutError, ValueError) as exc:
            log.error("worker %d (pid %d): %s", slot, proc.pid, exc)
            announcement = None
        if announcement is None:
            if not self.stopping.is_set():
                log.error("worker %d (pid %d) failed before listening", slot, proc.pid)
                if not self.started:
                    self.failed.set()
            return False
        listening.set()
        log.info("worker %d (pid %d) is listening", slot, proc.pid)
        return True

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
            new, waiting = self._spawn(slot, Event())
            gevent.wait([waiting, self.stopping], count=1)
            if self.stopping.is_set() or not waiting.value:
                if not self.stopping.is_set():
                    log.error("restart stopped: a new worker did not start listening; worker %d "
                              "(pid %d) keeps serving", slot, self.procs[slot].pid)
                stop_worker(new, timeout_s=1.0)
                return
            old, self.procs[slot] = self.procs[slot], new  # its keeper watches the new one
            log.info("worker %d: pid %d is listening; stopping pid %d", slot, new.pid, old.pid)
            stop_worker(old, STOP_TIMEOUT_S, signal.SIGUSR1)  # a graceful stop; its clients come back at once
        log.info("restart done: workers %s", " ".join(str(p.pid) for p in self.procs.values()))

    def _stop_all(self) -> None:
        procs = [p for p in self.procs.values() if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        # Each worker first answers /readyz 503 for --drain-delay while still serving.
        deadline = time.monotonic() + STOP_TIMEOUT_S + getattr(self.config, "drain_delay_s", 0.0)
        for proc in procs:
            stop_worker(proc, max(deadline - time.monotonic(), 0.1), signum=None)
        if self._restarting is not None:  # it sees `stopping` and stops the worker it started
            self._restarting.join(timeout=STOP_TIMEOUT_S)


def stop_worker(proc: subprocess.Popen, timeout_s: float, signum: int | None = signal.SIGTERM) -> None:
    """Send ``signum`` (a graceful stop; None: already sent), then SIGKILL after ``timeout_s``."""
    if signum is not None and proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait(5)


def run_workers(config: Config, ready_fd: int | None = None) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit status.

    A start-up error (a backend that is not shared or not reachable, a port in use) is
    logged in one line and gives 1; ``ready_fd`` (:mod:`geventcomet.ready`) is then closed.
    """
    try:
        check_shared_backend(config)
        open_backend(config).close()  # a clear error now, rather than N crashing workers
        return Supervisor(config).run(ready_fd)
    except (OSError, ValueError, BackendError) as exc:
        log.error("cannot start: %s", exc)
        ready.withdraw(ready_fd)
        return 1

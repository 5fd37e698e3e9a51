"""A worker's heartbeat to its supervisor, so that a stopped or stuck worker is replaced.

A worker that is stopped (SIGSTOP) or stuck in a loop keeps its listening socket: the
kernel's SO_REUSEPORT goes on giving it a share of new connections, and its held
clients get nothing. Its process is alive, so only its event loop can say it works.

Each worker writes a byte to a pipe every :data:`INTERVAL_S` from a greenlet (:func:`beat`),
so the byte comes only while its loop turns; the supervisor waits on every pipe
(:func:`watch`) and kills (SIGKILL) a worker silent for ``--worker-stall-timeout``; the
worker's keeper then starts a replacement. The timeout must be longer than the longest
loop turn: one fan-out wakes every waiter of a channel in one turn (100,000 took 3-4 s
here), hence the default of 10 s. The same pipe is how a worker learns that its
supervisor is gone (the write fails with EPIPE), the one mechanism for that.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import MutableMapping

import gevent
from gevent.event import Event
from gevent.socket import wait_read

log = logging.getLogger("geventcomet.workers")

#: A worker writes a heartbeat byte this often (seconds).
INTERVAL_S = 0.5
#: Environment variable naming the heartbeat pipe's write end in a worker.
ENV = "GEVENTCOMET_HEARTBEAT_FD"


def watch(proc: subprocess.Popen, beat_read: int, ready: Event, stall_s: float, start_timeout_s: float) -> None:
    """Kill ``proc`` if its heartbeat stops for ``stall_s`` (``start_timeout_s`` until ``ready``).

    Runs in the supervisor, one greenlet per worker; closes ``beat_read`` when done.
    """
    os.set_blocking(beat_read, False)
    last_beat = time.monotonic()
    listened = False
    try:
        while True:
            # Until it listens, a worker may be importing or connecting: the start-up bound applies.
            # The stall bound counts from when it listens at the earliest: a worker whose start took
            # longer than stall_s has not beaten yet, and is not stuck for that.
            if not listened and ready.is_set():
                listened, last_beat = True, max(last_beat, time.monotonic())
            silent_s = time.monotonic() - last_beat
            limit_s = stall_s if listened else start_timeout_s
            if silent_s >= limit_s:
                if proc.poll() is None:
                    log.warning("worker pid %d has not answered for %.1f s (stopped or stuck); "
                                "killing it so that a replacement takes its connections",
                                proc.pid, silent_s)
                    proc.kill()
                return
            try:  # at most stall_s at a time, so that becoming ready tightens the bound
                wait_read(beat_read, min(limit_s - silent_s, stall_s))
            except TimeoutError:  # gevent raises socket.timeout, an alias of TimeoutError
                continue
            try:
                if not os.read(beat_read, 4096):
                    return  # it exited: its keeper handles that
            except BlockingIOError:
                continue
            last_beat = time.monotonic()
    finally:
        os.close(beat_read)


def take_fd(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The heartbeat pipe's write end this worker inherited (None: no supervisor), out of ``environ``."""
    raw = environ.pop(ENV, None)
    return int(raw) if raw is not None and raw.isdigit() else None


def beat(beat_write: int | None, stop: Event) -> None:
    """Tell the supervisor this loop turns; set ``stop`` once the supervisor is gone.

    The supervisor holds the only read end: when it exits, however it dies (SIGKILL
    included), the next write fails with EPIPE (Python ignores SIGPIPE), so a worker
    learns within :data:`INTERVAL_S` that nobody supervises it. No other check is needed.
    """
    if beat_write is None:
        return
    os.set_blocking(beat_write, False)
    while True:  # also while stopping: a graceful stop takes a while, and is not a stall
        gevent.sleep(INTERVAL_S)
        try:
            os.write(beat_write, b".")
        except BlockingIOError:
            pass  # the supervisor is behind reading; it will see the pipe is not empty
        except OSError:  # EPIPE: nobody reads it any more
            if not stop.is_set():
                log.warning("the supervisor is gone (its heartbeat pipe is closed); stopping")
                stop.set()
            os.close(beat_write)
            return

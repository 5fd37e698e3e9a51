"""Metrics over ``--workers N``: each worker reports to its supervisor, which keeps the sum.

How this works
--------------
Each worker inherits the write end of a pipe (named by :data:`FD_ENV`) and writes its
numbers (:mod:`geventcomet.metrics_numbers`) as one JSON line every :data:`REPORT_INTERVAL_S`
and once more when it stops (:func:`report`, :func:`final_report`). The supervisor reads
every worker's pipe (:meth:`Aggregate.watch`): the last line of a live worker is its share;
when the pipe ends (the worker exited, however: SIGHUP's hand-over, a crash, SIGKILL) its
last numbers move into the retired sum. The server's numbers are the retired sum plus the
live shares (:func:`~geventcomet.metrics_numbers.merge`); gauges count only the live ones.

So a replaced worker neither takes its counts away (counters stay monotonic: its last report
stays in the sum) nor leaves a stale series (there is no per-worker series at all). A worker
killed with SIGKILL loses what it counted after its last report, at most one interval.

The supervisor writes the merged numbers to a small file (:data:`FILE_ENV`, replaced
atomically with ``os.replace``) that every worker's ``/metrics`` reads: the answer is the
same whichever worker the kernel hands the scrape to, and never goes down between two
scrapes answered by different workers (a worker adding its own fresher numbers to the
others' reports would make the sum go back and forth, which Prometheus reads as resets).

Not prometheus_client's multiprocess mode: it keeps one mmap file per process id and sums
them at scrape time, so a replaced worker's files must be cleaned by hand (``mark_process_dead``),
its gauges linger until then, and counters go backwards when its files are removed; it also
needs every metric as a prometheus_client object, locked on every increment.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, MutableMapping

import gevent
import gevent.os
from gevent.event import Event
from gevent.socket import wait_read

from .metrics_numbers import Numbers, add_into, empty, merge

log = logging.getLogger("geventcomet.workers")

#: Names the merged numbers' file in a worker's environment.
FILE_ENV = "GEVENTCOMET_METRICS_FILE"
#: Names the write end of a worker's metrics pipe.
FD_ENV = "GEVENTCOMET_METRICS_FD"
#: A worker reports this often (seconds): how old a scrape's numbers may be.
REPORT_INTERVAL_S = 1.0
#: How long a stopping worker waits to hand over its last report.
FINAL_REPORT_TIMEOUT_S = 2.0
#: A report longer than this is not one (a worker's is a few KB).
MAX_REPORT_BYTES = 1024 * 1024


# -- in a worker -------------------------------------------------------------

def take_fd(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The metrics pipe's write end this worker inherited (None: no supervisor), out of ``environ``."""
    raw = environ.pop(FD_ENV, None)
    return int(raw) if raw is not None and raw.isdigit() else None


def send(fd: int, numbers: Numbers | None) -> bool:
    """Write one report line; False once the supervisor is gone."""
    if numbers is None:
        return True
    data = json.dumps(numbers, separators=(",", ":")).encode() + b"\n"
    try:
        while data:
            data = data[gevent.os.nb_write(fd, data):]
    except OSError:  # EPIPE: nobody reads; the heartbeat stops this worker
        return False
    return True


def report(fd: int | None, read: Callable[[], Numbers | None], stop: Event) -> None:
    """Send ``read()`` every :data:`REPORT_INTERVAL_S` until ``stop`` (a worker's greenlet)."""
    if fd is None:
        return
    gevent.os.make_nonblocking(fd)
    while not stop.wait(REPORT_INTERVAL_S):
        try:
            numbers = read()
        except Exception:  # a bug here must not stop the reports: the sum would go stale silently
            log.exception("could not read this worker's metrics; the next report tries again")
            continue
        if not send(fd, numbers):
            return


def final_report(fd: int | None, read: Callable[[], Numbers | None]) -> None:
    """Send the last numbers (the backend is closed by now: ``read`` must not probe it), then close."""
    if fd is None:
        return
    try:
        with gevent.Timeout(FINAL_REPORT_TIMEOUT_S, False):  # a supervisor not reading must not hold the exit
            send(fd, read())
    finally:
        os.close(fd)


# -- in the supervisor ---------------------------------------------------------

class Aggregate:
    """The server's numbers: retired workers' sum plus each live worker's last report."""

    def __init__(self, path: str | None = None) -> None:
        self.retired: Numbers = empty()
        self.retired["counters"]["worker_exits"] = 0
        self.live: dict[int, Numbers] = {}
        #: Where the merged numbers are written for the workers' ``/metrics`` (None: nowhere).
        self.path = path
        self.write()

    def update(self, pid: int, numbers: Numbers) -> None:
        self.live[pid] = numbers
        self.write()

    def retire(self, pid: int) -> None:
        """Worker ``pid`` has exited: its last numbers join the retired sum."""
        last = self.live.pop(pid, None)
        if last is not None:
            add_into(self.retired, last)
            self.retired["info"] = last.get("info", {})
        self.retired["counters"]["worker_exits"] += 1
        self.write()

    def merged(self) -> Numbers:
        return merge(self.retired, list(self.live.values()))

    def write(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(self.merged(), file, separators=(",", ":"))
        os.replace(temporary, self.path)  # a reader sees the old file or the new, never half

    def watch(self, pid: int, read_fd: int) -> None:
        """Take worker ``pid``'s reports until its pipe ends, then retire it; closes ``read_fd``."""
        os.set_blocking(read_fd, False)
        pending = b""
        try:
            while True:
                wait_read(read_fd)
                try:
                    chunk = os.read(read_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                *lines, pending = (pending + chunk).split(b"\n")
                lines = [line for line in lines if line.strip()]
                if len(pending) > MAX_REPORT_BYTES:
                    log.warning("worker pid %d sent a metrics report over %d bytes; dropped", pid, MAX_REPORT_BYTES)
                    pending = b""
                for line in reversed(lines):  # the latest report replaces the earlier ones
                    if self._take(pid, line):
                        break
        finally:
            os.close(read_fd)
            self.retire(pid)

    def _take(self, pid: int, line: bytes) -> bool:
        try:
            numbers = json.loads(line)
        except ValueError:
            numbers = None
        try:
            merge(self.retired, [numbers])  # a report that cannot be added up is refused whole
        except (TypeError, ValueError, KeyError, AttributeError):
            log.warning("worker pid %d sent a metrics report that is not one; dropped", pid)
            return False
        self.update(pid, numbers)
        return True


def read_merged(path: str) -> Numbers | None:
    """The merged numbers the supervisor wrote (None if it has not, or the file is unreadable)."""
    try:
        with open(path, encoding="utf-8") as file:
            numbers = json.load(file)
    except (OSError, ValueError):
        return None
    return numbers if isinstance(numbers, dict) else None

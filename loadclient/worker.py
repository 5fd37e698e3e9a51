"""``--procs``: client groups in worker processes, driven over their stdin/stdout.

The parent keeps the notifier (so there is one sequence per channel) and starts
one ``python -m loadclient.worker`` per process. The conversation, one JSON
object per line:

- parent -> worker: the group's spec (url, channels, clients, ramp, source, ...);
- worker -> parent: ``{"progress": report}`` every interval, ``{"ready": report}``
  once all its clients poll;
- parent -> worker: ``{"finish": final_seqs, "timeout": s}`` after the end markers;
- worker -> parent: ``{"report": report}``, then it exits.

A worker whose stdin closes finishes at once, so it never outlives its parent.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from subprocess import PIPE

import gevent
from gevent import subprocess
from gevent.event import AsyncResult, Event
from gevent.fileobject import FileObject

from .group import ClientGroup
from .report import Report
from .resources import cpu_seconds, raise_open_file_limit, settle

log = logging.getLogger(__name__)


class RemoteGroup:
    """A :class:`~loadclient.group.ClientGroup` in a child process, seen from the parent."""

    def __init__(self, spec: dict) -> None:
        # The worker must import this very loadclient, whatever the current directory.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "loadclient.worker"], stdin=PIPE,
                                     stdout=PIPE, env={**os.environ, "PYTHONPATH": path})
        self.report = Report()
        self.ready = Event()
        self._final: AsyncResult = AsyncResult()
        self._send(spec)
        self._reader = gevent.spawn(self._read)

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            log.warning("worker %d is gone: %s", self.proc.pid, exc)

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            for key in ("progress", "ready", "report"):
                if key in message:
                    self.report = Report.from_wire(message[key])
            if "ready" in message:
                self.ready.set()
            if "report" in message:
                self._final.set(self.report)
        self.ready.set()  # a dead worker must not hold up the run
        if not self._final.ready():
            self._final.set(self.report)

    def finish(self, final_seqs: dict[str, int], timeout_s: float) -> Report:
        """Tell the worker the run is over; its final report (bounded wait)."""
        self._send({"finish": final_seqs, "timeout": timeout_s})
        report = self._final.get(timeout=timeout_s + 30)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _worker_main() -> int:
    logging.basicConfig(level=os.environ.get("LOADCLIENT_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    raise_open_file_limit()
    stdin = FileObject(sys.stdin.fileno(), "rb", close=False)
    spec = json.loads(stdin.readline())
    if spec.get("nice"):
        os.nice(spec["nice"])  # before the first connect: the ramp runs at this priority too
    group = ClientGroup(spec["url"], spec["channels"], channels_per_client=spec["channels_per_client"],
                        poll_timeout_s=spec["poll_timeout"], first_index=spec["first_index"],
                        source=spec["source"], think_s=spec.get("think", 0.0), token=spec.get("token"))

    def say(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def progress() -> None:
        while True:
            gevent.sleep(spec["progress_interval"])  # pacing the progress reports
            say({"progress": group.report.to_wire()})

    group.add(spec["clients"], spec["ramp"])
    ticker = gevent.spawn(progress)

    def announce_ready() -> None:
        group.ready.wait()
        settle()
        say({"ready": group.report.to_wire()})

    announcer = gevent.spawn(announce_ready)
    line = stdin.readline()
    announcer.kill()
    order = json.loads(line) if line else {"finish": {}, "timeout": 0.0}
    report = group.finish(order["finish"], order["timeout"])
    ticker.kill()
    report.cpu_s = cpu_seconds()
    say({"report": report.to_wire()})
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())

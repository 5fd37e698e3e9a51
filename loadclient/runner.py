"""A whole run: ramp the clients, publish for a while, end, count. The Python API.

Phases, each bounded in time:

1. **ramp**: every client connects and takes its first cursor, then long-polls;
2. **notify** (``duration`` s): the notifier publishes (paced, flat out, or not at all);
   it starts only once every client polls, so every client is owed every event;
3. **end**: the notifier publishes an end marker on each channel; each client
   stops once it has its markers; the groups count what each client still owed.
"""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import gevent
from gevent.event import Event

from .fakeclient import REPLY_GRACE_S
from .group import ClientGroup
from .httpconn import Connection, HTTPError, split_url
from .notifier import Notifier
from .report import SHORT_BELOW, Report
from .resources import cpu_seconds, raise_open_file_limit, source_addresses

log = logging.getLogger(__name__)

#: Seconds of notifying before the progress line judges the rate (the first ones ramp up).
PROGRESS_GRACE_S = 2.0


@dataclass
class Options:
    """Everything a run can be told; the CLI flags map one to one (``--notify-rate`` ...)."""

    #: server base URL, ``http://host:port``
    url: str
    #: fake clients in total (over all processes)
    clients: int = 100
    #: clients started per second; 0 = as fast as possible (200 connecting at a time)
    ramp: float = 0.0
    #: seconds of the notify phase, after every client polls
    duration: float = 10.0
    #: number of channels; client *i* polls channel *i* mod K (and the next ones if
    #: ``channels_per_client`` > 1)
    channels: int = 1
    channels_per_client: int = 1
    #: events per second over all channels, round-robin; 0 = none; < 0 = as fast as accepted
    notify_rate: float = 0.0
    #: stop publishing after this many events (None: until ``duration`` ends)
    notify_count: int | None = None
    #: notify connections working in parallel (each owns a share of the channels)
    notify_connections: int = 32
    #: notifies one connection may send before reading their replies, in paced mode (1: one at
    #: a time; see :data:`~loadclient.notifier.PIPELINE`)
    notify_pipeline: int = 1
    #: ``timeout`` each long-poll asks the server for, seconds
    poll_timeout: float = 20.0
    #: pause after each reply before polling again, seconds (0: at once, as a script would)
    think: float = 0.0
    #: processes holding the clients (the notifier stays in this one)
    procs: int = 1
    #: lower those processes' CPU priority by this much (``os.nice``; needs ``procs`` >= 2).
    #: On a machine shared with the server, the fake clients then take the CPU it leaves,
    #: as remote browsers would; latency is stamped on arrival, so it stays the server's.
    nice: int = 0
    #: local addresses to bind client sockets to (None: 127.0.0.2, .3 ... with procs > 1)
    source_ips: list[str] | None = None
    #: channel names are PREFIX0, PREFIX1 ...; default ``lc-RUNID-`` (unique per run)
    channel_prefix: str | None = None
    idempotency: bool = True
    #: seconds between progress lines on stderr; 0 = none
    progress: float = 1.0
    #: bound on the ramp phase; default from the ramp rate
    ready_timeout: float | None = None
    #: bearer token sent as ``Authorization: Bearer`` on every poll, and on every notify
    #: unless ``notify_token`` is given (a server with tokens on)
    token: str | None = None
    #: bearer token for the notifies (e.g. the server's admin token); None: ``token``
    notify_token: str | None = None
    #: a run that published fewer than 90 % of the events asked is still a success (exit 0)
    accept_short: bool = False

    def channel_names(self, run_id: str) -> list[str]:
        prefix = self.channel_prefix if self.channel_prefix is not None else f"lc-{run_id}-"
        return [f"{prefix}{k}" for k in range(self.channels)]


class ServerUnreachable(Exception):
    """Nothing accepts connections at the run's URL (the run stops before it starts)."""


def check_listening(url: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ServerUnreachable` at once if nothing accepts a connection at ``url``.

    Without this a run against a stopped server retried for its whole duration and
    printed only ``errors connect=...`` lines.
    """
    host, port = split_url(url)
    conn = Connection(host, port, timeout_s=timeout_s)
    try:
        conn.open()
    except HTTPError as exc:
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc).split(": ", 1)[-1]).lower()
        raise ServerUnreachable(f"nothing listens at {url} ({reason})") from None
    finally:
        conn.close()


class Run:
    """One run, step by step (the console drives these steps itself; :func:`run` in order)."""

    def __init__(self, options: Options, *, out=sys.stderr) -> None:
        if options.clients < 0 or options.procs < 1 or options.channels < 1:
            raise ValueError("clients >= 0, procs >= 1 and channels >= 1 are required")
        if options.nice and options.procs < 2:
            raise ValueError("--nice needs --procs 2 or more: it lowers the client processes' priority, "
                             "and with one process the notifier would be lowered too")
        raise_open_file_limit()
        self.options = options
        self.out = out
        self.run_id = uuid.uuid4().hex[:8]
        self.channels = options.channel_names(self.run_id)
        self.notify_report = Report(clients=0)
        self.notifier = Notifier(options.url, self.channels, self.notify_report,
                                 connections=options.notify_connections,
                                 idempotency=options.idempotency, run_id=self.run_id,
                                 token=options.notify_token or options.token,
                                 pipeline=options.notify_pipeline)
        self.groups: list = []
        self.stop_requested = Event()
        self._progress: gevent.Greenlet | None = None
        self._t0 = time.monotonic()
        self._cpu0 = cpu_seconds()  # this process may have run other things before
        self.ready_s = 0.0
        self.duration_s = 0.0

    # -- phase 1 --------------------------------------------------------------
    def start(self) -> None:
        """Start the client groups (in this process, or one per worker process)."""
        opts = self.options
        check_listening(opts.url)
        host, _ = split_url(opts.url)
        sources = source_addresses(host, opts.procs, opts.source_ips)
        shares = [opts.clients // opts.procs + (i < opts.clients % opts.procs) for i in range(opts.procs)]
        first = 0
        for i, share in enumerate(shares):
            if opts.procs == 1:
                group = ClientGroup(opts.url, self.channels, channels_per_client=opts.channels_per_client,
                                    poll_timeout_s=opts.poll_timeout, source=sources[i],
                                    floor_for=self.notifier.floor, think_s=opts.think, token=opts.token)
                group.add(share, opts.ramp)
            else:
                from .worker import RemoteGroup
                group = RemoteGroup({
                    "url": opts.url, "channels": self.channels, "clients": share,
                    "channels_per_client": opts.channels_per_client, "poll_timeout": opts.poll_timeout,
                    "first_index": first, "source": sources[i], "ramp": opts.ramp / opts.procs,
                    "progress_interval": opts.progress or 1.0, "think": opts.think, "nice": opts.nice,
                    "token": opts.token})
            first += share
            self.groups.append(group)
        if opts.progress > 0:
            self._progress = gevent.spawn(self._print_progress)

    def wait_ready(self) -> bool:
        """Block (bounded) until every client polls; False if the bound passed first."""
        opts = self.options
        bound = opts.ready_timeout
        if bound is None:
            bound = 60.0 + (opts.clients / opts.ramp if opts.ramp > 0 else opts.clients / 500.0)
        deadline = time.monotonic() + bound
        for group in self.groups:
            if not group.ready.wait(max(0.0, deadline - time.monotonic())):
                log.warning("not every client was polling after %.0f s; going on", bound)
                return False
        self.ready_s = time.monotonic() - self._t0
        return True

    # -- phase 2 --------------------------------------------------------------
    def notify_phase(self, duration: float | None = None) -> None:
        """Publish for ``duration`` seconds (or until :attr:`stop_requested`)."""
        opts = self.options
        start = time.monotonic()
        self.notifier.start(opts.notify_rate, opts.notify_count)
        self.stop_requested.wait(opts.duration if duration is None else duration)
        self.notifier.stop()
        self.duration_s = time.monotonic() - start

    # -- phase 3 --------------------------------------------------------------
    def finish(self) -> Report:
        """End markers, then every group's final count, merged into one report."""
        final = self.notifier.send_end_markers()
        timeout = self.options.poll_timeout + REPLY_GRACE_S
        reports = [None] * len(self.groups)

        def finish_group(i: int) -> None:
            reports[i] = self.groups[i].finish(final, timeout)

        gevent.joinall([gevent.spawn(finish_group, i) for i in range(len(self.groups))])
        if self._progress is not None:
            self._progress.kill()
        self.notifier.close()
        total = self.snapshot(reports)
        total.cpu_s = sum(r.cpu_s for r in reports if r is not None) + cpu_seconds() - self._cpu0
        return total

    def snapshot(self, reports: list | None = None) -> Report:
        """The merged counters now (or of ``reports``)."""
        total = Report()
        for report in reports or [g.report for g in self.groups]:
            if report is not None:
                total.merge(report)
        total.merge(self.notify_report)
        total.cpu_s = 0.0
        total.procs = self.options.procs
        total.ready_s = self.ready_s
        total.duration_s = self.duration_s
        total.notify_rate = self.options.notify_rate
        total.notify_count = self.options.notify_count
        total.notify_connections = len(self.notifier.conns)
        total.notify_pipeline = self.notifier.pipeline
        total.accept_short = self.options.accept_short
        return total

    def close(self) -> None:
        """Kill what is left (after an error): worker processes, greenlets."""
        if self._progress is not None:
            self._progress.kill()
        for group in self.groups:
            if hasattr(group, "kill"):
                group.kill()
        self.notifier.close()

    def _print_progress(self) -> None:
        tty = getattr(self.out, "isatty", lambda: False)()
        while True:
            gevent.sleep(self.options.progress)  # pacing the progress line
            snapshot = self.snapshot()
            line = f"[{time.monotonic() - self._t0:7.1f}s] {snapshot.progress_line()}{self._falling_short(snapshot)}"
            self.out.write(("\r" + line + "\x1b[K") if tty else line + "\n")
            self.out.flush()


    def _falling_short(self, snapshot: Report) -> str:
        """A warning for the progress line while the notifier publishes under 90 % of its rate."""
        began, rate = self.notifier.began, self.notifier.rate
        if began is None or rate <= 0:
            return ""
        elapsed = time.monotonic() - began
        asked = rate * elapsed
        if self.options.notify_count is not None:
            asked = min(asked, self.options.notify_count)
        if elapsed < PROGRESS_GRACE_S or snapshot.events_sent >= SHORT_BELOW * asked:
            return ""
        return (f" | SHORT: notifying {snapshot.events_sent / elapsed:.0f}/s of {rate:g}/s asked "
                f"(a notify takes {snapshot.notify_round_trip_s() * 1000:.0f} ms; "
                f"{len(self.notifier.conns)} connection(s), {self.notifier.pipeline} in flight on each)")


def run(url: str, *, on_ready: Callable[[Run], None] | None = None,
        before_finish: Callable[[Run], None] | None = None, run_class: type[Run] | None = None,
        **options) -> Report:
    """Run a whole load test against ``url`` and return its :class:`Report`.

    ``options`` are the fields of :class:`Options` (``clients``, ``ramp``, ``duration``,
    ``channels``, ``notify_rate``, ``procs`` ...). ``on_ready`` is called once every
    client polls (before any notify), ``before_finish`` after the notify phase while
    the clients still poll; both get the :class:`Run` (e.g. to read the server's
    ``/stats`` at those moments). Must be called from a gevent-friendly context
    (it uses gevent sockets; no monkey-patching needed). ``run_class`` is :class:`Run` or a
    subclass (the Bayeux mode's).
    """
    the_run = (run_class or Run)(Options(url=url, **options))
    try:
        the_run.start()
        the_run.wait_ready()
        if on_ready is not None:
            on_ready(the_run)
        the_run.notify_phase()
        if before_finish is not None:
            before_finish(the_run)
        return the_run.finish()
    except BaseException:
        the_run.close()
        raise

"""The counters a run keeps, and the report made of them (printed, JSON, exit status).

One :class:`Report` per process is updated live by its fake clients (plain integer
adds: no locks are needed between greenlets). With ``--procs`` each worker sends its
report to the parent, which merges them with :meth:`Report.merge`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from .histogram import Histogram

#: Events 1..N of each channel also get latency histograms of their own, so a fan-out
#: run can tell the first notify (cold) from the next ones.
SEQS_TRACKED = 8
#: The latency histograms, each with its per-seq dict ``NAME_by_seq``: ``latency`` ends
#: when the reply reached the client's socket, ``handled_latency`` when the client read it.
_LATENCIES = ("latency", "handled_latency")
_HISTOGRAM_FIELDS = (*_LATENCIES, *(f"{name}_by_seq" for name in _LATENCIES))
#: Integer counters that merge by addition.
_SUMMED = ("clients", "ready", "requests", "responses", "in_flight", "timeouts", "events_sent",
           "events_received", "end_markers_sent", "end_markers_received", "lost", "duplicated",
           "recovered_false", "abandoned", "clients_failed", "notify_errors", "unstamped",
           "notify_busy_s")
#: A run that published less than this share of the events asked is SHORT.
SHORT_BELOW = 0.9
#: Exit status of a run that was correct but published too few events (see :attr:`Report.short`).
EXIT_SHORT = 3


@dataclass
class Report:
    """What a run saw. Counts are totals over all fake clients and processes."""

    #: fake clients started, and how many got their first cursor and went on polling
    clients: int = 0
    ready: int = 0
    #: register requests sent and replies (of any status) received
    requests: int = 0
    responses: int = 0
    in_flight: int = 0
    #: replies saying "timeout: no events" (normal for idle clients)
    timeouts: int = 0
    #: events the notifier had acknowledged (2xx), and events clients received (each
    #: client counts its own; a fan-out to 1,000 clients is 1 sent, 1,000 received)
    events_sent: int = 0
    events_received: int = 0
    end_markers_sent: int = 0
    end_markers_received: int = 0
    #: expected events a client never got, events it got more than once (or backwards)
    lost: int = 0
    duplicated: int = 0
    #: replies with "recovered": false (the server said it could not give everything)
    recovered_false: int = 0
    #: requests cut off by ``remove`` in the console (not counted as unanswered)
    abandoned: int = 0
    #: clients that gave up (a 4xx, or too many errors in a row)
    clients_failed: int = 0
    notify_errors: int = 0
    #: failures by kind: connect, reset, closed, timeout, bad_reply, http_503, http_4xx, ...
    errors: dict[str, int] = field(default_factory=dict)
    #: notify -> arrival latency of every event received: from the notifier's timestamp in
    #: the event to the kernel's stamp on the reply reaching the client's socket. A remote
    #: browser's figure: it leaves out how long a busy load client takes to get to the reply.
    latency: Histogram = field(default_factory=Histogram)
    #: notify -> the fake client reading the reply (arrival plus the load client's own delay)
    handled_latency: Histogram = field(default_factory=Histogram)
    #: replies without the kernel's arrival stamp, whose read time stood in for it
    unstamped: int = 0
    #: both, for each of the first :data:`SEQS_TRACKED` events of a channel, by its seq
    latency_by_seq: dict[int, Histogram] = field(default_factory=dict)
    handled_latency_by_seq: dict[int, Histogram] = field(default_factory=dict)
    #: seconds from start until every client had its cursor and was polling
    ready_s: float = 0.0
    #: seconds of the notify phase (after all clients were ready)
    duration_s: float = 0.0
    procs: int = 1
    #: CPU seconds (user + system) the load client's processes used
    cpu_s: float = 0.0
    #: the notify rate asked (events/s; 0 none, < 0 as fast as accepted) and event count bound
    notify_rate: float = 0.0
    notify_count: int | None = None
    #: notify connections working in parallel, and the seconds notifies spent on them
    #: (request sent to reply read, retries included), summed over connections
    notify_connections: int = 0
    notify_busy_s: float = 0.0
    #: notifies a connection may send before reading their replies (paced mode)
    notify_pipeline: int = 1
    #: a SHORT run (fewer events published than asked) still exits 0
    accept_short: bool = False

    @property
    def unanswered(self) -> int:
        """Requests that never got a reply (errors and cut-off requests included)."""
        return self.requests - self.responses - self.abandoned

    def add_latency(self, seq: int, arrived_s: float, handled_s: float) -> None:
        """Record one received event's notify -> arrival and notify -> handled times."""
        self.latency.add(arrived_s)
        self.handled_latency.add(handled_s)
        if seq <= SEQS_TRACKED:
            for by_seq, seconds in ((self.latency_by_seq, arrived_s), (self.handled_latency_by_seq, handled_s)):
                histogram = by_seq.get(seq)
                if histogram is None:
                    histogram = by_seq[seq] = Histogram()
                histogram.add(seconds)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: "Report") -> None:
        """Add ``other``'s counters into this one (run-level fields are the caller's)."""
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        for name in _LATENCIES:
            getattr(self, name).merge(getattr(other, name))
            mine = getattr(self, f"{name}_by_seq")
            for seq, histogram in getattr(other, f"{name}_by_seq").items():
                mine.setdefault(seq, Histogram()).merge(histogram)
        self.ready_s = max(self.ready_s, other.ready_s)
        self.cpu_s += other.cpu_s

    @property
    def ok(self) -> bool:
        """True when nothing was lost or duplicated, no request went unanswered, no client failed."""
        return (self.lost == 0 and self.duplicated == 0 and self.unanswered == 0
                and self.clients_failed == 0)

    @property
    def events_asked(self) -> int:
        """Events the notify rate asked for in the notify phase (bounded by ``notify_count``)."""
        if self.notify_rate <= 0:
            return 0
        asked = int(self.notify_rate * self.duration_s)
        return asked if self.notify_count is None else min(asked, self.notify_count)

    @property
    def notify_rate_achieved(self) -> float:
        """Events published per second of the notify phase."""
        return self.events_sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def short(self) -> bool:
        """True when fewer than 90 % of the events asked were published."""
        return self.events_sent < SHORT_BELOW * self.events_asked

    def exit_code(self) -> int:
        """0 if :attr:`ok` (and not :attr:`short`, unless accepted), 1 if not ok, 3 if short."""
        if not self.ok:
            return 1
        return EXIT_SHORT if self.short and not self.accept_short else 0

    @property
    def result(self) -> str:
        """``OK``, ``FAILED``, ``SHORT``, or ``OK (short, accepted)``."""
        if not self.ok:
            return "FAILED"
        if self.short:
            return "OK (short, accepted)" if self.accept_short else "SHORT"
        return "OK"

    def notify_round_trip_s(self) -> float:
        """Mean seconds from a notify's request to its reply."""
        notifies = self.events_sent + self.notify_errors
        return self.notify_busy_s / notifies if notifies else 0.0

    def why_short(self) -> str:
        """What held the notify rate back, in words (for a :attr:`short` run)."""
        if self.notify_errors:
            return (f"{self.notify_errors} notifies failed (see the server's log; the errors line "
                    "counts the clients' side)")
        trip = self.notify_round_trip_s()
        lanes, window = max(1, self.notify_connections), max(1, self.notify_pipeline)
        ceiling = lanes * window / trip if trip else float("inf")
        in_flight = "one at a time" if window == 1 else f"up to {window} in flight"
        plural = "s" if lanes > 1 else ""
        if ceiling < SHORT_BELOW * self.notify_rate:
            return (f"{lanes} notify connection{plural} ({in_flight} on each; each channel keeps to one "
                    f"connection so that its events stay in order), and a notify took {trip * 1000:.0f} ms "
                    f"on average: at most {ceiling:.0f}/s. The server takes a channel's next notify "
                    "after the fan-out of the one before (every client's reply and re-poll), so a "
                    "channel with many clients caps the rate: spread the clients over more channels "
                    "(--channels). With many channels, more --notify-connections or a deeper "
                    "--notify-pipeline raise the ceiling. Or accept it with --accept-short")
        return (f"the notifier fell behind its own pace (notifies took {trip * 1000:.0f} ms each, "
                f"{in_flight} on {lanes} connection{plural}): the load client's process was busy "
                f"(CPU {self.cpu_s:.1f} s); --procs moves the clients to other processes")

    def to_dict(self) -> dict:
        """The JSON report (latency as percentiles in milliseconds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _HISTOGRAM_FIELDS}
        out["errors"] = dict(self.errors)
        out["unanswered"] = self.unanswered
        for name in _LATENCIES:
            out[f"{name}_ms"] = getattr(self, name).summary_ms()
            out[f"{name}_ms_by_seq"] = {str(s): h.summary_ms()
                                        for s, h in sorted(getattr(self, f"{name}_by_seq").items())}
        out["ok"] = self.ok
        out["events_asked"] = self.events_asked
        out["notify_rate_achieved"] = round(self.notify_rate_achieved, 1)
        out["notify_round_trip_ms"] = round(self.notify_round_trip_s() * 1000, 2)
        out["short"] = self.short
        out["result"] = self.result
        for name in ("ready_s", "duration_s", "cpu_s", "notify_busy_s"):
            out[name] = round(out[name], 3)
        return out

    def to_wire(self) -> dict:
        """Everything, histogram included, for a worker process to send to its parent."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _HISTOGRAM_FIELDS}
        for name in _LATENCIES:
            out[name] = getattr(self, name).to_dict()
            out[f"{name}_by_seq"] = {str(s): h.to_dict() for s, h in getattr(self, f"{name}_by_seq").items()}
        return out

    @classmethod
    def from_wire(cls, data: dict) -> "Report":
        data = dict(data)
        for name in _LATENCIES:
            data[name] = Histogram.from_dict(data[name])
            data[f"{name}_by_seq"] = {int(s): Histogram.from_dict(h) for s, h in data[f"{name}_by_seq"].items()}
        return cls(**data)

    def progress_line(self) -> str:
        """One line: connected, requests, replies, in flight, timeouts, errors, events, latency."""
        lat = self.latency.summary_ms()
        errors = ",".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "0"
        return (f"clients {self.ready}/{self.clients} req {self.requests} resp {self.responses} "
                f"inflight {self.in_flight} timeouts {self.timeouts} errors {errors} "
                f"sent {self.events_sent} received {self.events_received} lost {self.lost} dup {self.duplicated} "
                f"p50 {lat['p50']}ms p99 {lat['p99']}ms")

    def format_text(self) -> str:
        """The human-readable final report."""
        d = self.to_dict()
        lat, read = d["latency_ms"], d["handled_latency_ms"]
        lines = [
            "loadclient report",
            f"  clients            {self.clients} ({self.ready} polling, {self.clients_failed} failed), "
            f"{self.procs} process(es), ready after {d['ready_s']} s",
            f"  requests           {self.requests}",
            f"  responses          {self.responses} (timeouts {self.timeouts})",
            f"  unanswered         {self.unanswered} (abandoned by remove: {self.abandoned})",
            f"  events sent        {self.events_sent} (+{self.end_markers_sent} end markers, "
            f"{self.notify_errors} notify errors) in {d['duration_s']} s",
            f"  events received    {self.events_received}",
            *self._rate_lines(),
            f"  lost               {self.lost}",
            f"  duplicated         {self.duplicated}",
            f"  recovered: false   {self.recovered_false}",
            f"  errors             {d['errors'] or 0}",
            f"  latency ms         p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}"
            f"  (notify -> arrival; {self.unstamped} replies unstamped)",
            f"  handled ms         p50 {read['p50']}  p90 {read['p90']}  p99 {read['p99']}  max {read['max']}"
            "  (notify -> read by the fake client)",
            f"  load client CPU    {d['cpu_s']} s",
            f"  result             {self.result}",
        ]
        return "\n".join(lines)

    def _rate_lines(self) -> list[str]:
        if self.notify_rate == 0:
            return []
        achieved = f"{self.notify_rate_achieved:.1f}/s"
        if self.notify_rate < 0:
            return [f"  notify rate        {achieved} (asked: as fast as the server accepts)"]
        share = self.events_sent / self.events_asked if self.events_asked else 1.0
        line = (f"  notify rate        {achieved} of {self.notify_rate:g}/s asked "
                f"({self.events_sent} of {self.events_asked} events, {share:.0%})")
        if not self.short:
            return [line]
        return [line + ": SHORT", f"  why short          {self.why_short()}"]

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.to_dict(), out, indent=2, sort_keys=True)
            out.write("\n")

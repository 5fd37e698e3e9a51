"""The Prometheus series: names, help, and a custom collector that turns :data:`Numbers` into them.

Every series is named here, once (``docs/metrics.md`` lists them, and a test checks that the
Grafana dashboard queries only series a real scrape has). The collector reads the numbers when
Prometheus scrapes (:func:`exposition`), never on a request: prometheus_client's own
``Counter`` and ``Histogram`` objects take a lock on every increment, which the request paths
here do not pay (:mod:`geventcomet.metrics_record`).

No series has a channel label: channels are created by clients, one per game or user, so a
label per channel would be a series per channel, without bound (see docs/metrics.md).
"""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from . import metrics_record
from .metrics_numbers import Numbers

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: (key in ``counters``, series name, help)
COUNTERS = (
    ("published", "geventcomet_events_published_total", "Events stored by notifies."),
    ("delivered", "geventcomet_events_delivered_total", "Events written to clients (polls and streams)."),
    ("polls", "geventcomet_polls_total", "Long-poll replies sent (events or timeout)."),
    ("timeouts", "geventcomet_poll_timeouts_total", "Long-polls answered with a timeout."),
    ("disconnects", "geventcomet_disconnects_total", "Held requests whose client hung up."),
    ("streams_opened", "geventcomet_sse_streams_opened_total", "SSE streams opened."),
    ("gaps", "geventcomet_gaps_total", "Replies and streams that reported lost events (recovered: false)."),
    ("backend_errors", "geventcomet_backend_errors_total", "Backend operations that failed (answered 503)."),
    ("gc_collections", "geventcomet_gc_collections_total", "Cyclic garbage collections."),
    ("gc_seconds", "geventcomet_gc_seconds_total", "Seconds spent in cyclic garbage collections."),
    ("accept_pauses", "geventcomet_accept_pauses_total", "Times accepting paused: out of open files."),
    ("worker_exits", "geventcomet_worker_exits_total", "Worker processes that exited (replaced, restarted)."),
)
#: (key in ``labelled``, series name, label name, help, labels always present)
LABELLED = (
    ("refusals", "geventcomet_refusals_total", "status", "Requests refused, by HTTP status.",
     tuple(metrics_record.REFUSALS)),
    ("misbehaviour", "geventcomet_client_misbehaviour_total", "kind",
     "Client misbehaviour noted, by kind (a fixed set of kinds).", ()),
    ("bayeux", "geventcomet_bayeux_operations_total", "kind",
     "The Bayeux transport's counters: handshakes, connects, delivered (events), published, gaps, ...", ()),
)
#: (key in ``gauges``, series name, help)
GAUGES = (
    ("waiting", "geventcomet_waiting_requests", "Requests parked for a notify (polls and idle streams)."),
    ("held", "geventcomet_held_requests", "Requests held: parked polls and open streams."),
    ("streams_open", "geventcomet_sse_streams_open", "SSE streams open."),
    ("bayeux_sessions", "geventcomet_bayeux_sessions", "Bayeux sessions (CometD, Faye clients) alive."),
    ("connections", "geventcomet_connections_open", "Client connections open."),
    ("reading_requests", "geventcomet_connections_reading", "Connections whose request is being read."),
    ("max_waiting", "geventcomet_max_waiting_requests", "The bound on held requests (503 beyond)."),
    ("rss_bytes", "geventcomet_process_resident_memory_bytes", "Resident memory of the server processes."),
    ("open_fds", "geventcomet_process_open_fds", "Open file descriptors of the server processes."),
    ("last_fanout_seconds", "geventcomet_last_fanout_seconds", "Duration of the last wake of 100+ waiters."),
    ("last_fanout_waiters", "geventcomet_last_fanout_waiters", "Waiters woken by the last wake of 100+."),
    ("backend_up", "geventcomet_backend_up", "1 while the backend answers (every process), else 0."),
)
#: (key in ``backend``, series name, help)
BACKEND = (
    ("probe_seconds", "geventcomet_backend_probe_seconds", "Round trip of the backend's counts at this scrape."),
    ("clients", "geventcomet_backend_clients", "Client registrations the backend holds."),
    ("channels", "geventcomet_backend_channels", "Channels the backend holds."),
    ("idempotency_keys", "geventcomet_backend_idempotency_keys", "Idempotency-Keys remembered."),
    ("backlog_events", "geventcomet_backend_backlog_events", "Events kept for clients between polls."),
    ("backlog_bytes", "geventcomet_backend_backlog_bytes", "Bytes of events kept (memory, sqlite)."),
)
#: (key in ``histograms``, series name, help)
HISTOGRAMS = (
    ("fanout_seconds", "geventcomet_fanout_duration_seconds",
     "One wake of a channel's waiters: from the first switch to the last reply sent."),
    ("poll_hold_seconds", "geventcomet_poll_hold_seconds", "How long a long-poll was held before its reply."),
    ("backend_publish_seconds", "geventcomet_backend_publish_seconds",
     "Backend round trip of a publish (stored and acknowledged)."),
)


def families(numbers: Numbers) -> Iterator[Metric]:
    """The metric families of ``numbers`` (one process's, or a whole server's sum)."""
    info = numbers.get("info", {})
    yield InfoMetricFamily("geventcomet_build", "Version and backend kind of the running server.",
                           value={"version": str(info.get("version", "")), "backend": str(info.get("backend", ""))})
    yield GaugeMetricFamily("geventcomet_processes", "Server processes whose numbers this scrape adds up.",
                            value=numbers.get("processes", 0))
    counters = numbers.get("counters", {})
    for key, name, text in COUNTERS:
        yield CounterMetricFamily(name, text, value=counters.get(key, 0))
    labelled = numbers.get("labelled", {})
    for key, name, label, text, always in LABELLED:
        family = CounterMetricFamily(name, text, labels=[label])
        values = {label_value: 0 for label_value in always}
        values.update(labelled.get(key, {}))
        for label_value, value in sorted(values.items()):
            family.add_metric([label_value], value)
        yield family
    gauges = numbers.get("gauges", {})
    for key, name, text in GAUGES:
        yield GaugeMetricFamily(name, text, value=gauges.get(key, 0))
    backend = numbers.get("backend", {})
    for key, name, text in BACKEND:
        if key in backend:  # a backend that does not keep a count has no series for it
            yield GaugeMetricFamily(name, text, value=backend[key])
    histograms = numbers.get("histograms", {})
    for key, name, text in HISTOGRAMS:
        bounds = metrics_record.HISTOGRAMS[key].bounds
        histogram = histograms.get(key) or {"counts": [0] * (len(bounds) + 1), "sum": 0.0}
        yield HistogramMetricFamily(name, text, buckets=cumulative(bounds, histogram["counts"]),
                                    sum_value=histogram["sum"])


def cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last +Inf) as Prometheus's cumulative ``le`` buckets."""
    running = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*map(repr, bounds), "+Inf"), counts):
        running += count
        buckets.append((bound, running))
    return buckets


class NumbersCollector:
    """A prometheus_client collector that reads its numbers when it is collected."""

    def __init__(self, read: Callable[[], Numbers]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # registering must not read (or probe the backend)

    def collect(self) -> Iterator[Metric]:
        return families(self.read())


def exposition(read: Callable[[], Numbers]) -> bytes:
    """The Prometheus text format of the numbers ``read`` returns now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NumbersCollector(read))  # type: ignore[arg-type]
    return generate_latest(registry)

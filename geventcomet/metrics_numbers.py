"""The numbers behind ``/metrics``: read from one process at scrape time, and added up over processes.

:func:`read_numbers` takes what the service already keeps (``service.stats``, the hub, the
stream counts, ``stats_sources``, the misbehaviour counts, :mod:`geventcomet.metrics_record`)
into plain JSON-able :data:`Numbers`, so that a worker can send them to its supervisor and
the supervisor can add them up (:func:`add_into`, :func:`merge`). Nothing here runs per request.

Kinds of numbers, and how processes add up:

- ``counters``, ``labelled`` (counters by a bounded label), ``histograms``: summed, and a
  process that exits leaves its last numbers in the retired sum, so nothing counted is lost;
- ``gauges``: summed over the live processes only (a replaced worker leaves no stale value);
  a few are the maximum or the minimum instead (:data:`GAUGE_MERGE`);
- ``backend``: what the shared backend holds (clients, channels), the same whichever process
  asks, so it is taken from one process, never summed.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable

from . import metrics_record, misbehaviour
from .counters import rss_bytes
from .errors import BackendError
from .service import CometService

Numbers = dict[str, Any]

#: Gauges that are not summed over processes (the rest are).
GAUGE_MERGE: dict[str, Callable[[Iterable[float]], float]] = {
    "last_fanout_seconds": max, "last_fanout_waiters": max, "backend_up": min}
#: Numbers taken from ``stats_sources`` (the HTTP server's connections).
SOURCE_GAUGES = ("connections", "reading_requests")


def backend_kind(backend_url: str) -> str:
    """``redis://host/0`` -> ``redis``: the kind only, never the address or a password."""
    return backend_url.split(":", 1)[0].lower() or "memory"


def number(value: object) -> float:
    """``value`` if it is a number, else 0 (a source that does not know says None)."""
    return value if isinstance(value, (int, float)) else 0


def package_version() -> str:
    """``geventcomet.__version__``, read at scrape time: importing the package from here
    would be an import cycle (the package imports the app, which serves /metrics)."""
    return str(getattr(sys.modules.get("geventcomet"), "__version__", "unknown"))


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the directory listing's own
    except OSError:
        return 0


def read_numbers(service: CometService, *, probe_backend: bool = True) -> Numbers:
    """This process's numbers now. ``probe_backend``: also ask the backend what it holds
    (one round trip to Redis, timed as ``probe_seconds``); never after it is closed."""
    stats, streams, hub = service.stats, service.streams, service.hub
    extra: dict = {}
    for source in service.stats_sources:
        extra.update(source())
    fanout = hub.last_fanout
    gauges = {"waiting": hub.waiting, "held": service.held(), "streams_open": streams.open,
              "max_waiting": service.max_waiting, "rss_bytes": rss_bytes(), "open_fds": open_fds(),
              "last_fanout_seconds": fanout.ended - fanout.started if fanout else 0.0,
              "last_fanout_waiters": fanout.waiters if fanout else 0,
              "bayeux_sessions": number((extra.get("bayeux") or {}).get("sessions")),  # None: not known here
              **{name: number(extra.get(name)) for name in SOURCE_GAUGES}}
    numbers: Numbers = {
        "info": {"version": package_version(), "backend": backend_kind(service.config.backend)},
        "processes": 1,
        "counters": {"published": stats.published, "delivered": stats.delivered, "polls": stats.polls,
                     "timeouts": stats.timeouts, "disconnects": stats.disconnects,
                     "streams_opened": streams.opened, "gc_collections": stats.gc_collections,
                     "gc_seconds": stats.gc_s, "accept_pauses": stats.accept_pauses,
                     **metrics_record.COUNTS},
        "labelled": {"refusals": dict(metrics_record.REFUSALS),
                     "misbehaviour": dict(misbehaviour.clients.counts),
                     # the Bayeux transport's own counters (a fixed set: its stats dataclass)
                     "bayeux": {kind: number(value) for kind, value in (extra.get("bayeux") or {}).items()
                                if kind != "sessions"}},
        "histograms": {name: {"counts": list(h.counts), "sum": h.total}
                       for name, h in metrics_record.HISTOGRAMS.items()},
        "gauges": gauges,
    }
    gauges["backend_up"] = 1 if service.backend.health() is None else 0
    if probe_backend:
        numbers["backend"] = probe(service)
        gauges["backend_up"] = min(gauges["backend_up"], numbers["backend"]["reachable"])
    return numbers


def probe(service: CometService) -> dict[str, float]:
    """What the backend holds, and how long it took to say (a scrape-time round trip)."""
    started = time.perf_counter()
    try:
        counts = service.backend.counts()
    except BackendError:
        return {"reachable": 0, "probe_seconds": time.perf_counter() - started}
    return {**counts, "reachable": 1, "probe_seconds": time.perf_counter() - started}


def empty() -> Numbers:
    """The sum of no process: where a supervisor starts its retired sum."""
    return {"counters": {}, "labelled": {}, "histograms": {}}


def add_into(total: Numbers, numbers: Numbers) -> None:
    """Add ``numbers``' counters, labelled counters and histograms into ``total`` (in place)."""
    counters = total["counters"]
    for name, value in numbers.get("counters", {}).items():
        counters[name] = counters.get(name, 0) + number(value)
    for name, values in numbers.get("labelled", {}).items():
        into = total["labelled"].setdefault(name, {})
        for label, value in values.items():
            into[label] = into.get(label, 0) + number(value)
    for name, histogram in numbers.get("histograms", {}).items():
        into = total["histograms"].get(name)
        if into is None or len(into["counts"]) != len(histogram["counts"]):
            total["histograms"][name] = {"counts": list(histogram["counts"]), "sum": histogram["sum"]}
        else:
            into["counts"] = [a + b for a, b in zip(into["counts"], histogram["counts"])]
            into["sum"] += histogram["sum"]


def merge(retired: Numbers, live: list[Numbers]) -> Numbers:
    """The whole server: the retired sum plus every live process; gauges of the live ones only."""
    total = empty()
    add_into(total, retired)
    gauges: dict[str, list[float]] = {}
    for numbers in live:
        add_into(total, numbers)
        for name, value in numbers.get("gauges", {}).items():
            gauges.setdefault(name, []).append(number(value))
    total["gauges"] = {name: GAUGE_MERGE.get(name, sum)(values) for name, values in gauges.items()}
    total["processes"] = len(live)
    backends = [n["backend"] for n in live if n.get("backend")]
    if backends:
        total["backend"] = backends[-1]
    infos = [n["info"] for n in live if "info" in n]
    total["info"] = infos[-1] if infos else retired.get("info", {})
    return total

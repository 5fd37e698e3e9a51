"""The cyclic garbage collector, and gevent's greenlet bookkeeping, tuned for a process full of
parked requests (server processes only)."""
from __future__ import annotations

import gc
import time
from typing import Protocol

import gevent

#: Collector thresholds for the server process: see :func:`tune_gc`.
GC_THRESHOLDS = (100_000, 20, 10)


class CollectionStats(Protocol):
    """Where collections are counted: the app's stats (``gc_collections``, ``gc_s`` in /stats)."""

    gc_collections: int
    gc_s: float


class CollectionCounter:
    """A ``gc.callbacks`` entry that counts every collection and its duration into ``stats``."""

    def __init__(self, stats: CollectionStats) -> None:
        self.stats = stats
        self.started = 0.0

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.stats.gc_collections += 1
            self.stats.gc_s += time.perf_counter() - self.started


def tune_gc(stats: CollectionStats | None = None) -> None:
    """Make the cyclic garbage collector cheap for a process full of parked requests.

    With the default thresholds (700, 10, 10) the collector re-traverses the objects of
    every parked request again and again: in a 5,000-client fan-out cycle it took 1.1 s
    of the server's 4 s of CPU, in full collections of ~90 ms each (bench/RESULTS.md).
    Startup objects are frozen out of collection. A young collection waits for 100,000
    net allocations: a fan-out frees each woken request's objects before its re-poll
    allocates new ones (~15 each), so the count mostly falls back between rounds.
    ``bench/bench_fanout_raw.py --sizes 10000 --rounds 8``: 7 collections (0.54-0.60 s)
    in 8 rounds, against 98 (0.78 s) with 10,000; before fan-outs yielded after each
    send, 0 against 56 (1.17 s). Only the server process does this, never the library.
    With ``stats``, every collection is counted there with its duration (``gc_collections``,
    ``gc_s`` in /stats). Idempotent: a second call replaces the counter, never adds one.
    It also stops gevent from tracking each greenlet's spawning tree (below).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # gevent's default keeps, in every new greenlet, its spawner, spawn-tree locals and the
    # spawning stack (a debugging aid nothing here reads): 4 objects and 224 bytes per
    # connection (tracemalloc), 0.2 KB of RSS per waiting client (bench/RESULTS-perf.md).
    gevent.config.track_greenlet_tree = False
    if stats is not None:
        gc.callbacks[:] = [cb for cb in gc.callbacks if not isinstance(cb, CollectionCounter)]
        gc.callbacks.append(CollectionCounter(stats))

"""The numbers the service keeps (``/stats``, ``/metrics``), and its process's own.

Plain counters, incremented where things happen: reading them costs nothing per request.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(slots=True)
class Stats:
    """Counters since start, for ``GET /stats``."""

    published: int = 0
    delivered: int = 0  # events written to clients
    polls: int = 0  # register replies sent
    timeouts: int = 0
    disconnects: int = 0
    gc_collections: int = 0  # cyclic collections, and the seconds they took (server process only)
    gc_s: float = 0.0
    accept_pauses: int = 0  # times accepting paused because the process ran out of open files


@dataclass(slots=True)
class StreamCounts:
    """Open streams (kept by the stream transport), for ``held`` and ``/stats``."""

    open: int = 0
    opened: int = 0  # since start
    #: Open streams parked in the hub now: ``open - parked`` (writing) is what the hub misses.
    parked: int = 0


class Published(NamedTuple):
    """Where a publish went: the channel, the event's id, and the requests it woke."""

    channel: str
    seq: int
    woken: int


def fd_limit() -> int:
    """This process's open-file limit (the soft one)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes() -> int:
    """This process's resident memory, in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

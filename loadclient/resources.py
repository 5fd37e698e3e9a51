"""Process resources the load client needs: open files, CPU time used, source addresses."""
from __future__ import annotations

import gc
import resource

#: Young-generation threshold once the clients are up (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one (each fake client holds a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def settle() -> None:
    """Once the clients are up: take them out of the cyclic collector's work, and collect rarely.

    Thousands of fake clients are thousands of long-lived greenlets, sockets and
    buffers; with CPython's default thresholds the collector traversed them again and
    again, and took ~18 % of a load process's CPU during a 100,000-client fan-out
    (py-spy). Called in a worker process once its clients poll, never on import.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def source_addresses(host: str, procs: int, given: list[str] | None) -> list[str | None]:
    """The local address each process binds its client sockets to.

    Explicit ``given`` addresses are used round-robin. Otherwise, against a loopback
    server with several processes, process *i* uses ``127.0.0.(i+2)``: every source
    address has its own ~28,000 ephemeral ports towards the server, so 50,000+
    connections fit. One process (at most 20,000 sockets here) needs no binding.
    """
    if given:
        return [given[i % len(given)] for i in range(procs)]
    if procs > 1 and host.startswith("127."):
        return [f"127.0.0.{i + 2}" for i in range(procs)]
    return [None] * procs

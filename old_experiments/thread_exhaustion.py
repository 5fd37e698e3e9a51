"""Experiment 3, thread exhaustion: the same 5-second long-poll served three ways, under load.

The article's load test. Clients each hold a long-poll (``GET /register``, 5 s) and
poll again as soon as it returns, while a notifier publishes a few events a second:

* ``threads``: a synchronous handler on a thread-per-request server with a bounded
  pool of real OS threads (``--workers``, 40). Each held poll occupies a thread, so
  past ~40 clients every request, a plain page included, waits in the pool's queue.
* ``waitpool``: the 2008 fix. The pool thread parks the poll on one of five wait
  threads and is free again; each wait thread sleeps ``--scan-interval`` and then
  scans its whole list for polls with events or past their timeout.
* ``geventcomet``: this project, one greenlet per held poll
  (``python -m geventcomet serve``).

The first two live in ``_thread_servers.py`` and run in their own process, never
monkey-patched, so their threads are real. One command ramps the same load
(``loadclient``) against each in turn and prints a side-by-side table: polls held at
once, polls answered on time, the latency of an ordinary page (``GET /``) while
loaded, and the server's CPU. Try it::

    python -m old_experiments.thread_exhaustion --compare --clients 200 --ramp 20 --duration 30

or run one of the 2008 servers and poke it by hand::

    python -m old_experiments.thread_exhaustion --mode waitpool --port 8003 --duration 120
    curl 'http://127.0.0.1:8003/register?channel=news&timeout=5'      # waits, then times out
    curl -d '{"channel": "news", "data": "hi"}' -H 'Content-Type: application/json' \\
        http://127.0.0.1:8003/notify                                  # (from another shell)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

from ._common import (
    PROGRESS_EVERY_S,
    Child,
    add_server_args,
    cpu_seconds,
    format_table,
    log,
    os_threads,
    progress,
    python_module,
    setup_logging,
)

MODES = ("threads", "waitpool", "geventcomet")
#: The article's long-poll: every poll is held up to this long.
POLL_TIMEOUT_S = 5.0
#: How often the ordinary page is fetched while the load runs, and how long it may take.
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 15.0


def server_argv(mode: str, args: argparse.Namespace) -> list[str]:
    if mode == "geventcomet":
        return python_module("geventcomet", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--timeout", str(args.poll_timeout))
    return python_module("old_experiments.thread_exhaustion", "--mode", mode, "--workers", str(args.workers),
                         "--wait-threads", str(args.wait_threads), "--scan-interval", str(args.scan_interval),
                         "--duration", str(args.clients / args.ramp + args.duration + 300))


def run_load(url: str, args: argparse.Namespace):
    """The load, through loadclient's Python API (the same options as its command line)."""
    import loadclient  # gevent-based; imported here so the 2008 servers never import gevent

    # loadclient's progress line (stderr) every few seconds: a mode takes 20 s to 1 min
    return loadclient.run(url, clients=args.clients, ramp=args.ramp, duration=args.duration,
                          channels=args.channels, notify_rate=args.notify_rate, poll_timeout=args.poll_timeout,
                          progress=PROGRESS_EVERY_S, accept_short=True,  # a starved notifier is the finding
                          ready_timeout=args.clients / args.ramp + 3 * args.poll_timeout + 10)


class Prober(threading.Thread):
    """Fetches ``GET /`` (the ordinary page) every second while the load runs; with
    ``stats`` also samples ``/stats`` for the number of held polls."""

    def __init__(self, url: str, stats: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.stats = url, stats
        self.done = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self.peak_waiting = 0

    def run(self) -> None:
        while not self.done.wait(PROBE_EVERY_S):
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/", timeout=PROBE_TIMEOUT_S) as reply:
                    reply.read()
                self.latencies.append(time.monotonic() - start)
            except OSError:
                self.failures += 1
            if self.stats:
                try:
                    with urllib.request.urlopen(self.url + "/stats", timeout=PROBE_TIMEOUT_S) as reply:
                        self.peak_waiting = max(self.peak_waiting, json.load(reply)["waiting"])
                except (OSError, ValueError, KeyError):
                    pass


def measure(mode: str, args: argparse.Namespace) -> dict:
    """Start the server for ``mode``, run the load against it, stop it; what was seen."""
    start = time.monotonic()
    child = Child(server_argv(mode, args))
    try:
        cpu0 = cpu_seconds(child.pid)
        # geventcomet's /stats answers at once under load; the 2008 servers log their peak at exit.
        prober = Prober(child.url, stats=(mode == "geventcomet"))
        prober.start()
        log.info("%s: %d clients at %g/s, %g s of notifies", mode, args.clients, args.ramp, args.duration)
        report = run_load(child.url, args).to_dict()
        prober.done.set()
        prober.join(PROBE_TIMEOUT_S + 5)
        cpu, threads = cpu_seconds(child.pid) - cpu0, os_threads(child.pid)
    finally:
        child.stop()
    held, server_stats = prober.peak_waiting, {}
    for line in child.lines:  # the 2008 servers' exit line: "stats {...}"
        if " stats {" in line:
            server_stats = json.loads(line.split(" stats ", 1)[1])
            held = server_stats["peak_waiting"]
    probes = sorted(prober.latencies)
    return {"mode": mode, "held": held, "report": report,
            "page_ms_p50": round(1000 * probes[len(probes) // 2]) if probes else None,
            "page_ms_max": round(1000 * probes[-1]) if probes else None,
            "page_failures": prober.failures, "page_probes": len(probes) + prober.failures,
            "cpu_s": round(cpu, 2), "run_s": round(time.monotonic() - start, 1), "os_threads": threads,
            "server_stats": server_stats}


def table(results: list[dict], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        rep = r["report"]
        requests = rep.get("requests", 0)
        # loadclient gives each poll its timeout + 10 s before it calls it unanswered
        on_time = requests - rep.get("unanswered", requests) - sum(
            n for kind, n in rep.get("errors", {}).items() if kind.startswith("http_"))
        lat = {k: f"{v:.0f}" for k, v in rep.get("latency_ms", {}).items() if v is not None}
        page = (f"{r['page_ms_p50']} / {r['page_ms_max']}" if r["page_ms_p50"] is not None else "-")
        if r["page_failures"]:
            page += f" ({r['page_failures']}/{r['page_probes']} failed)"
        rows.append([r["mode"], r["held"], f"{rep.get('ready', '?')}/{args.clients}", f"{on_time}/{requests}",
                     rep.get("events_sent", "-"), f"{rep.get('events_received', '-')} (lost {rep.get('lost', '-')})",
                     f"{lat.get('p50', '-')} / {lat.get('p99', '-')}", page,
                     f"{r['cpu_s']:.2f} / {r['run_s']:.0f}", r["os_threads"]])
    return format_table(["mode", "polls held (peak)", "clients polling", "polls answered on time",
                         "notifies accepted", "events received", "event ms p50 / p99", "page ms p50 / max",
                         "server CPU s / run s", "server OS threads"], rows)


def compare(args: argparse.Namespace) -> list[dict]:
    results = []
    for number, mode in enumerate(args.modes, 1):
        least = args.clients / args.ramp + args.duration + args.poll_timeout
        progress(f"[{number}/{len(args.modes)}] {mode}: {args.clients} clients at {args.ramp:g}/s, then "
                 f"{args.duration:g} s of notifies: {least:.0f} s or more (an overloaded server takes longer)")
        results.append(measure(mode, args))
        progress(f"[{number}/{len(args.modes)}] {mode}: done in {results[-1]['run_s']:.0f} s")
    print(f"{args.clients} clients (ramp {args.ramp:g}/s) holding {args.poll_timeout:g} s long-polls for "
          f"{args.duration:g} s over {args.channels} channels, {args.notify_rate:g} notifies/s; "
          f"threads: a pool of {args.workers}; waitpool: {args.wait_threads} wait threads scanning every "
          f"{args.scan_interval:g} s; {os.cpu_count()} CPUs")
    print(table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m old_experiments.thread_exhaustion",
                                     description=__doc__.split("\n\n")[0])
    add_server_args(parser, duration=120.0)
    parser.add_argument("--mode", choices=MODES[:2], default="threads",
                        help="which 2008 server to run (default %(default)s)")
    parser.add_argument("--workers", type=int, default=40, help="request thread pool size (default %(default)s)")
    parser.add_argument("--wait-threads", type=int, default=5, help="waitpool: wait threads (default %(default)s)")
    parser.add_argument("--scan-interval", type=float, default=0.1,
                        help="waitpool: seconds a wait thread sleeps between scans (default %(default)s)")
    load = parser.add_argument_group(
        "--compare: run the load against each server and print the table "
        "(--duration is then the notify phase, after every client polls)")
    load.add_argument("--compare", action="store_true")
    load.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES),
                      help="comma-separated, from " + ",".join(MODES) + " (default all)")
    load.add_argument("--clients", type=int, default=200, help="clients at full load (default %(default)s)")
    load.add_argument("--ramp", type=float, default=20.0, help="clients started per second (default %(default)s)")
    load.add_argument("--channels", type=int, default=10, help="channels the clients spread over (default %(default)s)")
    load.add_argument("--notify-rate", type=float, default=2.0, help="notifies per second (default %(default)s)")
    load.add_argument("--poll-timeout", type=float, default=POLL_TIMEOUT_S,
                      help="seconds each long-poll is held (default %(default)s)")
    load.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not (1 <= args.workers <= 1000 and 1 <= args.wait_threads <= 100 and 0.001 <= args.scan_interval <= 5):
        parser.error("--workers 1..1000, --wait-threads 1..100, --scan-interval 0.001..5")
    if args.compare:
        if not (set(args.modes) <= set(MODES) and 1 <= args.clients <= 5000 and args.ramp > 0
                and 0 < args.duration <= 600):
            parser.error(f"--modes from {','.join(MODES)}; --clients 1..5000; --ramp > 0; --duration up to 600 s")
        compare(args)
        return 0
    from ._thread_servers import serve
    serve(args.mode, args.host, args.port, args.duration, args.workers, args.wait_threads, args.scan_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark table for geventcomet, driven by loadclient (issue 2 "Performance", issue 3).

Each step starts a fresh server process (``python -m geventcomet serve --port 0``)
and drives it with :func:`loadclient.Run` on the same machine::

    python bench/bench_table.py                          # every step, sizes 1k/5k/15k
    python bench/bench_table.py --steps hold --sizes 1000
    python bench/bench_table.py --steps article --article-duration 300

Steps (each bounded in time by loadclient's own bounds):

- ``hold``: N idle clients on one channel: time until all poll; server RSS growth / N
  (RSS from ``/stats`` after the clients have held for ``--hold`` s). Then
  ``fanout`` on the same clients: one notify, time until the last client has it, p50/p99.
- ``cycle``: 1,000 clients each on its own channel, notifies as fast as accepted for
  ``--cycle-duration`` s; deliveries/s (server's own ``delivered`` counter), p99,
  server CPU per 1,000 deliveries (``/proc/PID/stat``).
- ``steady``: 5,000 clients each on its own channel, 2,000 notifies/s; p50/p99.
- ``max``: 19,500 waiting clients in one server process (load client: ``--procs 2``).
- ``article``: 200 clients for ``--article-duration`` s (default 300), events and
  poll timeouts mixed, every request answered.

Every row also gives the load client's CPU seconds next to the server's, to show
whether the load client could be the limit. Rows go to stdout (markdown) and to
``--json`` (default ``bench/out/table.json``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import gevent

# Run as a script from anywhere: the repository root (for loadclient) and bench/.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

from server_process import ServerProcess  # noqa: E402

from loadclient import Options, Run  # noqa: E402
from loadclient.resources import cpu_seconds, raise_open_file_limit  # noqa: E402

log = logging.getLogger("bench")
KB = 1024


def _run_phases(server: ServerProcess, options: Options, phases) -> tuple[object, dict]:
    """Run ``options`` against ``server``; ``phases(run, marks)`` does the notify phase(s)."""
    marks: dict = {}
    the_run = Run(options, out=sys.stderr)
    try:
        the_run.start()
        marks["ready"] = the_run.wait_ready()
        if not marks["ready"]:
            log.warning("ramp incomplete: %s; server alive: %s; server log tail:\n%s",
                        the_run.snapshot().progress_line(), server.proc.poll() is None,
                        "".join(server.log[-20:]))
        phases(the_run, marks)
        report = the_run.finish()
    except BaseException:
        the_run.close()
        raise
    return report, marks


def _snap(server: ServerProcess) -> dict:
    stats = server.stats()
    stats["cpu_s"] = server.cpu_s()
    stats["t"] = time.monotonic()
    return stats


def step_hold_fanout(n: int, args, start=ServerProcess) -> list[dict]:
    """``start()`` gives the server (``bench/side_by_side.py`` passes the aiohttp peer's)."""
    server = start()
    try:
        idle = _snap(server)
        opts = Options(url=server.url, clients=n, channels=1, poll_timeout=args.poll_timeout,
                       procs=args.procs, progress=args.progress, notify_connections=1, think=args.think,
                       idempotency=getattr(args, "idempotency", True))

        def phases(the_run: Run, marks: dict) -> None:
            the_run.notify_phase(duration=args.hold)  # no notifies: the clients just hold
            marks["held"] = _snap(server)
            the_run.options.notify_rate, the_run.options.notify_count = 1.0, 1
            marks["before_fanout_cpu"] = server.cpu_s()
            marks["lc_cpu0"] = cpu_seconds()
            the_run.notify_phase(duration=args.fanout_wait)
            marks["after"] = _snap(server)
            marks["lc_cpu1"] = cpu_seconds()

        report, marks = _run_phases(server, opts, phases)
    finally:
        server.stop()
    held = marks["held"]
    lat = report.latency.summary_ms()
    base = {"clients": n, "procs": args.procs, "ok": report.ok, "lost": report.lost,
            "unanswered": report.unanswered, "errors": report.errors, "loadclient_cpu_s": round(report.cpu_s, 2)}
    return [
        {"step": "hold", **base, "connect_all_s": round(report.ready_s, 3), "waiting": held["waiting"],
         "server_rss_idle_mb": round(idle["rss_bytes"] / KB / KB, 1),
         "server_rss_held_mb": round(held["rss_bytes"] / KB / KB, 1),
         "kb_per_client": round((held["rss_bytes"] - idle["rss_bytes"]) / n / KB, 2)},
        {"step": "fanout", **base, "think_s": args.think, "received": report.events_received,
         "last_ms": lat["max"],
         "loadclient_fanout_cpu_s": round(marks["lc_cpu1"] - marks["lc_cpu0"], 3) if args.procs == 1 else None,
         "p50_ms": lat["p50"], "p99_ms": lat["p99"],
         "server_cpu_s": round(marks["after"]["cpu_s"] - marks["before_fanout_cpu"], 3)},
    ]


def _phase_cpu(marks: dict, args) -> dict:
    # With --procs 1 the load client is this process: its CPU in the measured phase.
    if args.procs != 1:
        return {}
    return {"loadclient_phase_cpu_s": round(marks["lc_cpu1"] - marks["lc_cpu0"], 2)}


def _measured_notify_phase(args, clients: int, notify_rate: float, duration: float,
                           start=ServerProcess) -> tuple:
    """A fresh server, ``clients`` on their own channels, and server/load-client snapshots
    around the notify phase: ``(report, {"start", "end", "lc_cpu0", "lc_cpu1"})``."""
    server = start()
    try:
        opts = Options(url=server.url, clients=clients, channels=clients, notify_rate=notify_rate,
                       duration=duration, poll_timeout=args.poll_timeout, procs=args.procs,
                       notify_connections=args.notify_connections, progress=args.progress,
                       idempotency=getattr(args, "idempotency", True))

        def phases(the_run: Run, marks: dict) -> None:
            marks["start"] = _snap(server)
            marks["lc_cpu0"] = cpu_seconds()
            the_run.notify_phase()
            marks["end"] = _snap(server)
            marks["lc_cpu1"] = cpu_seconds()

        return _run_phases(server, opts, phases)
    finally:
        server.stop()


def step_cycle(args, clients: int = 1000, start=ServerProcess) -> list[dict]:
    report, marks = _measured_notify_phase(args, clients, notify_rate=-1, duration=args.cycle_duration,
                                           start=start)
    start, end = marks["start"], marks["end"]
    seconds = end["t"] - start["t"]
    delivered = end["delivered"] - start["delivered"]
    cpu = end["cpu_s"] - start["cpu_s"]
    lat = report.latency.summary_ms()
    return [{"step": "cycle", "clients": clients, "procs": args.procs,
             "notify_connections": args.notify_connections, "seconds": round(seconds, 2),
             "published": end["published"] - start["published"], "delivered": delivered,
             "deliveries_per_s": round(delivered / seconds), "p50_ms": lat["p50"], "p99_ms": lat["p99"],
             "server_cpu_s": round(cpu, 2), "server_cpu_ms_per_1000": round(cpu * 1e6 / max(delivered, 1), 1),
             "loadclient_cpu_s": round(report.cpu_s, 2), **_phase_cpu(marks, args),
             "ok": report.ok, "lost": report.lost, "duplicated": report.duplicated,
             "unanswered": report.unanswered, "errors": report.errors}]


def step_steady(args, clients: int = 5000, rate: float = 2000.0) -> list[dict]:
    report, marks = _measured_notify_phase(args, clients, notify_rate=rate, duration=args.steady_duration)
    start, end = marks["start"], marks["end"]
    seconds = end["t"] - start["t"]
    lat = report.latency.summary_ms()
    return [{"step": "steady", "clients": clients, "procs": args.procs, "target_rate": rate,
             "achieved_rate": round((end["published"] - start["published"]) / seconds),
             "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "max_ms": lat["max"],
             "server_cpu_s": round(end["cpu_s"] - start["cpu_s"], 2), "seconds": round(seconds, 2),
             "loadclient_cpu_s": round(report.cpu_s, 2), **_phase_cpu(marks, args),
             "ok": report.ok, "lost": report.lost,
             "unanswered": report.unanswered, "errors": report.errors}]


def step_max(args, clients: int = 19500) -> list[dict]:
    server = ServerProcess()
    try:
        idle = _snap(server)
        opts = Options(url=server.url, clients=clients, channels=1, poll_timeout=args.poll_timeout,
                       procs=max(2, args.procs), progress=args.progress, notify_connections=1,
                       think=args.think)

        def phases(the_run: Run, marks: dict) -> None:
            the_run.notify_phase(duration=args.hold)
            marks["held"] = _snap(server)
            the_run.options.notify_rate, the_run.options.notify_count = 1.0, 1
            the_run.notify_phase(duration=args.fanout_wait)

        report, marks = _run_phases(server, opts, phases)
    finally:
        server.stop()
    held = marks["held"]
    lat = report.latency.summary_ms()
    return [{"step": "max", "clients": clients, "procs": opts.procs, "waiting": held["waiting"],
             "max_waiting": held.get("max_waiting"), "connect_all_s": round(report.ready_s, 3),
             "kb_per_client": round((held["rss_bytes"] - idle["rss_bytes"]) / clients / KB, 2),
             "think_s": args.think, "fanout_last_ms": lat["max"], "received": report.events_received,
             "loadclient_cpu_s": round(report.cpu_s, 2), "ok": report.ok, "lost": report.lost,
             "unanswered": report.unanswered, "errors": report.errors}]


def step_article(args, clients: int = 200) -> list[dict]:
    server = ServerProcess()
    try:
        # 20 channels at 2 events/s: each channel has an event every 10 s, so 5 s polls
        # see both events and timeouts, like the original article's mix.
        opts = Options(url=server.url, clients=clients, channels=20, notify_rate=2.0,
                       duration=args.article_duration, poll_timeout=5.0, ramp=50.0,
                       progress=max(args.progress, 10.0) if args.progress else 0)
        report, _ = _run_phases(server, opts, lambda the_run, marks: the_run.notify_phase())
    finally:
        server.stop()
    lat = report.latency.summary_ms()
    return [{"step": "article", "clients": clients, "seconds": round(report.duration_s, 1),
             "requests": report.requests, "responses": report.responses, "timeouts": report.timeouts,
             "events_sent": report.events_sent, "events_received": report.events_received,
             "lost": report.lost, "duplicated": report.duplicated, "unanswered": report.unanswered,
             "errors": report.errors, "p50_ms": lat["p50"], "p99_ms": lat["p99"], "ok": report.ok}]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="hold,cycle,steady,max,article")
    p.add_argument("--sizes", default="1000,5000,15000", help="client counts for hold/fanout")
    p.add_argument("--procs", type=int, default=1, help="load-client processes (max uses >= 2)")
    p.add_argument("--notify-connections", type=int, default=8)
    p.add_argument("--poll-timeout", type=float, default=60.0)
    p.add_argument("--hold", type=float, default=3.0, help="seconds clients hold before RSS is read")
    p.add_argument("--fanout-wait", type=float, default=3.0)
    p.add_argument("--think", type=float, default=0.0,
                   help="hold/fanout: clients pause this long before re-polling, so the fan-out "
                        "is not slowed by its own re-polls")
    p.add_argument("--cycle-duration", type=float, default=10.0)
    p.add_argument("--steady-duration", type=float, default=10.0)
    p.add_argument("--article-duration", type=float, default=300.0)
    p.add_argument("--progress", type=float, default=0.0, help="progress line interval (0: off)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "out", "table.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_file_limit()
    rows: list[dict] = []
    for step in args.steps.split(","):
        started = time.monotonic()
        if step == "hold":
            for n in (int(s) for s in args.sizes.split(",")):
                rows += step_hold_fanout(n, args)
                _print(rows[-2:])
        elif step in ("cycle", "steady", "max", "article"):
            rows += globals()[f"step_{step}"](args)
            _print(rows[-1:])
        else:
            p.error(f"unknown step {step!r}")
        log.warning("step %s took %.1f s", step, time.monotonic() - started)
        gevent.sleep(0)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as out:
        json.dump({"argv": sys.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rows": rows}, out, indent=2)
    return 0 if all(r.get("ok", True) for r in rows) else 1


def _print(rows: list[dict]) -> None:
    for row in rows:
        print("| " + " | ".join(f"{k}={v}" for k, v in row.items()) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())

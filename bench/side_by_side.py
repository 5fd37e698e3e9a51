"""geventcomet and a minimal aiohttp long-poll server, side by side, interleaved (issue 15).

One command, bounded in time: about 9 minutes with the defaults on the quiet 2-core machine
(on the shared machine at load average 12, two rounds took 12.5 minutes); no step starts
after ``--max-minutes`` (default 12), so a slow machine gives fewer rounds, not a longer run::

    python bench/side_by_side.py                           # rounds 3, sizes 1000,5000,15000
    python bench/side_by_side.py --rounds 1 --sizes 1000   # a quick look (~40 s)

Each round starts a fresh server for every step, geventcomet and ``bench/aiohttp_peer.py`` one
after the other (their order alternates by round), and drives both with the same load client
(``loadclient``, through ``bench/bench_table.py``'s steps). Per size N:

- ``hold``: N idle clients on one channel: server RSS growth / N (KB per idle waiting client);
- ``fanout``: then one notify; the time until the last client has it (arrival stamp),
  clients pausing ``--think`` s before they poll again so the re-polls do not compete;
- ``cycle``: N clients each on its own channel, notifies as fast as accepted for
  ``--cycle-duration`` s: deliveries/s (server's own ``delivered``) and server CPU per 1,000
  deliveries (``/proc/PID/stat``).

Prints one row per figure: the median over the rounds for each server, the spread
(min-max), and the ratio geventcomet / aiohttp (for deliveries/s higher is better; for
the others lower is better). The notifies carry no ``Idempotency-Key`` (the peer has no
such store; ``--idempotency`` sends them, which only geventcomet pays for). Raw rows go to
``--json`` (default ``bench/out/side_by_side.json``). A run stops starting new steps after
``--max-minutes``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import bench_table  # noqa: E402
from server_process import AiohttpPeerProcess, ServerProcess  # noqa: E402

from loadclient.resources import raise_open_file_limit  # noqa: E402

SERVERS = {"geventcomet": ServerProcess, "aiohttp": AiohttpPeerProcess}
#: (figure, step, row key, True if higher is better)
FIGURES = [
    ("KB per idle waiting client", "hold", "kb_per_client", False),
    ("fan-out, last arrival (ms)", "fanout", "last_ms", False),
    ("cycle deliveries/s", "cycle", "deliveries_per_s", True),
    ("cycle server CPU per 1,000 deliveries (ms)", "cycle", "server_cpu_ms_per_1000", False),
]


def run_round(args, round_no: int, rows: list[dict], deadline: float) -> None:
    order = list(SERVERS) if round_no % 2 == 0 else list(SERVERS)[::-1]
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [(step, n) for step in ("hold", "cycle") for n in sizes]
    for step, n in steps:
        for name in order:
            if time.monotonic() > deadline:
                logging.warning("--max-minutes reached: skipping %s %s at %d", name, step, n)
                continue
            start = SERVERS[name]
            if step == "hold":
                new = bench_table.step_hold_fanout(n, args, start=start)
            else:
                new = bench_table.step_cycle(args, n, start=start)
            for row in new:
                row.update(server=name, round=round_no)
                print(f"round {round_no} {name:11} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            rows += new


def summary(rows: list[dict], sizes: list[int]) -> list[str]:
    lines = ["| figure | N | geventcomet median (min-max) | aiohttp median (min-max) | ratio gc/aio |",
             "|---|---|---|---|---|"]
    for figure, step, key, _higher in FIGURES:
        for n in sizes:
            cells, medians = [], []
            for name in SERVERS:
                values = [r[key] for r in rows if r["step"] == step and r["clients"] == n
                          and r["server"] == name and r.get(key) is not None]
                if not values:
                    cells.append("-")
                    medians.append(None)
                    continue
                median = statistics.median(values)
                medians.append(median)
                cells.append(f"{median:,.1f} ({min(values):,.1f}-{max(values):,.1f}, {len(values)} runs)")
            ratio = f"{medians[0] / medians[1]:.2f}" if None not in medians and medians[1] else "-"
            lines.append(f"| {figure} | {n:,} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="1000,5000,15000")
    p.add_argument("--think", type=float, default=5.0, help="fan-out: pause before re-polling")
    p.add_argument("--hold", type=float, default=3.0, help="seconds clients hold before RSS is read")
    p.add_argument("--fanout-wait", type=float, default=3.0)
    p.add_argument("--cycle-duration", type=float, default=6.0)
    p.add_argument("--notify-connections", type=int, default=8)
    p.add_argument("--poll-timeout", type=float, default=60.0)
    p.add_argument("--idempotency", action="store_true", help="send an Idempotency-Key with each notify")
    p.add_argument("--max-minutes", type=float, default=12.0)
    p.add_argument("--json", default=os.path.join(_HERE, "out", "side_by_side.json"))
    args = p.parse_args(argv)
    args.procs, args.progress = 1, 0.0
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_file_limit()
    deadline = time.monotonic() + args.max_minutes * 60
    rows: list[dict] = []
    started = time.monotonic()
    for round_no in range(args.rounds):
        run_round(args, round_no, rows, deadline)
    table = summary(rows, [int(s) for s in args.sizes.split(",")])
    print("\n".join(table), flush=True)
    print(f"({args.rounds} rounds in {time.monotonic() - started:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as out:
        json.dump({"argv": sys.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rows": rows,
                   "table": table}, out, indent=2)
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

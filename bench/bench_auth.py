"""What a token costs a poll (issue 13): server CPU per delivery with tokens off and on.

    python bench/bench_auth.py                       # 3 rounds of each, interleaved, 10 s each
    python bench/bench_auth.py --rounds 5 --cycle-duration 20

Each run is bench_table's ``cycle`` step, reused as it is (:func:`bench_table.step_cycle`):
a fresh server, 1,000 long-polling clients each on its own channel, notifies as fast as
the server accepts them; the server's CPU per 1,000 deliveries and deliveries/s. The two
modes alternate (off, on, off, on, ...) so a change in the shared machine's load falls on
both alike:

- ``off``: no token secret (channels are open, as before issue 13);
- ``on``: ``GEVENTCOMET_TOKEN_SECRET`` set, and loadclient's ``--token`` sends one valid
  HS256 token (``channels`` and ``publish`` ``["lc-*"]``, an hour to live) on every poll
  and every notify: after the first request, each check is the cached verdict.

The bar (issue 13): the median CPU per delivery with tokens on is at most 5 % above the
median with them off. The rows, medians and ranges go to stdout (markdown) and to
``--json`` (default ``bench/out/auth.json``); the exit status is 1 if the bar is missed
or a run lost events.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import statistics
import sys
import time

# Run as a script from anywhere: the repository root (for loadclient) and bench/.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import bench_table  # noqa: E402

from loadclient import Options  # noqa: E402
from loadclient.resources import raise_open_file_limit  # noqa: E402

log = logging.getLogger("bench")
SECRET_ENV = "GEVENTCOMET_TOKEN_SECRET"
#: Allowed CPU-per-delivery overhead of tokens on over tokens off (issue 13).
BAR = 1.05


def mint_token(secret: str) -> str:
    """One HS256 token covering every loadclient channel (``lc-RUNID-K``), for reading and publishing."""
    import jwt  # the bench's only use of PyJWT (the test extra)

    claims = {"exp": int(time.time()) + 3600, "channels": ["lc-*"], "publish": ["lc-*"]}
    return jwt.encode(claims, secret, algorithm="HS256")


@contextlib.contextmanager
def tokens(secret: str | None):
    """Within: bench_table's servers start with ``secret`` (None: tokens off) and its load
    client sends a token signed with it. bench_table builds its ServerProcess (which inherits
    this environment) and its loadclient Options itself; only those two are steered here."""
    saved_env, saved_options = os.environ.pop(SECRET_ENV, None), bench_table.Options
    if secret is not None:
        os.environ[SECRET_ENV] = secret
        bench_table.Options = functools.partial(Options, token=mint_token(secret))
    try:
        yield
    finally:
        os.environ.pop(SECRET_ENV, None)
        if saved_env is not None:
            os.environ[SECRET_ENV] = saved_env
        bench_table.Options = saved_options


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_round(mode: str, args) -> dict:
    secret = os.urandom(24).hex() if mode == "on" else None
    load_before = load_average()
    with tokens(secret):
        row = bench_table.step_cycle(args)[0]
    return {"mode": mode, **row, "load_before": load_before, "load_after": load_average()}


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for mode in ("off", "on"):
        mine = [r for r in rows if r["mode"] == mode]
        for key in ("server_cpu_ms_per_1000", "deliveries_per_s"):
            values = [r[key] for r in mine]
            out[f"{mode}_{key}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["cpu_ratio_on_off"] = round(out["on_server_cpu_ms_per_1000"]["median"]
                                    / out["off_server_cpu_ms_per_1000"]["median"], 3)
    out["bar"] = BAR
    out["within_bar"] = out["cpu_ratio_on_off"] <= BAR
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each mode, interleaved")
    p.add_argument("--cycle-duration", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=1, help="load-client processes")
    p.add_argument("--notify-connections", type=int, default=8)
    p.add_argument("--poll-timeout", type=float, default=60.0)
    p.add_argument("--progress", type=float, default=0.0)
    p.add_argument("--json", default=os.path.join(_HERE, "out", "auth.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_file_limit()
    rows = []
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            rows.append(run_round(mode, args))
            print("| " + " | ".join(f"{k}={v}" for k, v in rows[-1].items()) + " |", flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=2), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as out:
        json.dump({"argv": sys.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rows": rows,
                   "summary": summary}, out, indent=2)
    return 0 if summary["within_bar"] and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

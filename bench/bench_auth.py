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
  HS256 token (``channels`` ``["lc-*"]``, an hour to live) on every poll: after the
  first poll, each check is the cached verdict.

In both modes the server has an admin token (``GEVENTCOMET_NOTIFY_TOKEN``) and the
notifies carry it (loadclient's ``--notify-token``), so the notify side costs the same
and the difference is the polls'. ``--publish-token`` instead sends the JWT (with
``publish`` ``["lc-*"]``) on the notifies too in the ``on`` mode, and none in ``off``:
the cost of a browser that also publishes with its token.

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
from server_process import ServerProcess  # noqa: E402

from loadclient import Options  # noqa: E402
from loadclient.httpconn import HTTPError, bearer_header  # noqa: E402
from loadclient.resources import raise_open_file_limit  # noqa: E402

log = logging.getLogger("bench")
SECRET_ENV = "GEVENTCOMET_TOKEN_SECRET"
ADMIN_ENV = "GEVENTCOMET_NOTIFY_TOKEN"
#: Allowed CPU-per-delivery overhead of tokens on over tokens off (issue 13).
BAR = 1.05


def mint_token(secret: str) -> str:
    """One HS256 token covering every loadclient channel (``lc-RUNID-K``), for reading and publishing."""
    import jwt  # the bench's only use of PyJWT (the test extra)

    claims = {"exp": int(time.time()) + 3600, "channels": ["lc-*"], "publish": ["lc-*"]}
    return jwt.encode(claims, secret, algorithm="HS256")


class AdminServerProcess(ServerProcess):
    """bench_table's server process, whose ``/stats`` needs the admin token it was given."""

    def stats(self) -> dict:
        headers = bearer_header(os.environ.get(ADMIN_ENV))
        try:
            return json.loads(self._stats_conn.request("GET", "/stats", headers=headers).body)
        except HTTPError:  # one retry: the server may have closed an idle keep-alive
            return json.loads(self._stats_conn.request("GET", "/stats", headers=headers).body)


@contextlib.contextmanager
def steered(secret: str | None, publish_token: bool):
    """Within: bench_table's servers start with an admin token and ``secret`` (None: tokens
    off), and its load client polls with a token signed with it. bench_table builds its
    ServerProcess (which inherits this environment) and its loadclient Options itself; only
    those two names are steered here, so the cycle step itself is bench_table's, unchanged."""
    saved = {name: os.environ.pop(name, None) for name in (SECRET_ENV, ADMIN_ENV)}
    saved_server, saved_options = bench_table.ServerProcess, bench_table.Options
    token = notify_token = None
    if secret is not None:
        os.environ[SECRET_ENV] = secret
        token = mint_token(secret)
    if publish_token:  # no admin token: the notifies carry the JWT (on) or nothing (off)
        notify_token = token
    else:
        notify_token = os.environ[ADMIN_ENV] = os.urandom(16).hex()
    bench_table.ServerProcess = AdminServerProcess
    bench_table.Options = functools.partial(Options, token=token, notify_token=notify_token)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        bench_table.ServerProcess, bench_table.Options = saved_server, saved_options


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_round(mode: str, args) -> dict:
    secret = os.urandom(24).hex() if mode == "on" else None
    load_before = load_average()
    with steered(secret, args.publish_token):
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
    p.add_argument("--publish-token", action="store_true",
                   help="notifies carry the JWT (tokens on) or nothing (off), not the admin token")
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

"""Benchmarks of the durable and shared backends (issue 5); figures go to bench/RESULTS-backends.md.

    python bench/bench_backends.py cycle   --redis redis://127.0.0.1:16500/0   # memory vs redis
    python bench/bench_backends.py memory  --redis redis://127.0.0.1:16500/0   # RSS per waiting client
    python bench/bench_backends.py sqlite                                      # durable notifies/s
    python bench/bench_backends.py sqlite-lock                                 # pause while locked
    python bench/bench_backends.py fanout  --redis ... --clients 100000 --workers 6 --procs 6

Servers run as real processes (``python -m geventcomet serve``), clients are
loadclient's raw-socket fake clients; every run is bounded in count and time.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loadclient import run  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
#: fanout: seconds between the two notifies (the first after the ramp, "cold", and a
#: second one, "warm"), and from the second to the end markers (another fan-out to every
#: client): no fan-out competes with the one being measured.
FANOUT_GAP_S = 20


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (workers)."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except OSError:
            pass
    return total




def flush(redis_url: str | None) -> None:
    if redis_url:
        import redis
        redis.Redis.from_url(redis_url).flushall()


def cycle(backend: str, redis_url: str | None, clients: int, duration: float, notifiers: int = 32) -> dict:
    """1,000 clients each on its own channel, notifies as fast as accepted, re-poll after each event.

    ``notifiers``: notify connections, each sending its next notify once the last is answered.
    Enough of them to keep the server busy: with 8, a notify over Redis (one round trip
    more) left the server a third idle, and the figure measured the notify's latency
    rather than the deliveries the server can make.
    """
    flush(redis_url)
    srv = ServerProcess("--backend", backend, "--timeout", "20")
    try:
        cpu0 = tree_cpu_s(srv.proc.pid)
        report = run(srv.url, clients=clients, channels=clients, duration=duration, notify_rate=-1,
                     notify_connections=notifiers, poll_timeout=20, progress=0, procs=1).to_dict()
        cpu = tree_cpu_s(srv.proc.pid) - cpu0
    finally:
        srv.stop()
    received = report["events_received"]
    return {"backend": backend.split(":")[0], "notifiers": notifiers,
            "deliveries_per_s": round(received / report["duration_s"]),
            "server_cpu_ms_per_1000": round(cpu / max(received, 1) * 1e6), "lost": report["lost"],
            "duplicated": report["duplicated"], "ok": report["ok"], "p50_ms": report["latency_ms"]["p50"],
            "p99_ms": report["latency_ms"]["p99"]}


def memory_per_client(backend: str, redis_url: str | None, clients: int) -> dict:
    """RSS growth of one server process per parked long-poll."""
    flush(redis_url)
    srv = ServerProcess("--backend", backend, "--timeout", "60")
    try:
        http = requests.Session()
        base = http.get(srv.url + "/stats").json()["rss_bytes"]
        seen = {}

        def on_ready(_run):
            stats = http.get(srv.url + "/stats").json()
            seen.update(stats)

        run(srv.url, clients=clients, channels=1, duration=1, notify_rate=0, poll_timeout=60,
            progress=0, procs=1, on_ready=on_ready)
    finally:
        srv.stop()
    return {"backend": backend.split(":")[0], "clients": clients, "waiting": seen.get("waiting"),
            "bytes_per_client": round((seen["rss_bytes"] - base) / clients)}


def sqlite_notifies(sync: str, duration: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess("--backend", f"sqlite://{tmp}/bench.db?synchronous={sync}")
        try:
            report = run(srv.url, clients=50, channels=50, duration=duration, notify_rate=-1,
                         notify_connections=32, poll_timeout=20, progress=0, procs=1).to_dict()
        finally:
            srv.stop()
    return {"synchronous": sync, "durable_notifies_per_s": round(report["events_sent"] / report["duration_s"]),
            "lost": report["lost"], "ok": report["ok"]}


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO meta (key, value) VALUES ('holder', 'x')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def sqlite_lock(hold_s: float) -> dict:
    """Other clients' poll latency while another process holds the write lock for ``hold_s``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/lock.db"
        srv = ServerProcess("--backend", f"sqlite://{path}")
        try:
            http = requests.Session()
            http.post(srv.url + "/notify", json={"channel": "news", "data": 0})
            client = http.get(srv.url + "/register", params={"channel": "news", "timeout": 0}).json()["client"]
            holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path, str(hold_s)],
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            blocked = gevent.spawn(requests.post, srv.url + "/notify", json={"channel": "news", "data": 1})
            t0, worst, polls = time.perf_counter(), 0.0, 0
            while time.perf_counter() - t0 < hold_s * 0.9:
                t = time.perf_counter()
                http.get(srv.url + "/register", params={"channel": "news", "client": client, "timeout": 0,
                                                        "since": 1})
                worst, polls = max(worst, time.perf_counter() - t), polls + 1
            notify_s = blocked.get(timeout=hold_s + 10)
            waited = time.perf_counter() - t0
            holder.wait(10)
        finally:
            srv.stop()
    return {"lock_held_s": hold_s, "polls_during_lock": polls, "max_poll_ms": round(worst * 1000, 1),
            "blocked_notify_status": notify_s.status_code, "blocked_notify_waited_s": round(waited, 2)}


def every_worker_stats(url: str, workers: int, tries: int = 1000) -> list[dict]:
    """``/stats`` of each of ``workers`` processes behind one port: new connections until all answered."""
    seen: dict[str, dict] = {}
    for _ in range(tries):
        with requests.Session() as http:
            reply = http.get(url + "/stats", timeout=10)
        seen.setdefault(reply.headers.get("X-Geventcomet-Worker", ""), reply.json())
        if len(seen) == workers:
            break
    return list(seen.values())


def fanout(redis_url: str, clients: int, workers: int, procs: int, ramp: float, profile: str | None = None,
           think: float = 0, nice: int = 0) -> dict:
    """``clients`` waiting on one channel over ``workers`` processes; one notify reaches them all.

    Latency is from the notifier's timestamp to the reply's arrival at the client's
    socket (the kernel's stamp), as a remote browser would see it; ``*_handled_*`` adds the
    time the load client took to get to the reply. ``warm_server_*`` is the servers' own
    account of the warm fan-out (``last_fanout`` in each worker's /stats): each worker's burst,
    and the window from the first burst's start to the last reply sent. ``nice``: the load client's processes
    run this much nicer than the server, so on these shared cores they take what it leaves
    (0: equal shares, and the fan-out competes with 100,000 replies being read).

    Two notifies, :data:`FANOUT_GAP_S` apart, each timed on its own: the first after the
    ramp ("cold": the processes still grow their heaps, page faults included) and a second
    one ("warm", as in a server that has been running).

    ``think``: seconds each client waits after a reply before polling again (a browser
    renders first); with 0 the 100,000 re-polls compete with the fan-out for the 2 cores.

    ``profile``: a directory; once every client polls, ``py-spy record`` samples each
    worker for 12 s (the notify, the fan-out and the re-polls) into a speedscope file there.
    """
    flush(redis_url)
    srv = ServerProcess("--backend", redis_url, "--workers", str(workers), "--timeout", "120",
                        "--max-timeout", "600", "--client-ttl", "900", ready_timeout=60)
    try:
        srv.wait_log(rf"all {workers} workers listening", timeout=60)
        rss = {}
        spies = []

        def on_ready(_run):
            total = 0
            for pid in open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read().split():
                total += int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                if profile:
                    os.makedirs(profile, exist_ok=True)
                    spies.append(subprocess.Popen(
                        ["py-spy", "record", "-p", pid, "-d", "12", "-r", "200", "--nonblocking",
                         "-f", "speedscope", "-o", f"{profile}/worker-{pid}.json"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            rss["workers_rss_bytes"] = total
            rss["workers_cpu_s_at_ready"] = round(tree_cpu_s(srv.proc.pid), 1)
            rss["loadclient_cpu_s_at_ready"] = round(tree_cpu_s(os.getpid()), 1)  # its procs (+ the supervisor)
            if spies:
                gevent.sleep(1)  # let py-spy attach before the notify

        def server_side(_run):  # after the warm fan-out: each worker's own timing of it
            fanouts = [s["last_fanout"] for s in every_worker_stats(srv.url, workers) if s["last_fanout"]]
            if fanouts:
                ends = [f["started_unix"] + f["ms"] / 1000 for f in fanouts]
                rss["warm_server_window_ms"] = round((max(ends) - min(f["started_unix"] for f in fanouts)) * 1000)
                rss["warm_server_bursts_ms"] = sorted(round(f["ms"]) for f in fanouts)

        t0 = time.monotonic()
        report = run(srv.url, clients=clients, channels=1, duration=2 * FANOUT_GAP_S,
                     notify_rate=1 / FANOUT_GAP_S, notify_count=2, poll_timeout=300, progress=10, procs=procs,
                     ramp=ramp, on_ready=on_ready, before_finish=server_side, think=think, nice=nice).to_dict()
        rss["workers_cpu_s_total"] = round(tree_cpu_s(srv.proc.pid), 1)
    finally:
        srv.stop()
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
    return {"clients": clients, "workers": workers, "procs": procs, "think_s": think, "nice": nice,
            "ready_s": report["ready_s"], "total_s": round(time.monotonic() - t0, 1),
            "received": report["events_received"],
            **{f"{name}_{p}_ms": report["latency_ms_by_seq"].get(seq, {}).get(p)
               for seq, name in (("1", "cold"), ("2", "warm")) for p in ("p50", "p99", "max")},
            **{f"{name}_handled_{p}_ms": report["handled_latency_ms_by_seq"].get(seq, {}).get(p)
               for seq, name in (("1", "cold"), ("2", "warm")) for p in ("p99", "max")},
            "unstamped": report["unstamped"], "loadclient_cpu_s": report.get("cpu_s"),
            "lost": report["lost"], "unanswered": report["unanswered"], "errors": report["errors"],
            "ok": report["ok"], **rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cycle", "memory", "sqlite", "sqlite-lock", "fanout"])
    parser.add_argument("--redis", default=None)
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--procs", type=int, default=6)
    parser.add_argument("--ramp", type=float, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", default=None, help="fanout: py-spy each worker into this directory")
    parser.add_argument("--notifiers", type=int, default=32, help="cycle: notify connections in parallel")
    parser.add_argument("--think", type=float, default=0, help="fanout: clients pause this long before re-polling")
    parser.add_argument("--loadclient-nice", type=int, default=0,
                        help="fanout: the load client's processes run this much nicer than the server")
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}", file=sys.stderr)
    results = []
    for _ in range(args.repeat):
        if args.what == "cycle":
            for backend in ("memory", args.redis):
                results.append(cycle(backend, args.redis, args.clients or 1000, args.duration, args.notifiers))
        elif args.what == "memory":
            for backend in ("memory", args.redis):
                results.append(memory_per_client(backend, args.redis, args.clients or 5000))
        elif args.what == "sqlite":
            for sync in ("full", "normal"):
                results.append(sqlite_notifies(sync, args.duration))
        elif args.what == "sqlite-lock":
            results.append(sqlite_lock(2.0))
        else:
            results.append(fanout(args.redis, args.clients or 100_000, args.workers, args.procs, args.ramp,
                                  args.profile, args.think, args.loadclient_nice))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The deployed topology under chaos, and its speed (issue 18); figures go to docs/topology.md.

    python bench/topology.py chaos  --clients 2000 --procs 4 [--min-replicas 1]
    python bench/topology.py cycle  --clients 300 --duration 6 --repeat 3
    python bench/topology.py fanout --clients 20000 --procs 4
    python bench/topology.py wait-cost --clients 500 --repeat 3

The topology is tests/topology_chaos.py's: a Redis master, a replica and three sentinels,
three ``geventcomet serve --workers 2`` nodes, nginx round robin in front.

- ``chaos``: ``--clients`` clients (one in ten on SSE) through nginx (tests/topology_clients.py), 100
  of them in this process (they tell when delivery has resumed after a fault), the rest in
  ``--procs`` processes; steady notifies with Idempotency-Keys. In turn: kill -9 of a
  node's worker, SIGTERM of a node and its restart, SIGHUP of a node, SENTINEL FAILOVER,
  kill -9 of the master. Then every client's record is checked against every acknowledged
  notify, and the worst gap between answered polls of any client is given per fault.
- ``cycle``: loadclient's cycle (each client on its own channel, notifies as fast as
  accepted) through nginx over the three nodes, and straight to one node; interleaved.
- ``fanout``: one notify to ``--clients`` clients on one channel spread by nginx over the
  three nodes; the time to the last arrival.
- ``wait-cost``: what ``--redis-min-replicas 1`` adds to a notify's latency (one node).
Every run is bounded in count and time.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from gevent.event import Event  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loadclient import run  # noqa: E402
from tests.topology_chaos import LONG_FAULTS, Topology, run_faults  # noqa: E402
from tests.topology_clients import Notifier, Subscriber, caught_up, make_subscriber, verdict  # noqa: E402
from tests.topology_fixtures import Node, SentinelGroup, wait_for  # noqa: E402

PROBES, CHANNELS = 100, 20


def clients_process(args: argparse.Namespace) -> None:
    """``--count`` subscribers; on SIGTERM, catch up with the acknowledged notifies in --final, dump, exit."""
    subscribers = [make_subscriber(args.url, args.offset + i, CHANNELS) for i in range(args.count)]
    stop, finish = Event(), Event()
    gevent.signal_handler(signal.SIGTERM, finish.set)
    polls = [gevent.spawn(sub.run, stop) for sub in subscribers]
    wait_for(lambda: all(sub.started_at for sub in subscribers), 120, "every client's first poll", interval=0.2)
    print("ready", flush=True)
    finish.wait(3600)
    notifier = Notifier(args.url, CHANNELS, 1)
    notifier.acked = {int(n): at for n, at in json.loads(Path(args.final).read_text()).items()}
    try:
        wait_for(lambda: caught_up(subscribers, notifier), 60, "the clients to catch up", interval=0.2)
    except AssertionError as exc:
        print(exc, file=sys.stderr)
    stop.set()
    gevent.killall(polls, timeout=10)
    Path(args.out).write_text(json.dumps([sub.__dict__ for sub in subscribers]))


def chaos(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="topology-"))
    topology = Topology(workdir, min_replicas=args.min_replicas)
    procs: list[subprocess.Popen] = []
    try:
        topology.start()
        per_proc = (args.clients - PROBES) // args.procs
        for i in range(args.procs):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "clients", "--url", topology.url, "--count", str(per_proc),
                 "--offset", str(PROBES + i * per_proc), "--out", str(workdir / f"clients-{i}.json"),
                 "--final", str(workdir / "acked.json")], stdout=subprocess.PIPE, text=True))
        probes = [make_subscriber(topology.url, i, CHANNELS) for i in range(PROBES)]
        stop, notify_stop = Event(), Event()
        polls = [gevent.spawn(sub.run, stop) for sub in probes]
        with gevent.Timeout(180, AssertionError("client processes not ready")):
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_for(lambda: all(sub.started_at for sub in probes), 60, "the probes' first poll")
        notifier = Notifier(topology.url, CHANNELS, args.rate)
        notifying = gevent.spawn(notifier.run, notify_stop)
        started = time.monotonic()
        notify_stop.wait(args.baseline)  # a steady window without faults: the gaps the load alone makes
        baseline = (started, time.monotonic())
        faults = run_faults(topology, LONG_FAULTS, probes, notifier, recover_s=120)
        notify_stop.set()
        notifying.join(timeout=90)
        wait_for(lambda: caught_up(probes, notifier), 60, "the probes to catch up")
        (workdir / "acked.json").write_text(json.dumps(notifier.acked))
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(120)
        stop.set()
        gevent.killall(polls, timeout=10)
        known = set(Subscriber.__dataclass_fields__)
        everyone = probes + [Subscriber(**{k: v for k, v in record.items() if k in known}) for i in range(args.procs)
                             for record in json.loads((workdir / f"clients-{i}.json").read_text())]
        for fault in faults:
            fault["worst_reconnect_gap_s"] = round(max(s.worst_gap(fault["started"], fault["recovered"])
                                                       for s in everyone), 2)
            del fault["started"], fault["recovered"]
        return {"what": "chaos", "min_replicas": args.min_replicas, "rate": args.rate,
                "run_s": round(time.monotonic() - started, 1), "loadavg": os.getloadavg(),
                "baseline_worst_gap_s": round(max(s.worst_gap(*baseline) for s in everyone), 2), "faults": faults,
                "nginx_statuses": topology.nginx.status_counts() if topology.nginx else {},
                **verdict(everyone, notifier)}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        topology.stop()


def cycle(args: argparse.Namespace) -> list[dict]:
    topology = Topology(Path(tempfile.mkdtemp(prefix="topology-")))
    results = []
    try:
        topology.start()
        for _ in range(args.repeat):
            for name, url in (("nginx, 3 nodes", topology.url), ("straight, node 1", topology.nodes[0].url)):
                report = run(url, clients=args.clients, channels=args.clients, duration=args.duration,
                             notify_rate=-1, notify_connections=32, poll_timeout=20, progress=0, procs=1).to_dict()
                results.append({"what": "cycle", "path": name, "clients": args.clients,
                                "deliveries_per_s": round(report["events_received"] / report["duration_s"]),
                                "lost": report["lost"], "ok": report["ok"]})
                print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        topology.stop()
    return results


def fanout(args: argparse.Namespace) -> dict:
    # 20,000 clients and as many upstream connections: 4 nginx workers of 10,000 open files
    topology = Topology(Path(tempfile.mkdtemp(prefix="topology-")), nginx_workers=4,
                        extra=("--timeout", "120", "--max-timeout", "600", "--client-ttl", "900"))
    try:
        topology.start()
        report = run(topology.url, clients=args.clients, channels=1, duration=20, notify_rate=1 / 20, notify_count=1,
                     poll_timeout=300, progress=10, procs=args.procs, ramp=args.ramp).to_dict()
    finally:
        topology.stop()
    return {"what": "fanout", "clients": args.clients, "procs": args.procs, "ready_s": report["ready_s"],
            "received": report["events_received"], "lost": report["lost"], "errors": report["errors"],
            **{f"{p}_ms": report["latency_ms_by_seq"].get("1", {}).get(p) for p in ("p50", "p99", "max")}}


def wait_cost(args: argparse.Namespace) -> list[dict]:
    """Notify latency on one node (1 worker) with and without --redis-min-replicas 1, interleaved:
    ``--clients`` sequential notifies each (no pollers), the median and p99."""
    results = []
    for _ in range(args.repeat):
        for replicas in (0, 1):
            group = SentinelGroup(Path(tempfile.mkdtemp(prefix="topology-")), min_replicas_to_write=replicas)
            node = Node(group.url, 1, ("--redis-min-replicas", str(replicas)) if replicas else ())
            try:
                group.start()
                node.start()
                http, took = requests.Session(), []
                for n in range(args.clients):
                    started = time.perf_counter()
                    reply = http.post(node.url + "/notify", json={"channel": "c", "data": n}, timeout=10)
                    took.append(time.perf_counter() - started)
                    assert reply.status_code == 200, reply.text
                took.sort()
                results.append({"min_replicas": replicas, "notifies": len(took),
                                "p50_ms": round(took[len(took) // 2] * 1000, 2),
                                "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 2)})
                print(json.dumps(results[-1]), file=sys.stderr)
            finally:
                node.stop()
                group.stop()
    return results


def main() -> None:
    if sys.argv[1:2] == ["clients"]:  # one of chaos's client processes
        inner = argparse.ArgumentParser()
        for name in ("--url", "--out", "--final"):
            inner.add_argument(name, required=True)
        inner.add_argument("--count", type=int, required=True)
        inner.add_argument("--offset", type=int, required=True)
        clients_process(inner.parse_args(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["chaos", "cycle", "fanout", "wait-cost"])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20, help="chaos: notifies/s")
    parser.add_argument("--min-replicas", type=int, default=0, help="chaos: the nodes' --redis-min-replicas")
    parser.add_argument("--baseline", type=float, default=15, help="chaos: seconds of notifies before the faults")
    parser.add_argument("--duration", type=float, default=6, help="cycle: seconds per run")
    parser.add_argument("--repeat", type=int, default=1, help="cycle: pairs of runs")
    parser.add_argument("--ramp", type=float, default=0, help="fanout: clients started per second (0: at once)")
    args = parser.parse_args()
    result = {"chaos": chaos, "cycle": cycle, "fanout": fanout, "wait-cost": wait_cost}[args.what](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

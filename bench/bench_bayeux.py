"""Bayeux against the long-poll in the same run (issue 16); figures go to bench/RESULTS-bayeux.md.

    python bench/bench_bayeux.py fanout --clients 1000 5000 --reps 3
    python bench/bench_bayeux.py cycle --clients 1000 --reps 3
    python bench/bench_bayeux.py publish --reps 3         # a Bayeux publish's cost, by channel depth
    python bench/bench_bayeux.py notify --backend redis://127.0.0.1:PORT/0   # POST /notify, /a/b/c vs a-b-c
    python bench/bench_bayeux.py micro --clients 300 --reps 5   # in-process, no sockets: CPU per delivery
    python bench/bench_bayeux.py fanout --backend redis://127.0.0.1:PORT/0   # Redis sessions (flushed per run)

micro: the app called directly (``respond()``, no sockets, no load client): N sessions and N
long-poll clients on one channel, a publish, then every one asks once with timeout 0; the
process's own CPU time per delivery (``time.process_time``), so a loaded machine changes it
little. It is the cost of the transport itself: parse, session, read, select, encode.

fanout: N clients on one channel, events at a steady rate for a few seconds; every event
reaches every client. cycle: N clients each on its own channel, notifies as fast as the
server takes them, each client connecting again after each event. Both modes use
loadclient's exact accounting (nothing lost or repeated, checked), the long-poll through
``loadclient.run`` and Bayeux through ``loadclient.bayeux.run_bayeux``, each on a fresh
server process, the two modes interleaved rep by rep. Server CPU is counted from the
moment every client waits to the end of the notify phase (the ramp and handshakes are
not in it). Every run is bounded in count and time.

--pin puts each server on CPU 0 and this process (the load client) on CPU 1, so the two
never compete for one core. Some runs still come out 30-50 % slower, either transport
(profiled: every part of a request costs more in them, recv and send included: the
shared VM, not a code path), so a pair with one such run gives a ratio far off the
others; read the medians, and the ratio of the median CPU figures.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import requests  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.server_process import ServerProcess  # noqa: E402
from loadclient import run  # noqa: E402
from loadclient.bayeux import run_bayeux  # noqa: E402
from loadclient.httpconn import Connection  # noqa: E402

#: The CPU each server is pinned to with --pin (None: not pinned).
SERVER_CPU: int | None = None


def one_run(mode: str, clients: int, channels: int, rate: float, duration: float, backend: str = "memory") -> dict:
    """One mode on a fresh server: deliveries/s and server CPU per delivery."""
    if backend.startswith("redis"):
        import redis
        redis.Redis.from_url(backend).flushdb()  # a fresh server starts from an empty database
    srv = ServerProcess("--timeout", "20", "--bayeux-session-ttl", "120", "--backend", backend)
    if SERVER_CPU is not None:
        os.sched_setaffinity(srv.proc.pid, {SERVER_CPU})
    marks: dict[str, float] = {}

    def on_ready(_run) -> None:
        marks["cpu0"], marks["t0"] = srv.cpu_s(), time.monotonic()

    def before_finish(_run) -> None:
        marks["cpu1"], marks["t1"] = srv.cpu_s(), time.monotonic()
        marks["received"] = _run.snapshot().events_received

    try:
        go = run if mode == "register" else run_bayeux
        report = go(srv.url, clients=clients, channels=channels, duration=duration, notify_rate=rate,
                    poll_timeout=20, progress=0, accept_short=True, on_ready=on_ready,
                    before_finish=before_finish).to_dict()
        stats = requests.get(srv.url + "/stats", timeout=10).json()
    finally:
        srv.stop()
    received = marks["received"]
    return {"mode": mode, "clients": clients, "deliveries": received,
            "deliveries_per_s": round(received / (marks["t1"] - marks["t0"])),
            "server_cpu_us_per_delivery": round((marks["cpu1"] - marks["cpu0"]) / max(received, 1) * 1e6, 1),
            "lost": report["lost"], "duplicated": report["duplicated"], "ok": report["ok"],
            "p50_ms": report["latency_ms"]["p50"], "p99_ms": report["latency_ms"]["p99"],
            "bayeux": stats.get("bayeux")}


def compare(kind: str, clients: int, reps: int, duration: float, rate: float, backend: str = "memory") -> dict:
    """Interleaved reps of both modes; medians, spreads and the Bayeux/long-poll CPU ratio."""
    runs: dict[str, list[dict]] = {"register": [], "bayeux": []}
    channels = 1 if kind == "fanout" else clients
    for rep in range(reps):
        for mode in ("register", "bayeux") if rep % 2 == 0 else ("bayeux", "register"):
            result = one_run(mode, clients, channels, rate, duration, backend)
            runs[mode].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    summary: dict = {"kind": kind, "clients": clients, "reps": reps, "backend": backend.split(":")[0]}
    for mode, results in runs.items():
        cpu = [r["server_cpu_us_per_delivery"] for r in results]
        rate_s = [r["deliveries_per_s"] for r in results]
        summary[mode] = {"cpu_us_per_delivery_median": statistics.median(cpu), "cpu_spread": [min(cpu), max(cpu)],
                         "deliveries_per_s_median": statistics.median(rate_s),
                         "all_ok": all(r["ok"] and r["lost"] == 0 and r["duplicated"] == 0 for r in results)}
    ratios = [b["server_cpu_us_per_delivery"] / r["server_cpu_us_per_delivery"]
              for b, r in zip(runs["bayeux"], runs["register"])]
    of_medians = summary["bayeux"]["cpu_us_per_delivery_median"] / summary["register"]["cpu_us_per_delivery_median"]
    summary["cpu_ratio_bayeux_over_register"] = {"median": round(statistics.median(ratios), 2),
                                                 "spread": [round(min(ratios), 2), round(max(ratios), 2)],
                                                 "of_medians": round(of_medians, 2)}
    return summary


def publish_cost(reps: int, count: int = 300) -> dict:
    """Server CPU of a Bayeux publish by channel depth (its wildcard feeds are one write each)."""
    out: dict = {}
    for name in ("/a", "/a/b", "/a/b/c/d"):
        costs = []
        for _ in range(reps):
            srv = ServerProcess()
            try:
                http = requests.Session()
                hello = http.post(srv.url + "/bayeux", json=[{"channel": "/meta/handshake", "version": "1.0"}],
                                  timeout=10).json()[0]
                cpu0 = srv.cpu_s()
                for n in range(count):
                    http.post(srv.url + "/bayeux", json=[{"channel": name, "clientId": hello["clientId"],
                                                          "data": n}], timeout=10)
                costs.append((srv.cpu_s() - cpu0) / count * 1e6)
            finally:
                srv.stop()
        out[name] = {"server_cpu_us_per_publish_median": round(statistics.median(costs), 1),
                     "spread": [round(min(costs), 1), round(max(costs), 1)]}
    return out


def notify_cost(reps: int, backend: str, count: int = 2000) -> dict:
    """Server CPU per sequential ``POST /notify`` to a ``/``-channel (its wildcard feeds may be
    written) and to a plain one, on ``backend``, after 200 to warm up."""
    costs: dict[str, list[float]] = {"/a/b/c": [], "a-b-c": []}
    for _ in range(reps):
        for name in costs:
            if backend.startswith("redis"):
                import redis
                redis.Redis.from_url(backend).flushdb()
            srv = ServerProcess("--backend", backend)
            try:
                host, port = srv.url.rsplit("/", 1)[-1].rsplit(":", 1)
                conn = Connection(host, int(port), timeout_s=10)  # the load client's: one send per request
                body = json.dumps({"channel": name, "data": 1}).encode()
                for n in range(200 + count):
                    if n == 200:
                        cpu0 = srv.cpu_s()
                    conn.request("POST", "/notify", body, "Content-Type: application/json\r\n")
                conn.close()
                costs[name].append((srv.cpu_s() - cpu0) / count * 1e6)
            finally:
                srv.stop()
    return {name: {"server_cpu_us_per_notify_median": round(statistics.median(c), 1),
                   "spread": [round(min(c), 1), round(max(c), 1)]} for name, c in costs.items()}


def micro(clients: int, reps: int, rounds: int = 20) -> dict:
    """In-process CPU per delivery of a /meta/connect and of a /register poll (see the docstring)."""
    import io
    import logging

    from geventcomet import Config, make_app
    from geventcomet.protocol import NotifyRequest
    logging.disable(logging.WARNING)
    app = make_app(Config())

    def call(method: str, path: str, query: str = "", body: object = None) -> dict | list:
        raw = json.dumps(body).encode() if body is not None else b""
        env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
        return json.loads(app.respond(env)[1])

    sessions = []
    for _ in range(clients):
        cid = call("POST", "/bayeux", body={"channel": "/meta/handshake"})[0]["clientId"]
        call("POST", "/bayeux", body=[{"channel": "/meta/connect", "clientId": cid}])
        call("POST", "/bayeux", body=[{"channel": "/meta/subscribe", "clientId": cid, "subscription": "/m/x"}])
        sessions.append(json.dumps([{"channel": "/meta/connect", "clientId": cid, "id": "9",
                                     "connectionType": "long-polling", "advice": {"timeout": 0}}]).encode())
    first = call("GET", "/register", "channel=/m/x&timeout=0")
    cursors = [first["cursor"]] * clients

    def bayeux_round() -> None:
        app.service.publish(NotifyRequest("/m/x", None, '{"s":1}'))
        for body in sessions:
            app.respond({"REQUEST_METHOD": "POST", "PATH_INFO": "/bayeux", "CONTENT_TYPE": "application/json",
                         "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)})

    def register_round() -> None:
        app.service.publish(NotifyRequest("/m/x", None, '{"s":1}'))
        for i in range(clients):
            reply = app.respond({"REQUEST_METHOD": "GET", "PATH_INFO": "/register", "QUERY_STRING":
                                 f"channel=/m/x&timeout=0&since={cursors[i]}&client={first['client']}"})
            body = reply[1]  # the cursor by slicing: the client's own work stays out of the figure
            start = body.index(b'"cursor":"') + 10
            cursors[i] = body[start:body.index(b'"', start)].decode()

    costs: dict[str, list[float]] = {"register": [], "bayeux": []}
    for rep in range(reps):
        for mode in ("register", "bayeux") if rep % 2 == 0 else ("bayeux", "register"):
            go = register_round if mode == "register" else bayeux_round
            cpu0 = time.process_time()
            for _ in range(rounds):
                go()
            costs[mode].append((time.process_time() - cpu0) / (rounds * clients) * 1e6)
    ratios = [b / r for b, r in zip(costs["bayeux"], costs["register"])]
    return {"kind": "micro", "clients": clients, "reps": reps,
            **{mode: {"cpu_us_per_delivery_median": round(statistics.median(c), 1),
                      "spread": [round(min(c), 1), round(max(c), 1)]} for mode, c in costs.items()},
            "cpu_ratio_bayeux_over_register": {"median": round(statistics.median(ratios), 2),
                                               "spread": [round(min(ratios), 2), round(max(ratios), 2)]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["fanout", "cycle", "publish", "notify", "micro"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=None, help="events/s (fanout: 10; cycle: as fast as taken)")
    parser.add_argument("--backend", default="memory", help="the servers' --backend, e.g. redis://127.0.0.1:6390/0")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 0, the load client on CPU 1 (see above)")
    args = parser.parse_args()
    if args.pin:
        global SERVER_CPU
        SERVER_CPU = 0
        os.sched_setaffinity(0, {1})
    if args.what == "publish":
        print(json.dumps(publish_cost(args.reps), indent=1))
        return
    if args.what == "notify":
        print(json.dumps(notify_cost(args.reps, args.backend), indent=1))
        return
    if args.what == "micro":
        for clients in args.clients:
            print(json.dumps(micro(clients, args.reps)), flush=True)
        return
    rate = args.rate if args.rate is not None else (10.0 if args.what == "fanout" else -1.0)
    for clients in args.clients:
        print(json.dumps(compare(args.what, clients, args.reps, args.duration, rate, args.backend), indent=1),
              flush=True)


if __name__ == "__main__":
    main()

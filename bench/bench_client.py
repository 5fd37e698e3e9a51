"""The Python client's throughput, and its promises over long chaos runs.

Sub-commands (each result is one JSON line on stdout):

- ``publish``: one ``Publisher`` (blocking, ``http.client``) and one ``AsyncPublisher`` (httpx)
  publishing sequentially over one keep-alive connection; publishes/s and client CPU per
  publish. Bar: 2,000/s. ``--before REV`` adds, interleaved, the blocking ``Publisher`` of
  commit ``REV`` (its ``geventcomet/client/publisher.py``, loaded beside today's package:
  round one's, on ``httpx.Client``, with ``--before d0af075^``).
- ``subscribe``: ``--subscribers`` ``AsyncSubscriber`` in ONE process under ``asyncio.run``,
  while another process publishes batches (``publish_many``); events handed out per second
  in the subscribers' process. Bar: 5,000/s.
- ``layers``: the client CPU of one publish through each HTTP layer (``Publisher``, on
  ``http.client`` since round two; httpx's client and transport, httpcore, a bare
  ``http.client.HTTPConnection``), same server.
- ``chaos``: the steady-stream tests of ``tests/test_client_resilience.py`` (a SQLite server
  restart, a Redis restart, workers killed under ``--workers 3``) with ``--count`` events
  (10,000 by default) instead of the tests' short run.

Every measured run gets a fresh server (``python -m geventcomet serve``, memory backend) and
fresh client processes, plain Python (not monkey-patched), as an application runs them;
runs of the blocking and the asyncio flavours are interleaved. Medians and ranges are printed
at the end. This orchestrating process is gevent-patched only to drive the server process.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.server_process import ServerProcess  # noqa: E402

PUBLISH_SYNC = """
import importlib.util, json, resource, sys, time
from geventcomet.client import Publisher
url, count, flavour = sys.argv[1], int(sys.argv[2]), "blocking"
if len(sys.argv) > 3:  # an older publisher.py, loaded as a module of today's package
    spec = importlib.util.spec_from_file_location("geventcomet.client.publisher_before", sys.argv[3])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Publisher, flavour = module.Publisher, "blocking-before"
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
with Publisher(url) as publisher:
    for n in range(200):  # warm-up: the connection, the server's first channel
        publisher.publish("warm", n)
    started, cpu_started = time.perf_counter(), cpu()
    for n in range(count):
        publisher.publish("bench", n)
    elapsed, cpu_used = time.perf_counter() - started, cpu() - cpu_started
    batches = max(1, count // 100)
    batch_started = time.perf_counter()
    for b in range(batches):  # the same events 100 at a time (publish_many): events/s
        publisher.publish_many([("batch", n) for n in range(100)])
    batch_elapsed = time.perf_counter() - batch_started
print(json.dumps({"flavour": flavour, "publishes": count, "per_s": round(count / elapsed),
                  "client_cpu_us_per_publish": round(cpu_used / count * 1e6),
                  "batched_events_per_s": round(batches * 100 / batch_elapsed)}))
"""

PUBLISH_ASYNC = """
import asyncio, json, resource, sys, time
from geventcomet.client import AsyncPublisher
url, count = sys.argv[1], int(sys.argv[2])
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])

async def main():
    async with AsyncPublisher(url) as publisher:
        for n in range(200):
            await publisher.publish("warm", n)
        started, cpu_started = time.perf_counter(), cpu()
        for n in range(count):
            await publisher.publish("bench", n)
        return time.perf_counter() - started, cpu() - cpu_started

elapsed, cpu_used = asyncio.run(main())
print(json.dumps({"flavour": "asyncio", "publishes": count, "per_s": round(count / elapsed),
                  "client_cpu_us_per_publish": round(cpu_used / count * 1e6)}))
"""

SUBSCRIBE_ASYNC = """
import asyncio, json, sys, time
from geventcomet.client import AsyncSubscriber
url, cursor, subscribers, events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
first = []

async def one():
    seen = gaps = 0
    async with AsyncSubscriber(url, "bench", cursor=cursor, poll_timeout_s=30) as sub:
        async for item in sub:
            if not first:
                first.append(time.perf_counter())
            if not hasattr(item, "data"):  # a Gap: the subscriber fell behind the backlog
                gaps += 1
                continue
            seen += 1
            if item.data["n"] == events - 1:
                return seen, gaps

async def main():
    print("ready", flush=True)
    counts = await asyncio.wait_for(asyncio.gather(*[one() for _ in range(subscribers)]), 300)
    return counts, time.perf_counter() - first[0]

counts, elapsed = asyncio.run(main())
total = sum(seen for seen, _ in counts)
print(json.dumps({"subscribers": subscribers, "events": total, "gaps": sum(gaps for _, gaps in counts),
                  "per_s": round(total / elapsed)}))
"""

PUBLISH_BATCHES = """
import sys
from geventcomet.client import Publisher
url, events, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Publisher(url) as publisher:
    for start in range(0, events, batch):
        publisher.publish_many([("bench", {"n": n, "pad": "x" * 40}) for n in range(start, min(events, start + batch))])
"""


LAYERS = """
import http.client, json, resource, sys, time
import httpcore, httpx
from geventcomet.client import Publisher
url, count = sys.argv[1], int(sys.argv[2])
host, port = url[len("http://"):].split(":")
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
body = b'{"channel":"layers","data":1}'
head = {"Content-Type": "application/json"}
publisher, client, transport = Publisher(url), httpx.Client(base_url=url), httpx.HTTPTransport()
pool, conn = httpcore.ConnectionPool(), http.client.HTTPConnection(host, int(port))

def stdlib(key):
    conn.request("POST", "/notify", body=body, headers={**head, "Idempotency-Key": key})
    conn.getresponse().read()

layers = {
    "Publisher.publish": lambda key: publisher.publish("layers", 1, idempotency_key=key),
    "httpx.Client.post": lambda key: client.post("/notify", content=body, headers={**head, "Idempotency-Key": key}),
    "httpx.HTTPTransport": lambda key: transport.handle_request(httpx.Request(
        "POST", url + "/notify", content=body, headers={**head, "Idempotency-Key": key})).read(),
    "httpcore.ConnectionPool": lambda key: pool.request(
        "POST", url + "/notify", content=body, headers={**head, "Idempotency-Key": key}).content,
    "http.client": stdlib,
}
for name, send in layers.items():
    for n in range(100):
        send(f"{name}-warm-{n}")
    started = cpu()
    for n in range(count):
        send(f"{name}-{n}")
    print(json.dumps({"layer": name, "client_cpu_us_per_request": round((cpu() - started) / count * 1e6)}))
"""


def child(code: str, *args: object, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=REPO,
                            stdout=stdout, text=True)


def last_json(proc: subprocess.Popen, timeout: float = 400) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"a client process failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def start_cursor(url: str, channel: str) -> str:
    import requests
    return requests.get(url + "/register", params={"channel": channel, "since": 0, "timeout": 0},
                        timeout=10).json()["cursor"]


def publisher_file(rev: str) -> str:
    """``geventcomet/client/publisher.py`` as of commit ``rev``, in a temporary file."""
    import tempfile
    text = subprocess.run(["git", "show", f"{rev}:geventcomet/client/publisher.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
        out.write(text)
    return out.name


def bench_publish(runs: int, count: int, before: str | None) -> list[dict]:
    results = []
    flavours = [("blocking", PUBLISH_SYNC, ()), ("asyncio", PUBLISH_ASYNC, ())]
    if before:
        flavours.insert(1, ("blocking-before", PUBLISH_SYNC, (publisher_file(before),)))
    for _ in range(runs):
        for _flavour, code, extra in flavours:  # interleaved
            server = ServerProcess()
            try:
                result = last_json(child(code, server.url, count, *extra))
            finally:
                server.stop()
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def bench_subscribe(runs: int, subscribers: int, events: int, batch: int) -> list[dict]:
    results = []
    for _ in range(runs):
        server = ServerProcess("--backlog", str(max(events, 1000)))  # nobody falls behind the backlog
        try:
            cursor = start_cursor(server.url, "bench")
            receiver = child(SUBSCRIBE_ASYNC, server.url, cursor, subscribers, events)
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            sender = child(PUBLISH_BATCHES, server.url, events, batch, stdout=subprocess.DEVNULL)
            result = last_json(receiver)
            sender.wait(60)
        finally:
            server.stop()
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def summary(name: str, results: list[dict]) -> None:
    rates = sorted(r["per_s"] for r in results)
    cpu = sorted(r.get("client_cpu_us_per_publish", 0) for r in results)
    print(json.dumps({"summary": name, "runs": len(rates), "median_per_s": statistics.median(rates),
                      "min": rates[0], "max": rates[-1], "median_client_cpu_us": statistics.median(cpu),
                      "cpu_min": cpu[0], "cpu_max": cpu[-1]}), flush=True)


def chaos(count: int) -> int:
    env = {**os.environ, "GEVENTCOMET_CHAOS_COUNT": str(count)}
    return subprocess.call([sys.executable, "-m", "pytest", "tests/test_client_resilience.py", "-q", "-x",
                            "-p", "no:cacheprovider"], cwd=REPO, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("--runs", type=int, default=5)
    publish.add_argument("--count", type=int, default=5000)
    publish.add_argument("--before", metavar="REV", help="also run the blocking Publisher of this commit")
    subscribe = commands.add_parser("subscribe")
    subscribe.add_argument("--runs", type=int, default=5)
    subscribe.add_argument("--subscribers", type=int, default=20)
    subscribe.add_argument("--events", type=int, default=5000, help="events each subscriber receives")
    subscribe.add_argument("--batch", type=int, default=100, help="events per publish_many")
    layers = commands.add_parser("layers", help="client CPU per request of each HTTP layer")
    layers.add_argument("--count", type=int, default=2000)
    chaos_command = commands.add_parser("chaos")
    chaos_command.add_argument("--count", type=int, default=10_000)
    args = parser.parse_args()
    if args.command == "publish":
        results = bench_publish(args.runs, args.count, args.before)
        for flavour in ("blocking", "blocking-before", "asyncio"):
            if any(r["flavour"] == flavour for r in results):
                summary(f"publish {flavour}", [r for r in results if r["flavour"] == flavour])
    elif args.command == "subscribe":
        summary(f"subscribe x{args.subscribers}", bench_subscribe(args.runs, args.subscribers, args.events,
                                                                 args.batch))
    elif args.command == "layers":
        server = ServerProcess()
        try:
            proc = child(LAYERS, server.url, args.count, stdout=None)
            proc.wait(600)
        finally:
            server.stop()
    else:
        return chaos(args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())

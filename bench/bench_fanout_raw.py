"""One notify to N waiting clients, measured with the lightest possible driver.

A cross-check of bench_table.py's fan-out rows: here each fake client is a bare
socket that sends one register request and reads until its event arrives (no JSON
parsing, no re-poll), so the load generator takes as little of the 2 shared cores
as it can. Starts its own server process, reads its RSS and CPU from /proc.
Loopback only; bounded by N and a 120 s limit.

    python bench/bench_fanout_raw.py --sizes 1000,5000,15000
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers import ServerProcess  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(port: int, i: int, received: list, channel: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /register?channel=%s&timeout=100&client=c%d HTTP/1.1\r\nHost: x\r\n\r\n"
                     % (channel.encode(), i))
        buf = b""
        while b'"events":[{' not in buf:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        received.append(time.perf_counter())


def fanout(url: str, pid: int, n: int) -> str:
    port = int(url.rsplit(":", 1)[1])
    channel = f"raw{n}"
    before = requests.get(url + "/stats", timeout=10).json()
    received: list[float] = []
    started = time.perf_counter()
    clients = [gevent.spawn(client, port, i, received, channel) for i in range(n)]
    held = requests.get(url + "/stats", params={"waiting": n, "timeout": 60}, timeout=70).json()
    connected_s = time.perf_counter() - started
    cpu_before = cpu_s(pid)
    sent = time.perf_counter()
    requests.post(url + "/notify", json={"channel": channel, "data": "x"}, timeout=10)
    gevent.joinall(clients, timeout=60)
    cpu = cpu_s(pid) - cpu_before
    latency = sorted((t - sent) * 1000 for t in received)
    kb = (held["rss_bytes"] - before["rss_bytes"]) / n / 1024
    return (f"N={n}: connected in {connected_s:.2f} s, {kb:.1f} KB RSS/client; fan-out last {latency[-1]:.0f} ms "
            f"(p50 {latency[len(latency) // 2]:.0f}, p99 {latency[int(len(latency) * .99)]:.0f}), "
            f"{len(latency)}/{n} received, server CPU {cpu * 1000:.0f} ms ({cpu * 1e6 / n:.0f} us/client)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,15000")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with gevent.Timeout(120):
        for n in map(int, args.sizes.split(",")):  # a fresh server per size
            server = ServerProcess()  # logs at INFO: only its start-up lines
            try:
                print(fanout(server.url, server.proc.pid, n), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()

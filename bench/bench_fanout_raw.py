"""One notify to N waiting clients, measured with the lightest possible driver.

A cross-check of bench_table.py's fan-out rows: here each fake client is a bare
socket that sends one register request and reads until its event arrives (no JSON
parsing), so the load generator takes as little of the 2 shared cores as it can.
Starts its own server process, reads its RSS and CPU from /proc.
Loopback only; bounded by N, the rounds and a 300 s limit.

    python bench/bench_fanout_raw.py --sizes 1000,5000,15000
    python bench/bench_fanout_raw.py --sizes 10000 --rounds 8 [--gc-young 10000]

With ``--rounds R`` each client polls again at once after each event, and R notifies
are timed one after the other: per round, the time to the last client, the server's
CPU per client (one delivery and one re-poll each) and its cyclic-collector time
(``gc_collections``/``gc_s`` from /stats). ``--gc-young`` starts the server with
that young-generation threshold instead of ``geventcomet.gctune.GC_THRESHOLDS``'s.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from gevent.event import Event  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from geventcomet import clientid  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

#: The server's --client-secret: each client re-polls with an id minted here, as the server
#: would have minted it (a chosen id is refused), without parsing a first reply.
CLIENT_SECRET = secrets.token_urlsafe(32)


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Arrivals:
    """Arrival times of events at the clients, and an Event set when a round is complete."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.target = 0
        self.complete = Event()

    def add(self) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) >= self.target:
            self.complete.set()

    def expect(self, more: int) -> None:
        self.target = len(self.times) + more
        self.complete.clear()


def client(port: int, i: int, arrivals: Arrivals, channel: str, rounds: int) -> None:
    client_id = clientid.mint(CLIENT_SECRET.encode())
    request = b"GET /register?channel=%s&timeout=100&client=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (
        channel.encode(), client_id.encode())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(rounds):
            sock.sendall(request)
            buf = b""
            while b'"events":[{' not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            arrivals.add()


def waiting(url: str, n: int) -> dict:
    """/stats once ``n`` polls are held."""
    return requests.get(url + "/stats", params={"waiting": n, "timeout": 60}, timeout=70).json()


def fanout(url: str, pid: int, n: int, rounds: int) -> list[str]:
    port = int(url.rsplit(":", 1)[1])
    channel = f"raw{n}"
    empty = requests.get(url + "/stats", timeout=10).json()
    arrivals = Arrivals()
    started = time.perf_counter()
    clients = [gevent.spawn(client, port, i, arrivals, channel, rounds) for i in range(n)]
    first = waiting(url, n)
    kb = (first["rss_bytes"] - empty["rss_bytes"]) / n / 1024
    lines = [f"N={n}: connected in {time.perf_counter() - started:.2f} s, {kb:.1f} KB RSS/client"]
    for round_no in range(1, rounds + 1):
        if round_no > 1:
            waiting(url, n)  # every client has polled again
        arrivals.expect(n)
        cpu_before = cpu_s(pid)
        sent = time.perf_counter()
        requests.post(url + "/notify", json={"channel": channel, "data": "x"}, timeout=10)
        arrivals.complete.wait(60)
        cpu = cpu_s(pid) - cpu_before
        latency = sorted((t - sent) * 1000 for t in arrivals.times[-n:])
        lines.append(f"  round {round_no}: fan-out last {latency[-1]:.0f} ms (p50 {latency[len(latency) // 2]:.0f}, "
                     f"p99 {latency[int(len(latency) * .99)]:.0f}), {len(latency)}/{n} received, "
                     f"server CPU {cpu * 1000:.0f} ms ({cpu * 1e6 / n:.0f} us/client)")
    if rounds > 1:
        last = waiting(url, n)
        lines.append(f"  cyclic collector from the first notify to the last re-poll: "
                     f"{last['gc_collections'] - first['gc_collections']} collections, "
                     f"{last['gc_s'] - first['gc_s']:.3f} s")
    gevent.joinall(clients, timeout=60)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,15000")
    parser.add_argument("--rounds", type=int, default=1, help="notifies, each client re-polling after each")
    parser.add_argument("--gc-young", type=int, default=None, help="the server's young-generation threshold")
    args = parser.parse_args()
    python_args: tuple[str, ...] = ("-m", "geventcomet")
    if args.gc_young is not None:
        python_args = ("-c", "import sys; from geventcomet.cli import main; import geventcomet.gctune as s; "
                       f"s.GC_THRESHOLDS = ({args.gc_young}, *s.GC_THRESHOLDS[1:]); sys.exit(main(sys.argv[1:]))")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with gevent.Timeout(300):
        for n in map(int, args.sizes.split(",")):  # a fresh server per size
            server = ServerProcess("--test-hooks", "--client-secret", CLIENT_SECRET,  # /stats?waiting=N
                                   python_args=python_args)
            try:
                print("\n".join(fanout(server.url, server.proc.pid, n, args.rounds)), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()

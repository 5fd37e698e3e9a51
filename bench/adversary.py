"""A bounded mix of the issue-11 attacks against a server under normal load.

Usage::

    python bench/adversary.py [--duration 120] [--clients 200] [--attackers 400] [--backend memory]

It starts a fresh ``geventcomet serve`` (its own process), then two processes of its own:

- the **normal load**: ``--clients`` long-poll clients on one channel, each re-polling
  with its cursor, and a publisher notifying every ``--interval`` seconds. Each event
  carries its publish time; a client notes the latency at arrival and every id it got;
- the **attackers** (``--role attack``): at most ``--attackers`` connections at once,
  cycling through the attacks below until the duration ends.
A channel with a 12 MB backlog is made first, for the clients that never read.

It prints (and ``--json`` writes) normal clients' latency p50/p99 before, during and
after the attack, lost and duplicated events (must be 0 lost), gaps reported, the
normal clients' non-200 replies, and the server's RSS and open files before, during
and after. Every loop is bounded by the duration and by counts; traffic is loopback only.

Attacks (one connection each, chosen in turn): a slowloris head trickled a byte a
second; a POST with Content-Length and no body; ``Expect: 100-continue`` with no body;
a chunked body without its last chunk; a smuggling attempt (Content-Length with
Transfer-Encoding); a poll that pipelines a byte and hangs up; a poll of a big backlog
that never reads; an SSE stream that never reads; a notify to a new channel name;
notify bodies with NaN, a lone surrogate and deep nesting; ``/stats?waiting``;
garbage bytes.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server_process import ServerProcess  # noqa: E402

BIG_CHANNEL = "adv-big"
NORMAL_CHANNEL = "normal"


# -- a tiny HTTP/1.1 client on a raw socket (keep-alive, Content-Length replies only) ------------

class Conn:
    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head_bytes, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                      if k.lower() == "content-length")
        while len(self.buf) < length:
            self._fill()
        payload, self.buf = self.buf[:length], self.buf[length:]
        return status, payload

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


# -- the normal load ------------------------------------------------------------------------------

def normal_load(port: int, clients: int, duration_s: float, interval_s: float, phases: tuple[float, float]) -> dict:
    """Run the clients and the publisher for ``duration_s``; latencies split by phase."""
    started = time.monotonic()
    end = started + duration_s
    latencies: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    received: list[list[int]] = [[] for _ in range(clients)]
    gaps, errors = [0], [0]

    def phase(now: float) -> str:
        elapsed = now - started
        return "before" if elapsed < phases[0] else "during" if elapsed < phases[1] else "after"

    def client(i: int) -> None:
        cursor = client_id = ""  # the id the server mints on the first poll (a chosen one is refused)
        conn = None
        while time.monotonic() < end + 2:
            try:
                conn = conn or Conn(port)
                path = f"/register?channel={NORMAL_CHANNEL}&timeout=5"
                path += (f"&client={client_id}" if client_id else "") + (f"&since={cursor}" if cursor else "")
                status, body = conn.request("GET", path)
            except (OSError, ConnectionError, ValueError):
                errors[0] += 1
                conn = None
                gevent.sleep(0.2)  # a bounded back-off before reconnecting (not a synchronisation)
                continue
            arrived = time.time()
            if status != 200:
                errors[0] += 1
                gevent.sleep(0.2)
                continue
            reply = json.loads(body)
            cursor, client_id = reply["cursor"], reply["client"]
            gaps[0] += not reply["recovered"] and bool(received[i])
            for event in reply["events"]:
                received[i].append(event["id"])
                latencies[phase(time.monotonic())].append((arrived - event["data"]["t"]) * 1000)
        if conn:
            conn.close()

    published = [0]

    def publisher() -> None:
        conn = Conn(port)
        gevent.sleep(1.0)  # let the clients park first (their first poll starts "now")
        while time.monotonic() < end:
            body = json.dumps({"channel": NORMAL_CHANNEL, "data": {"t": time.time()}}).encode()
            status, reply = conn.request("POST", "/notify", body)
            if status == 200:
                published[0] = json.loads(reply)["id"]
            else:
                errors[0] += 1
            gevent.sleep(interval_s)
        conn.close()

    greenlets = [gevent.spawn(client, i) for i in range(clients)] + [gevent.spawn(publisher)]
    gevent.joinall(greenlets, timeout=duration_s + 30)
    last = published[0]
    lost = dups = 0
    for ids in received:
        if not ids:
            lost += last
            continue
        first = ids[0]  # a client starts "now": it owes everything from its first event on
        want = set(range(first, last + 1))
        lost += len(want - set(ids))
        dups += len(ids) - len(set(ids))
    return {"published": last, "lost": lost, "duplicates": dups, "gaps": gaps[0], "errors": errors[0],
            "latency_ms": {name: {"n": len(v), "p50": round(percentile(v, .5), 1),
                                  "p99": round(percentile(v, .99), 1)} for name, v in latencies.items()}}


# -- the attackers --------------------------------------------------------------------------------

def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _hold(sock: socket.socket, seconds: float) -> None:
    """Read (and drop) what the server sends until it closes, or ``seconds`` pass."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _never_read(sock: socket.socket, seconds: float) -> None:
    """Stay connected for ``seconds`` without reading a byte: the server must drop us itself."""
    gevent.sleep(seconds)  # the attack is to do nothing; its length is the attack's, not a sync


def attack_slowloris(port: int) -> None:
    with _open(port) as sock:
        for byte in b"GET /register?channel=x HTTP/1.1\r\nHost: a\r\n":
            sock.sendall(bytes([byte]))
            gevent.sleep(1.0)


def attack_body_missing(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        _hold(sock, 30)


def attack_expect_continue(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n")
        _hold(sock, 30)


def attack_chunked_unfinished(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(b"GET /register?channel=x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        _hold(sock, 30)


def attack_smuggle(port: int) -> None:
    inner = b'POST /notify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n' \
            b'{"channel":"smuggled","data":"pwned"}'
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    with _open(port) as sock:
        sock.sendall(b"GET /register?channel=x&timeout=0 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + body)
        _hold(sock, 5)


def attack_pipeline_and_leave(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(b"GET /register?channel=quiet&timeout=60 HTTP/1.1\r\nHost: a\r\n\r\n")
        gevent.sleep(0.2)
        sock.sendall(b"G")


def attack_big_backlog_never_read(port: int) -> None:
    with _open(port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /register?channel={BIG_CHANNEL}&since=0 HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        _never_read(sock, 30)


def attack_stream_never_read(port: int) -> None:
    with _open(port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /stream?channel={BIG_CHANNEL}&since=0 HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        _never_read(sock, 30)


def _post(port: int, body: bytes) -> None:
    with _open(port) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        _hold(sock, 10)


def attack_new_channel(port: int) -> None:
    _post(port, json.dumps({"channel": f"spam{random.getrandbits(40):x}", "data": 1}).encode())


def attack_bad_json(port: int) -> None:
    _post(port, random.choice([b'{"channel":"s","data":NaN}', b'{"channel":"s","data":"\\ud800"}',
                               b'{"channel":"s","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
                               b'{"channel":"s","data":1e999}']))


def attack_stats_waiting(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(b"GET /stats?waiting=100000&timeout=60 HTTP/1.1\r\nHost: a\r\n\r\n")
        _hold(sock, 10)


def attack_garbage(port: int) -> None:
    with _open(port) as sock:
        sock.sendall(os.urandom(random.randint(1, 3000)))
        _hold(sock, 10)


ATTACKS = [attack_slowloris, attack_body_missing, attack_expect_continue, attack_chunked_unfinished,
           attack_smuggle, attack_pipeline_and_leave, attack_big_backlog_never_read, attack_stream_never_read,
           attack_new_channel, attack_bad_json, attack_stats_waiting, attack_garbage]


def attackers(port: int, concurrency: int, duration_s: float) -> dict:
    end = time.monotonic() + duration_s
    pool = Pool(concurrency)
    counts: dict[str, int] = {}

    def one(attack) -> None:
        try:
            with gevent.Timeout(max(end - time.monotonic(), 0.1), False):
                attack(port)
        except OSError:
            pass
        counts[attack.__name__] = counts.get(attack.__name__, 0) + 1

    i = 0
    while time.monotonic() < end:
        pool.spawn(one, ATTACKS[i % len(ATTACKS)])
        i += 1
    pool.kill(timeout=5)  # the attack ends on time, whatever is still open
    return counts


# -- the run --------------------------------------------------------------------------------------

def server_numbers(server: ServerProcess) -> dict:
    stats = server.stats()
    fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
    return {"rss_mb": round(stats["rss_bytes"] / 2**20, 1), "fds": fds, "waiting": stats["waiting"],
            "channels": stats.get("channels")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of attack")
    parser.add_argument("--calm", type=float, default=10.0, help="seconds of normal load before and after")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--attackers", type=int, default=400, help="attack connections at once")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between normal notifies")
    parser.add_argument("--backend", default="memory")
    parser.add_argument("--role", choices=["run", "attack"], default="run")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.role == "attack":
        print(json.dumps(attackers(args.port, args.attackers, args.duration)), flush=True)
        return
    server = ServerProcess("--backend", args.backend, "--header-timeout", "5", "--body-timeout", "5",
                           "--write-timeout", "10", "--max-reply-bytes", "262144")
    try:
        port = int(server.url.rsplit(":", 1)[1])
        filler = Conn(port)
        for _ in range(200):  # a big backlog for the non-reading attackers: 12 MB, more than socket buffers
            filler.request("POST", "/notify", json.dumps({"channel": BIG_CHANNEL, "data": "x" * 60_000}).encode())
        filler.close()
        numbers = {"idle": server_numbers(server)}
        total = args.calm * 2 + args.duration
        load = gevent.spawn(normal_load, port, args.clients, total, args.interval,
                            (args.calm, args.calm + args.duration))
        # The run's schedule (not a synchronisation): calm, attack, calm; a snapshot mid-way in each.
        gevent.sleep(args.calm / 2)
        numbers["before"] = server_numbers(server)
        gevent.sleep(args.calm / 2)
        attack = subprocess.Popen([sys.executable, __file__, "--role", "attack", "--port", str(port),
                                   "--attackers", str(args.attackers), "--duration", str(args.duration)],
                                  stdout=subprocess.PIPE, text=True)
        gevent.sleep(args.duration / 2)
        numbers["during"] = server_numbers(server)
        out, _ = attack.communicate(timeout=args.duration + 60)
        gevent.sleep(args.calm / 2)
        numbers["after"] = server_numbers(server)
        results = load.get(timeout=total + 60)
        stats = server.stats()
        check = Conn(port)
        _, smuggled = check.request("GET", "/register?channel=smuggled&since=0&timeout=0")
        check.close()
    finally:
        server.stop()
    report = {"command": " ".join(sys.argv), "normal": results, "server": numbers,
              "attacks": json.loads(out.strip().splitlines()[-1]) if out.strip() else {},
              "misbehaviour": stats.get("misbehaviour"),
              "smuggled_events": len(json.loads(smuggled)["events"])}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if results["lost"] or report["smuggled_events"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

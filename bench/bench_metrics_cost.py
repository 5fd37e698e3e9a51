"""What metrics cost a register cycle and a fan-out, counted in instructions (issue 17).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/bench_metrics_cost.py --rounds 0
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/bench_metrics_cost.py --rounds 20

One process: a server on the memory backend and its clients, over real loopback sockets.
``--rounds R`` runs R fan-out rounds (``--waiters`` polls held on one channel, one notify,
every reply read, every client polls again with its cursor) and R register cycles
(``--clients`` clients each on its own channel: notify, reply, poll again). Instructions of
the run with rounds less those of ``--rounds 0`` (start-up alone) are the work's; the same
script on two trees (with and without the metrics call sites) gives the cost, without the
noise of a shared machine's load. bench/RESULTS-ops.md has the figures.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

import gevent  # noqa: E402

from geventcomet import Config, make_app  # noqa: E402
from geventcomet.server import make_server  # noqa: E402


class Client:
    """One keep-alive connection speaking just enough HTTP/1.1 for /register and /notify."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buffer = b""

    def request(self, head: str, body: bytes = b"") -> dict:
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head_bytes, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = int(head_bytes.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        reply, self.buffer = self.buffer[:length], self.buffer[length:]
        return json.loads(reply)

    def poll(self, channel: str, cursor: str | None, timeout: int = 60) -> dict:
        since = f"&since={cursor}" if cursor else ""
        return self.request(f"GET /register?channel={channel}&timeout={timeout}{since} HTTP/1.1\r\nHost: b\r\n\r\n")

    def notify(self, channel: str) -> dict:
        body = json.dumps({"channel": channel, "data": 1}).encode()
        return self.request(f"POST /notify HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n", body)


def wait_parked(hub, count: int) -> None:
    with gevent.Timeout(120):
        while hub.waiting != count:
            hub.next_change().wait()


def fanout_rounds(server, waiters: int, rounds: int) -> None:
    clients = [Client(server.server_port) for _ in range(waiters)]
    cursors = [c.poll("fan", None, timeout=0)["cursor"] for c in clients]
    notifier = Client(server.server_port)
    for _ in range(rounds):
        jobs = [gevent.spawn(c.poll, "fan", cursor) for c, cursor in zip(clients, cursors)]
        wait_parked(server.app.hub, waiters)
        notifier.notify("fan")
        cursors = [job.get()["cursor"] for job in jobs]
    for client in (*clients, notifier):
        client.sock.close()


def cycle_rounds(server, clients_n: int, rounds: int) -> None:
    clients = [Client(server.server_port) for _ in range(clients_n)]
    notifier = Client(server.server_port)

    def one(i: int, client: Client) -> None:
        cursor = client.poll(f"c{i}", None, timeout=0)["cursor"]
        for _ in range(rounds):
            job = gevent.spawn(client.poll, f"c{i}", cursor)
            gevent.sleep(0)  # let it send; a notify before it parks is read at once all the same
            notifier_for[i].notify(f"c{i}")
            cursor = job.get()["cursor"]

    notifier_for = {i: Client(server.server_port) for i in range(clients_n)}
    gevent.joinall([gevent.spawn(one, i, c) for i, c in enumerate(clients)], raise_error=True)
    for client in (*clients, notifier, *notifier_for.values()):
        client.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    # Generous deadlines: under valgrind a connection may wait long for its first request.
    config = Config(host="127.0.0.1", port=0, log_level="WARNING", header_timeout_s=3600.0,
                    keepalive_timeout_s=3600.0, body_timeout_s=3600.0, write_timeout_s=3600.0)
    server = make_server(config, make_app(config))
    server.start()
    fanout_rounds(server, args.waiters, args.rounds)
    cycle_rounds(server, args.clients, args.rounds)
    stats = server.app.stats
    print(json.dumps({"rounds": args.rounds, "published": stats.published, "delivered": stats.delivered}))
    server.stop_gracefully()


if __name__ == "__main__":
    main()

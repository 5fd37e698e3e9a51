"""How fast a waiting client that hangs up is noticed and freed (issue #2: within 100 ms).

Runs a geventcomet server in this process (so the hub's unpark can be timed exactly),
parks N raw-socket clients on one channel, then closes them with FIN or RST, one
after another (the server runs between closes) or all in one loop, and reports, per
client, the time from its close() to the server freeing its waiter. Loopback only;
bounded by N and a 60 s overall limit.

    python bench/bench_disconnect.py --clients 2000 --how FIN
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from geventcomet import Config, clientid, make_app  # noqa: E402
from geventcomet.server import make_server, raise_open_file_limit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--how", choices=["FIN", "RST"], default="FIN")
    parser.add_argument("--all-at-once", action="store_true",
                        help="close every socket in one loop (the server runs only after the last)")
    args = parser.parse_args()
    raise_open_file_limit()
    config = Config(port=0, log_level="WARNING")
    app = make_app(config)
    server = make_server(config, app)
    server.start()
    freed_at: dict[int, float] = {}  # client index -> when its waiter was freed
    ids = [clientid.mint(app.backend.client_secret()) for _ in range(args.clients)]  # as the server mints them
    index_of = {"@" + client: i for i, client in enumerate(ids)}
    unpark = app.hub.unpark

    def timed_unpark(waiter, channels):
        unpark(waiter, channels)
        freed_at[index_of[channels[-1]]] = time.perf_counter()  # the private channel names the client
    app.hub.unpark = timed_unpark

    with gevent.Timeout(60):
        socks = []
        for i in range(args.clients):
            sock = socket.create_connection(("127.0.0.1", server.server_port))
            sock.sendall(b"GET /register?channel=gone&timeout=100&client=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                         % ids[i].encode())
            socks.append(sock)
        while app.hub.waiting < args.clients:
            app.hub.next_change().wait()
        closed_at = []
        for sock in socks:
            if args.how == "RST":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            closed_at.append(time.perf_counter())
            sock.close()
            if not args.all_at_once:
                gevent.idle()  # let the server run: each hang-up is then timed on its own
        while app.hub.waiting:
            app.hub.next_change().wait()
    latency_ms = sorted((freed_at[i] - closed) * 1000 for i, closed in enumerate(closed_at))
    pick = lambda q: latency_ms[min(int(q * len(latency_ms)), len(latency_ms) - 1)]  # noqa: E731
    mode = "all at once" if args.all_at_once else "one after another"
    print(f"{args.clients} clients, {args.how}, {mode}: close -> freed p50 {pick(0.5):.2f} ms, "
          f"p99 {pick(0.99):.2f} ms, max {latency_ms[-1]:.2f} ms; disconnects counted "
          f"{app.stats.disconnects}")
    server.stop_gracefully()


if __name__ == "__main__":
    main()

"""Experiment 1, the slow trickle: a page sent a chunk at a time, slowly, on one OS thread.

The first attempt (in ASP.NET, an asynchronous page): answer a request a little at a
time without tying up a thread while it waits between chunks. Here each request is a
greenlet that writes a chunk (HTTP/1.1 chunked transfer) and sleeps; hundreds of them
trickle at once on the one OS thread. There is no notification mechanism yet: the
page decides when to send, never an outside event.

Try it::

    python -m old_experiments.slow_trickle --port 8001 --duration 60
    curl -N 'http://127.0.0.1:8001/?chunks=5&interval=1'    # one line a second

or let it load itself with hundreds of concurrent clients and report::

    python -m old_experiments.slow_trickle --clients 500 --chunks 10 --interval 0.5
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from urllib.parse import parse_qs

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from ._common import (
    add_server_args,
    announce_listening,
    cpu_seconds,
    log,
    open_get,
    os_threads,
    progress,
    setup_logging,
)

#: Bounds on what a request may ask for, so no request trickles forever.
MAX_CHUNKS = 1000
MAX_INTERVAL_S = 10.0


def make_app(chunks: int, interval: float, stopping: Event):
    """A WSGI app answering ``GET /`` with ``chunks`` lines, ``interval`` seconds apart.

    ``?chunks=N&interval=S`` override the defaults per request. ``stopping`` cuts
    every trickle short (the server is shutting down).
    """

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            n = min(int(query.get("chunks", [chunks])[0]), MAX_CHUNKS)
            pause = min(float(query.get("interval", [interval])[0]), MAX_INTERVAL_S)
        except ValueError:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"chunks must be an integer and interval a number\n"]
        # No Content-Length: pywsgi sends each yielded piece as one HTTP/1.1 chunk.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return trickle(n, pause)

    def trickle(n: int, pause: float):
        for i in range(1, n + 1):
            yield f"chunk {i}/{n} at {time.time():.3f}\n".encode()
            # Waiting on the event, not sleeping: the greenlet yields to the hub either way,
            # and a shutdown ends the page at once.
            if i < n and stopping.wait(pause):
                return

    return app


def make_server(host: str, port: int, chunks: int, interval: float) -> tuple[WSGIServer, Event]:
    """A started server on (host, port) and the event that stops its trickles."""
    stopping = Event()
    # SERVER_NAME given, so pywsgi does not resolve the host name (which uses a thread).
    server = WSGIServer((host, port), make_app(chunks, interval, stopping), backlog=1024,
                        log=None, error_log=logging.getLogger("old_experiments.http"),
                        environ={"SERVER_NAME": host})
    server.start()
    return server, stopping


def fetch(host: str, port: int, path: str = "/", timeout: float = 60) -> list[tuple[float, str]]:
    """GET ``path`` and return (arrival time, line) for each line of the page as it arrives."""
    with gevent.Timeout(timeout):
        sock, reply = open_get(host, port, path, close=True)
        try:
            if reply.status != 200:
                raise RuntimeError(f"{path}: HTTP {reply.status}")
            lines = []
            while line := reply.readline():
                lines.append((time.monotonic(), line.decode().strip()))
            return lines
        finally:
            sock.close()


def load(host: str, port: int, clients: int, chunks: int, interval: float) -> dict:
    """Run ``clients`` concurrent requests against the server; what it took to serve them."""
    cpu0, start = cpu_seconds(os.getpid()), time.monotonic()
    path = f"/?chunks={chunks}&interval={interval}"
    bound = chunks * interval + 30
    jobs = [gevent.spawn(fetch, host, port, path, bound) for _ in range(clients)]
    # Sampled while every page is still trickling: the OS threads serving them all.
    gevent.sleep(min(interval, 1.0))
    threads = os_threads(os.getpid())
    gevent.joinall(jobs, timeout=bound + 5)
    complete = sum(1 for j in jobs if j.successful() and len(j.value) == chunks)
    return {"clients": clients, "complete": complete, "chunks": chunks, "interval_s": interval,
            "wall_s": time.monotonic() - start, "serial_s": clients * (chunks - 1) * interval,
            "os_threads": threads, "cpu_s": cpu_seconds(os.getpid()) - cpu0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m old_experiments.slow_trickle",
                                     description=__doc__.split("\n\n")[0])
    add_server_args(parser, duration=60.0)
    parser.add_argument("--chunks", type=int, default=10, help="chunks per page (default %(default)s)")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between chunks (default %(default)s)")
    parser.add_argument("--clients", type=int, default=0,
                        help="run this many concurrent clients in-process, report, and exit "
                             "(default 0: just serve until --duration)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not (1 <= args.chunks <= MAX_CHUNKS and 0 <= args.interval <= MAX_INTERVAL_S):
        parser.error(f"--chunks must be 1..{MAX_CHUNKS} and --interval 0..{MAX_INTERVAL_S}")

    server, stopping = make_server(args.host, args.port, args.chunks, args.interval)
    announce_listening(args.host, server.server_port, "slow_trickle")
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    if args.clients:
        progress(f"{args.clients} clients, each a page of {args.chunks} chunks {args.interval:g} s apart: "
                 f"about {(args.chunks - 1) * args.interval:.0f} s")
        runner = gevent.spawn(load, args.host, server.server_port, args.clients, args.chunks, args.interval)
        gevent.wait([runner, stop], count=1, timeout=args.duration)
        if runner.successful():
            r = runner.value
            print(f"{r['complete']}/{r['clients']} pages of {r['chunks']} chunks, {r['interval_s']} s apart, "
                  f"in {r['wall_s']:.2f} s (one after another: {r['serial_s']:.0f} s); "
                  f"OS threads {r['os_threads']}; CPU {r['cpu_s']:.2f} s (server and clients)")
        runner.kill()
    else:
        stop.wait(args.duration)
    stopping.set()
    server.stop(timeout=2)
    log.info("stopped")
    return 0 if not args.clients or (runner.successful() and runner.value["complete"] == args.clients) else 1


if __name__ == "__main__":
    sys.exit(main())

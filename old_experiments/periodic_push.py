"""Experiment 2, the periodic push: a re-armed timer pushes data down every open stream.

The second attempt: each client opens one long streaming response (HTTP/1.1 chunked)
and a timer callback, re-armed each time it fires ("trampolining"), pushes a line to
every connected client. The server still cannot notify on demand: data goes out when
the timer says so. Served two ways:

* ``--mode threads``: every stream occupies one thread of a bounded worker pool
  (``--workers``, 40 by default, like the thread-per-request servers of the day), and
  the timer is a ``threading.Timer`` that starts the next one. Clients beyond the pool
  wait in its queue and get nothing.
* ``--mode greenlets``: every stream is a greenlet (gevent's pywsgi) and the timer is a
  gevent loop timer, re-armed from its own callback.

Each push line reads ``push SEQ DUE``, DUE being the wall-clock time the timer was due,
so a client on the same machine can tell how late the push reached it.

Try it::

    python -m old_experiments.periodic_push --mode greenlets --port 8002 --duration 60
    curl -N http://127.0.0.1:8002/stream     # a line every 0.5 s

or compare both modes under the same load (each server in its own process)::

    python -m old_experiments.periodic_push --compare --clients 200 --duration 10
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import statistics
import sys
import threading
import time

from ._common import (
    PROGRESS_EVERY_S,
    Child,
    PooledHTTPServer,
    QuietHandler,
    add_server_args,
    announce_listening,
    block_stop_signals,
    cpu_seconds,
    format_table,
    log,
    open_get,
    os_threads,
    progress,
    python_module,
    setup_logging,
)

#: Pushes a slow stream may fall behind by before it loses some (counted, never blocking the timer).
STREAM_QUEUE = 100


class Streams:
    """The connected streams, each a bounded queue; ``push`` feeds all of them."""

    def __init__(self, make_queue) -> None:
        self.make_queue = make_queue
        self.queues: set = set()
        self.lock = threading.Lock()  # in greenlet mode, uncontended: only the hub's thread uses it
        self.seq = 0
        self.dropped = 0
        #: greenlet mode: the loop timer armed for the next tick (stopped at shutdown)
        self.timer = None

    def open(self):
        q = self.make_queue(STREAM_QUEUE)
        with self.lock:
            self.queues.add(q)
        return q

    def close(self, q) -> None:
        with self.lock:
            self.queues.discard(q)

    def push(self, due: float) -> None:
        self.seq += 1
        line = f"push {self.seq} {due:.6f}\n"
        with self.lock:
            targets = list(self.queues)
        for q in targets:
            try:
                q.put_nowait(line)
            except queue.Full:  # gevent's Full is the same class
                self.dropped += 1

    def end(self) -> None:
        """Tell every stream to finish (the server is stopping)."""
        with self.lock:
            targets = list(self.queues)
        for q in targets:
            try:
                q.put_nowait(None)
            except queue.Full:
                pass


class Schedule:
    """When the timer is next due. Re-arming for the *remaining* time keeps a late tick
    from delaying every later one, so a push's lag is its own."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.due = time.time() + interval

    def advance(self) -> tuple[float, float]:
        """The due time just reached; the delay until the next one."""
        now = time.time()
        reached = self.due
        while self.due <= now:  # skip ticks missed entirely rather than bunching them
            self.due += self.interval
        return reached, self.due - now


# --- threads: a bounded pool of OS threads, one per stream; threading.Timer re-armed ---

def serve_threads(host: str, port: int, interval: float, workers: int, duration: float) -> None:
    block_stop_signals()  # before the first timer thread starts
    streams = Streams(queue.Queue)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path != "/stream":
                return self.send_body(404, b"not found\n", "text/plain")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            q = streams.open()
            try:
                while not self.server.stopping.is_set():
                    try:
                        line = q.get(timeout=1.0)  # the timeout only re-checks "stopping"
                    except queue.Empty:
                        continue
                    if line is None:
                        break
                    data = line.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client went away
            finally:
                streams.close(q)
            self.close_connection = True

    server = PooledHTTPServer((host, port), Handler, workers)
    schedule = Schedule(interval)

    def tick() -> None:
        due, delay = schedule.advance()
        streams.push(due)
        if not server.stopping.is_set():  # trampoline: the callback arms the next timer
            arm(delay)

    def arm(delay: float) -> None:
        timer = threading.Timer(delay, tick)
        timer.daemon = True
        timer.start()

    arm(interval)
    server.run(duration, f"periodic_push (threads, {workers} workers)")
    streams.end()
    log.info("stopped after %d pushes (%d dropped on slow streams)", streams.seq, streams.dropped)


# --- greenlets: one greenlet per stream on gevent's pywsgi; a loop timer re-armed ---

def make_greenlet_server(host: str, port: int, interval: float):
    """A started pywsgi server streaming pushes, and its Streams."""
    import gevent
    import gevent.queue
    from gevent.pywsgi import WSGIServer

    streams = Streams(gevent.queue.Queue)

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/stream":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
        return stream(streams.open())

    def stream(q):
        try:
            while (line := q.get()) is not None:
                yield line.encode()
        finally:  # also when the client goes away and pywsgi closes this generator
            streams.close(q)

    loop = gevent.get_hub().loop
    schedule = Schedule(interval)

    def tick() -> None:
        due, delay = schedule.advance()
        streams.push(due)
        arm(delay)  # trampoline: the callback (run by the hub) arms the next timer

    def arm(delay: float) -> None:
        streams.timer = loop.timer(delay)
        streams.timer.start(tick)

    arm(interval)
    server = WSGIServer((host, port), app, backlog=1024, log=None,
                        error_log=logging.getLogger("old_experiments.http"), environ={"SERVER_NAME": host})
    server.start()
    return server, streams


def serve_greenlets(host: str, port: int, interval: float, duration: float) -> None:
    import gevent
    from gevent.event import Event

    server, streams = make_greenlet_server(host, port, interval)
    announce_listening(host, server.server_port, "periodic_push (greenlets)")
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait(duration)
    streams.timer.stop()
    streams.end()
    server.stop(timeout=2)
    log.info("stopped after %d pushes (%d dropped on slow streams)", streams.seq, streams.dropped)


# --- the comparison: the same streaming clients against each mode ---

def stream_client(host: str, port: int, lags: list, counts: list) -> None:
    """Open one stream and record each push's lag (arrival minus due) until killed."""
    sock, reply = open_get(host, port, "/stream")
    try:
        index = len(counts)
        counts.append(0)
        while line := reply.readline():
            _, _, due = line.decode().split()
            lags.append(time.time() - float(due))
            counts[index] += 1
    finally:
        sock.close()


def measure(mode: str, clients: int, duration: float, interval: float, workers: int) -> dict:
    """Start a server for ``mode`` in its own process, hold ``clients`` streams on it."""
    import gevent

    child = Child(python_module("old_experiments.periodic_push", "--mode", mode, "--interval", str(interval),
                                "--workers", str(workers), "--duration", str(duration + 60)))
    try:
        host, port = child.url.removeprefix("http://").split(":")
        cpu0 = cpu_seconds(child.pid)
        lags: list[float] = []
        counts: list[int] = []  # pushes per stream that got its response headers
        jobs = [gevent.spawn(stream_client, host, int(port), lags, counts) for _ in range(clients)]
        # Every stream ends at the same moment, so a worker freed by one closing stream
        # cannot pick up a queued one before the count is taken.
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0.05 and not all(job.dead for job in jobs):
            gevent.joinall(jobs, timeout=min(left, PROGRESS_EVERY_S))  # all done, or time for a line
            left = deadline - time.monotonic()
            if left > 1.0:
                progress(f"  {mode}: {sum(1 for n in counts if n)} of {clients} streams receiving, "
                         f"{len(lags)} pushes, {duration - left:.0f} of {duration:g} s")
        held = sum(1 for n in counts if n)
        threads, cpu = os_threads(child.pid), cpu_seconds(child.pid) - cpu0
        gevent.killall(jobs, timeout=5)
    finally:
        child.stop()
    lags.sort()
    pct = (lambda p: f"{1000 * lags[min(len(lags) - 1, int(p * len(lags)))]:.0f}") if lags else (lambda p: "-")
    return {"mode": mode, "clients": clients, "held": held, "pushes": len(lags), "os_threads": threads,
            "cpu_s": cpu, "lag_p50_ms": pct(0.50), "lag_p99_ms": pct(0.99), "lag_max_ms": pct(1.0),
            "lag_mean_ms": f"{1000 * statistics.fmean(lags):.0f}" if lags else "-"}


def compare(clients: int, duration: float, interval: float, workers: int) -> list[dict]:
    results = []
    for number, mode in enumerate(("threads", "greenlets"), 1):
        progress(f"[{number}/2] {mode}: {clients} streams for {duration:g} s")
        results.append(measure(mode, clients, duration, interval, workers))
    print(f"{clients} streaming clients for {duration:g} s, a push every {interval:g} s "
          f"(threads: a pool of {workers}); {os.cpu_count()} CPUs")
    print(format_table(
        ["mode", "clients held", "pushes received", "server OS threads", "server CPU s",
         "lag p50 ms", "lag p99 ms", "lag max ms"],
        [[r["mode"], f"{r['held']}/{r['clients']}", r["pushes"], r["os_threads"], f"{r['cpu_s']:.2f}",
          r["lag_p50_ms"], r["lag_p99_ms"], r["lag_max_ms"]] for r in results]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m old_experiments.periodic_push",
                                     description=__doc__.split("\n\n")[0])
    add_server_args(parser, duration=60.0)
    parser.add_argument("--mode", choices=("threads", "greenlets"), default="greenlets",
                        help="how streams are served (default %(default)s)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between pushes (default %(default)s)")
    parser.add_argument("--workers", type=int, default=40,
                        help="thread pool size in threads mode (default %(default)s)")
    parser.add_argument("--compare", action="store_true",
                        help="run both modes in child processes with --clients streams for --duration s "
                             "and print a table")
    parser.add_argument("--clients", type=int, default=200, help="streams opened by --compare (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not (0.01 <= args.interval <= 60 and 1 <= args.workers <= 1000):
        parser.error("--interval must be 0.01..60 and --workers 1..1000")
    if args.compare:
        if not 0 < args.duration <= 600:
            parser.error("--compare needs a --duration of at most 600 s")
        compare(args.clients, args.duration, args.interval, args.workers)
    elif args.mode == "threads":
        serve_threads(args.host, args.port, args.interval, args.workers, args.duration)
    else:
        serve_greenlets(args.host, args.port, args.interval, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The two 2008 thread-based servers of the thread_exhaustion experiment, on real OS threads.

Standard library only and never monkey-patched: run them as their own process
(``python -m old_experiments.thread_exhaustion serve --mode threads|waitpool``).

Both speak enough of the geventcomet protocol (docs/protocol.md) for the same load
client to drive them and geventcomet alike: ``GET /register`` (channel, since,
timeout, client; the JSON reply with events, cursor, timeout, recovered, client,
epoch), ``POST /notify`` (JSON or form), ``GET /`` (an ordinary page) and
``GET /stats``. Every reply closes its connection: IIS kept idle keep-alive
connections off the worker threads, and closing is the nearest a plain thread pool
gets to that.

* ``threads``: the synchronous handler. A pool worker runs the poll and blocks in it
  until an event or the timeout; with ``workers`` polls held, every other request,
  a plain page included, queues behind them.
* ``waitpool``: the 2008 fix. A pool worker reads the poll and hands it to one of a
  few wait threads, then is free again. Each wait thread sleeps ``scan_interval``,
  then scans its whole list, answering the requests that have events or timed out.
"""
from __future__ import annotations

import collections
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from ._common import PooledHTTPServer, QuietHandler, block_stop_signals, log

#: The poll timeouts a client may ask for, as geventcomet's defaults.
DEFAULT_TIMEOUT_S = 25.0
MAX_TIMEOUT_S = 120.0
#: Events kept per channel; older cursors get "recovered": false.
BACKLOG = 1000
MAX_BODY_BYTES = 64 * 1024


class BadRequest(Exception):
    pass


class Store:
    """Channels and their recent events, in memory, guarded by one lock.

    ``changed`` (a Condition on that lock) is notified at every publish.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.events: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=BACKLOG))
        self.last: dict[str, int] = collections.defaultdict(int)
        self.waiting: collections.Counter = collections.Counter()  # channel -> held polls
        self.held = self.peak_held = self.polls = self.timeouts = 0
        self.epoch = secrets.token_hex(4)

    def publish(self, channel: str, data) -> tuple[int, int]:
        """Append an event; its id and how many polls were waiting on the channel."""
        with self.lock:
            self.last[channel] += 1
            self.events[channel].append({"channel": channel, "id": self.last[channel], "data": data})
            self.changed.notify_all()
            return self.last[channel], self.waiting[channel]

    def after(self, positions: dict[str, int]) -> tuple[list, bool]:
        """Events after ``positions`` (advanced in place), and whether none were lost. Hold the lock."""
        found, recovered = [], True
        for channel, pos in positions.items():
            if pos > self.last[channel]:  # a cursor from the future: start again from now
                positions[channel], recovered = self.last[channel], False
                continue
            if pos == self.last[channel]:
                continue
            kept = self.events[channel]
            start = pos + 1 - kept[0]["id"]
            if start < 0:
                recovered, start = False, 0
            found.extend(itertools.islice(kept, start, None))
            positions[channel] = self.last[channel]
        return found, recovered

    def hold(self, channels, delta: int) -> None:
        """Count polls held (``delta`` +1/-1). Hold the lock."""
        for channel in channels:
            self.waiting[channel] += delta
        self.held += delta
        self.peak_held = max(self.peak_held, self.held)

    def cursor(self, positions: dict[str, int]) -> str:
        return "~".join([self.epoch, *(f"{ch}~{pos}" for ch, pos in positions.items())])

    def stats(self) -> dict:
        with self.lock:
            return {"waiting": self.held, "peak_waiting": self.peak_held, "polls": self.polls,
                    "timeouts": self.timeouts, "channels": len(self.last), "epoch": self.epoch}


@dataclass
class Poll:
    """One ``/register`` request, parsed; ``positions`` is where it stands in each channel."""

    client: str
    positions: dict[str, int]
    timeout_s: float
    recovered: bool = True
    deadline: float = 0.0
    events: list = field(default_factory=list)


def parse_poll(target: str, store: Store) -> Poll:
    """Parse ``/register?...`` the way geventcomet does, enough for its clients. Hold the lock."""
    query = parse_qs(urlsplit(target).query)
    channels = [c for raw in query.get("channel", []) for c in raw.split(",") if c]
    client = query.get("client", [""])[0] or secrets.token_urlsafe(12)
    if not channels and "client" not in query:
        raise BadRequest("a channel is required")
    channels.append("@" + client)  # the client's private channel
    try:
        timeout_s = float(query.get("timeout", [DEFAULT_TIMEOUT_S])[0])
    except ValueError:
        raise BadRequest("timeout must be a number") from None
    if not 0 <= timeout_s <= MAX_TIMEOUT_S:
        raise BadRequest(f"timeout must be 0..{MAX_TIMEOUT_S}")
    poll = Poll(client, {ch: store.last[ch] for ch in channels}, timeout_s)
    since = query.get("since", [""])[0]
    if since.isdigit() and len(channels) == 2:
        poll.positions[channels[0]] = int(since)
    elif since:
        epoch, *pairs = since.split("~")
        if epoch != store.epoch or len(pairs) % 2:
            poll.recovered = False  # another server's history: give all that is kept, at once
            poll.positions = dict.fromkeys(channels, 0)
        else:
            for ch, pos in zip(pairs[::2], pairs[1::2]):
                if ch in poll.positions and pos.isdigit():
                    poll.positions[ch] = int(pos)
    poll.deadline = time.monotonic() + timeout_s
    return poll


def reply_body(poll: Poll, store: Store) -> bytes:
    store.polls += 1
    store.timeouts += not poll.events
    return json.dumps({"events": poll.events, "cursor": store.cursor(poll.positions),
                       "timeout": not poll.events, "recovered": poll.recovered,
                       "client": poll.client, "epoch": store.epoch}).encode()


class CometHandler(QuietHandler):
    """The routes both servers share; ``register`` is what differs."""

    store: Store

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/register":
                self.register()
            elif path == "/":
                self.send_body(200, json.dumps({"name": self.server.what, "endpoints":
                                                ["/", "/notify", "/register", "/stats"]}).encode())
            elif path == "/stats":
                self.send_body(200, json.dumps(self.store.stats()).encode())
            else:
                self.send_body(404, b'{"error": "no such path"}')
        except BadRequest as exc:
            self.send_body(400, json.dumps({"error": str(exc)}).encode())

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/notify":
            return self.send_body(404, b'{"error": "no such path"}')
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self.send_body(413, b'{"error": "body too large"}')
        raw = self.rfile.read(length)
        try:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                body = json.loads(raw)
            else:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            channel = body.get("channel") or "@" + body["client"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return self.send_body(400, b'{"error": "send {\\"channel\\": ..., \\"data\\": ...}"}')
        seq, woken = self.store.publish(channel, body.get("data"))
        self.send_body(200, json.dumps({"channel": channel, "id": seq, "woken": woken}).encode())


class ThreadsHandler(CometHandler):
    """(a) The synchronous handler: the pool worker itself waits out the poll."""

    def register(self) -> None:
        store = self.store
        with store.changed:
            poll = parse_poll(self.path, store)
            store.hold(poll.positions, +1)
            log.debug("holding a poll for %s", poll.client)
            try:
                while True:
                    poll.events, recovered = store.after(poll.positions)
                    poll.recovered &= recovered
                    remaining = poll.deadline - time.monotonic()
                    if poll.events or not poll.recovered or remaining <= 0 or self.server.stopping.is_set():
                        break
                    store.changed.wait(remaining)  # this OS thread is gone until then
            finally:
                store.hold(poll.positions, -1)
            body = reply_body(poll, store)
        self.send_body(200, body)


class WaitThread(threading.Thread):
    """(b) One of the few wait threads: sleep, scan every parked poll, answer the ready ones."""

    def __init__(self, store: Store, scan_interval: float, stopping: threading.Event, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.store, self.scan_interval, self.stopping = store, scan_interval, stopping
        self.parked: list[tuple[Poll, object]] = []
        self.lock = threading.Lock()
        self.scans = 0

    def park(self, poll: Poll, sock) -> None:
        with self.lock:
            self.parked.append((poll, sock))

    def run(self) -> None:
        store = self.store
        while True:
            # The bounded sleep between scans, as the original's: it caps the CPU the scan
            # burns, and is also the extra delay an event waits before it is seen.
            stopping = self.stopping.wait(self.scan_interval)
            self.scans += 1
            with self.lock:
                pending = list(self.parked)
            answered = []
            now = time.monotonic()
            for poll, sock in pending:  # the scan: every parked poll, on every pass
                with store.lock:
                    poll.events, recovered = store.after(poll.positions)
                    poll.recovered &= recovered
                    if not (poll.events or not poll.recovered or now >= poll.deadline or stopping):
                        continue
                    store.hold(poll.positions, -1)
                    body = reply_body(poll, store)
                answered.append((poll, sock))
                self.answer(sock, body)
            with self.lock:
                for item in answered:
                    self.parked.remove(item)
                if stopping and not self.parked:
                    return

    @staticmethod
    def answer(sock, body: bytes) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            sock.settimeout(2.0)  # a client that stopped reading must not stall the whole scan
            sock.sendall(head + body)
            sock.shutdown(2)
        except OSError:
            pass  # the client went away
        finally:
            sock.close()


class WaitPoolHandler(CometHandler):
    """(b) The pool worker only parses the poll and parks it on a wait thread."""

    wait_threads: list[WaitThread]
    next_thread = itertools.count()

    def register(self) -> None:
        store = self.store
        with store.lock:
            poll = parse_poll(self.path, store)
            poll.events, recovered = store.after(poll.positions)
            poll.recovered &= recovered
            if poll.events or not poll.recovered or poll.timeout_s == 0:
                body = reply_body(poll, store)  # nothing to wait for: answer now
            else:
                store.hold(poll.positions, +1)
                body = None
        if body is not None:
            return self.send_body(200, body)
        self.parked = True  # PooledHTTPServer leaves the socket open for the wait thread
        self.close_connection = True
        self.wait_threads[next(self.next_thread) % len(self.wait_threads)].park(poll, self.request)
        log.debug("holding a poll for %s", poll.client)


def serve(mode: str, host: str, port: int, duration: float, workers: int,
          wait_threads: int, scan_interval: float) -> dict:
    """Run the ``threads`` or ``waitpool`` server until ``duration`` or a signal; its stats."""
    block_stop_signals()  # before the wait threads start
    store = Store()
    if mode == "threads":
        handler = type("Handler", (ThreadsHandler,), {"store": store})
        what = f"thread_exhaustion (threads: a pool of {workers})"
    else:
        handler = type("Handler", (WaitPoolHandler,), {"store": store})
        what = f"thread_exhaustion (waitpool: {wait_threads} wait threads, a pool of {workers})"
    server = PooledHTTPServer((host, port), handler, workers)
    server.what = what
    waiters = [WaitThread(store, scan_interval, server.stopping, f"wait-{i}") for i in range(wait_threads)]
    handler.wait_threads = waiters
    if mode == "waitpool":
        for thread in waiters:
            thread.start()

    def wake_all() -> None:
        with store.changed:
            store.changed.notify_all()

    server.run(duration, what, on_stop=wake_all)
    for thread in waiters:
        if thread.is_alive():
            thread.join(5)
    stats = {**store.stats(), "scans": sum(t.scans for t in waiters)}
    log.info("stats %s", json.dumps(stats))
    return stats

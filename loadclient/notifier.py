"""The notifier: publishes sequenced, timestamped events and end markers.

Each event's ``data`` is ``{"s": SEQ, "t": UNIX_TIME}``: ``s`` counts 1, 2, 3 ... per
channel, ``t`` is taken just before the notify is written, so a client's
``arrival - t`` is the notify -> arrival latency (one clock: loopback only).

Order per channel must be the order of ``s``, so every channel belongs to exactly
one notify connection (``channel index % connections``), and a connection's
notifies are handled by the server in the order they were sent (HTTP/1.1).
A failed notify is retried with the same body and ``Idempotency-Key``, so a
retry after a lost reply is stored at most once, and in its place.

**Pipelining** (paced mode, ``pipeline`` > 1). A notify's reply comes after the
server has got through the fan-outs before it (~25 ms under load), so one notify
at a time capped each connection at ~40/s. When the pacer is
ahead of a connection, the connection sends every notify queued for it (up to
``pipeline``) in one write and then reads their replies in order: the server
stores them in order. If one of them fails while later ones are stored, the
failed one is stored later, out of order, and the clients count that (as lost
and duplicated); a dropped connection is not such a failure (all are resent in
order with their keys).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Sequence

import gevent
import gevent.lock
from gevent.event import Event
from gevent.queue import Queue

from .httpconn import Connection, HTTPError, bearer_header, split_url

log = logging.getLogger(__name__)

#: Attempts per notify before it is counted as a notify error and left pending.
NOTIFY_ATTEMPTS = 5
#: Queued notifies per connection in paced mode before the pacer waits for them.
QUEUE_BOUND = 256
#: Notifies a connection may have sent and not yet had answered (paced mode), by default.
#: Measured (2,000 clients, 500/s asked, 10 s runs, a loaded 2-core machine): over 100
#: channels 178-325/s at 1 (each of the 8 connections waited ~25 ms per notify), 472-499/s
#: at 64. On one channel it did not help (14-31/s at 1, 32-39/s at 64): geventcomet takes a
#: channel's next notify after the fan-out of the one before.
PIPELINE = 64


class Notifier:
    """Publishes events on ``channels`` through ``connections`` keep-alive connections.

    :param report: the run's :class:`~loadclient.report.Report` (``events_sent``,
        ``end_markers_sent`` and ``notify_errors`` are counted there).
    :param idempotency: send an ``Idempotency-Key`` with every notify.
    :param token: a bearer token sent with every notify (a server with tokens on).
    :param pipeline: notifies one connection may send before reading their replies (paced
        mode; 1 = one at a time).
    """

    def __init__(self, url: str, channels: Sequence[str], report, *, connections: int = 8,
                 source: str | None = None, idempotency: bool = True, run_id: str | None = None,
                 token: str | None = None, pipeline: int = PIPELINE) -> None:
        host, port = split_url(url)
        self.channels = list(channels)
        self.report = report
        self.idempotency = idempotency
        self._auth_header = bearer_header(token)
        self.run_id = run_id or uuid.uuid4().hex[:8]
        count = max(1, min(connections, len(self.channels)))
        self.conns = [Connection(host, port, source, timeout_s=15.0) for _ in range(count)]
        self._owner = {channel: i % count for i, channel in enumerate(self.channels)}
        self._locks = [gevent.lock.Semaphore() for _ in range(count)]
        #: per channel: highest sequence whose publish has begun, and highest acknowledged
        self.started: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        #: channel -> (seq, body) of its notifies not yet acknowledged, in order
        self._pending: dict[str, list[tuple[int, bytes]]] = {}
        self.pipeline = max(1, pipeline)
        self._stop = Event()
        self._workers: list[gevent.Greenlet] = []
        self.report.notify_connections = count
        self.report.notify_pipeline = self.pipeline
        #: the paced rate asked, and when the current notify phase began (monotonic; None: idle)
        self.rate = 0.0
        self.began: float | None = None

    def floor(self, channel: str) -> int:
        """Highest sequence on ``channel`` whose publish has begun (what a joining client is not owed)."""
        return self.started.get(channel, 0)

    def publish(self, channel: str, extra: dict | None = None) -> bool:
        """Publish the next event of ``channel`` now; True once the server acknowledged it."""
        owner = self._owner.get(channel)
        if owner is None:  # a channel named in the console: give it the least busy connection
            owner = self._owner[channel] = len(self._owner) % len(self.conns)
        with self._locks[owner]:
            return self._send(self.conns[owner], channel, extra)

    def _new_event(self, channel: str, extra: dict | None) -> None:
        """Give ``channel`` its next sequence and queue the notify's body as pending."""
        seq = self.started.get(channel, 0) + 1
        self.started[channel] = seq
        data = {"s": seq, "t": time.time()}
        if extra:
            data.update(extra)
        body = json.dumps({"channel": channel, "data": data}, separators=(",", ":")).encode()
        self._pending.setdefault(channel, []).append((seq, body))

    def _head(self, channel: str, seq: int) -> str:
        headers = "Content-Type: application/json\r\n" + self._auth_header
        if self.idempotency:
            headers += f"Idempotency-Key: lc-{self.run_id}-{channel}-{seq}\r\n"
        return headers

    def _acknowledged(self, channel: str, seq: int, end: bool) -> None:
        pending = self._pending[channel]
        pending[:] = [entry for entry in pending if entry[0] != seq]
        self.acked[channel] = max(seq, self.acked.get(channel, 0))
        if end:
            self.report.end_markers_sent += 1
        else:
            self.report.events_sent += 1

    def _send(self, conn: Connection, channel: str, extra: dict | None) -> bool:
        """One notify, waiting for its reply: the oldest pending one of ``channel`` (a retry),
        else a new event."""
        if not self._pending.get(channel):
            self._new_event(channel, extra)
        seq, body = self._pending[channel][0]
        end = bool(extra and extra.get("end") and seq == self.started[channel])
        began = time.monotonic()
        try:
            return self._deliver(conn, channel, seq, body, end)
        finally:
            if not end:  # the rate's figures are the events'
                self.report.notify_busy_s += time.monotonic() - began

    def _deliver(self, conn: Connection, channel: str, seq: int, body: bytes, end: bool) -> bool:
        for attempt in range(NOTIFY_ATTEMPTS):
            try:
                reply = conn.request("POST", "/notify", body, self._head(channel, seq))
            except HTTPError as exc:
                log.debug("notify %s #%d: %s", channel, seq, exc)
                gevent.sleep(0.05 * 2 ** attempt)  # pacing a retry
                continue
            if reply.status == 200:
                self._acknowledged(channel, seq, end)
                return True
            log.debug("notify %s #%d: HTTP %d %r", channel, seq, reply.status, reply.body[:200])
            if reply.status != 503:
                break
            gevent.sleep(min(float(reply.headers.get("retry-after", 1) or 1), 5.0))
        self.report.notify_errors += 1
        return False

    def _send_pipelined(self, conn: Connection, channels: list[str]) -> bool:
        """A new event on each of ``channels`` (repeats allowed), sent with every notify still
        pending on those channels in one write; their replies read in order. False on a failure."""
        for channel in channels:
            self._new_event(channel, None)
        batch = [(ch, seq, body) for ch in dict.fromkeys(channels) for seq, body in self._pending[ch]]
        data = b"".join(f"POST /notify HTTP/1.1\r\nHost: {conn.host}:{conn.port}\r\n{self._head(ch, seq)}"
                        f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
                        for ch, seq, body in batch)
        began, answered = time.monotonic(), 0
        try:
            conn.send(data)
            for channel, seq, _ in batch:
                if answered and conn.sock is None:  # it closed after a reply: no pipelining there
                    log.info("the server closes its connection after each notify: pipelining off")
                    self.pipeline = self.report.notify_pipeline = 1
                    return True  # the unanswered stay pending, and go next, one at a time
                reply = conn.read_reply()
                answered += 1
                if reply.status == 200:
                    self._acknowledged(channel, seq, False)
                else:
                    log.warning("notify %s #%d: HTTP %d %r (pipelined: later notifies of the channel "
                                "may be stored before it)", channel, seq, reply.status, reply.body[:200])
                    self.report.notify_errors += 1
        except (HTTPError, OSError) as exc:  # the connection is gone: what is pending is resent, in order
            log.debug("pipelined notifies: %s", exc)  # not an error yet: the resend may still succeed
            conn.close()
        finally:
            self.report.notify_busy_s += (time.monotonic() - began) * len(batch)
        return all(not self._pending.get(ch) for ch in channels)

    def start(self, rate: float, count: int | None = None) -> None:
        """Publish in the background until :meth:`stop`: ``rate`` events/s spread over the
        channels round-robin, or as fast as the server accepts if ``rate`` < 0; at most
        ``count`` events if given. ``rate`` == 0 publishes nothing."""
        if rate == 0 or count == 0:
            return
        self._stop.clear()
        self.rate, self.began = rate, time.monotonic()
        if rate < 0:
            budget = [count if count is not None else -1]
            for i, conn in enumerate(self.conns):
                mine = [c for c in self.channels if self._owner[c] == i]
                self._workers.append(gevent.spawn(self._flood, i, conn, mine, budget))
        else:
            queues = [Queue(QUEUE_BOUND) for _ in self.conns]
            for i, conn in enumerate(self.conns):
                self._workers.append(gevent.spawn(self._drain, i, conn, queues[i]))
            self._workers.append(gevent.spawn(self._pace, rate, count, queues))

    def _flood(self, index: int, conn: Connection, channels: list[str], budget: list[int]) -> None:
        while not self._stop.is_set():
            for channel in channels:
                if self._stop.is_set() or budget[0] == 0:
                    return
                budget[0] -= 1
                with self._locks[index]:
                    self._send(conn, channel, None)

    def _pace(self, rate: float, count: int | None, queues: list[Queue]) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set() and (count is None or k < count):
            delay = start + k / rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):  # pacing, and stop wakes it at once
                break
            channel = self.channels[k % len(self.channels)]
            queues[self._owner[channel]].put(channel)
            k += 1
        for queue in queues:
            queue.put(None)

    def _drain(self, index: int, conn: Connection, queue: Queue) -> None:
        failures = 0
        while True:
            channel = queue.get()
            if channel is None:
                return
            if self._stop.is_set():
                continue  # keep taking what the pacer queued, so it never blocks on put
            batch = [channel]
            while len(batch) < self.pipeline and not queue.empty() and queue.peek(block=False) is not None:
                batch.append(queue.get())  # what else the pacer has queued: sent in the same write
            with self._locks[index]:
                ok = self._send_pipelined(conn, batch) if self.pipeline > 1 else self._send(conn, channel, None)
            failures = 0 if ok else failures + 1
            if failures:
                gevent.sleep(min(0.05 * 2 ** failures, 2.0))  # pacing a retry: the pending ones go next

    def join(self, timeout_s: float) -> bool:
        """Wait (bounded) for publishing to end by itself (its ``count`` reached); True if it did."""
        return len(gevent.joinall(self._workers, timeout=timeout_s)) == len(self._workers)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop publishing; wait (bounded) for notifies already on the wire."""
        self._stop.set()
        self.began = None
        gevent.joinall(self._workers, timeout=timeout_s)
        gevent.killall([w for w in self._workers if not w.dead], timeout=5)
        self._workers = []

    def send_end_markers(self) -> dict[str, int]:
        """Publish an end marker on every channel; returns the final acknowledged sequences."""
        jobs = [gevent.spawn(self._end_markers, i) for i in range(len(self.conns))]
        gevent.joinall(jobs, timeout=60)
        return dict(self.acked)

    def _end_markers(self, index: int) -> None:
        for channel, owner in list(self._owner.items()):
            if owner == index:
                with self._locks[index]:
                    while self._pending.get(channel):  # notifies that failed earlier: once more each
                        if not self._send(self.conns[index], channel, None):
                            break
                    if self._pending.get(channel):
                        continue  # still failing: no marker, the clients will time out
                    self._send(self.conns[index], channel, {"end": 1})

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

"""The notifier: publishes sequenced, timestamped events and end markers.

Each event's ``data`` is ``{"s": SEQ, "t": UNIX_TIME}``: ``s`` counts 1, 2, 3 ... per
channel, ``t`` is taken just before the notify is written, so a client's
``arrival - t`` is the notify -> arrival latency (one clock: loopback only).

Order per channel must be the order of ``s``, so every channel belongs to exactly
one notify connection (``channel index % connections``) and that connection
sends one notify at a time. A failed notify is retried with the same body and
``Idempotency-Key``, so a retry after a lost reply is stored at most once.
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


class Notifier:
    """Publishes events on ``channels`` through ``connections`` keep-alive connections.

    :param report: the run's :class:`~loadclient.report.Report` (``events_sent``,
        ``end_markers_sent`` and ``notify_errors`` are counted there).
    :param idempotency: send an ``Idempotency-Key`` with every notify.
    :param token: a bearer token sent with every notify (a server with tokens on).
    """

    def __init__(self, url: str, channels: Sequence[str], report, *, connections: int = 8,
                 source: str | None = None, idempotency: bool = True, run_id: str | None = None,
                 token: str | None = None) -> None:
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
        self._pending: dict[str, bytes] = {}  # channel -> body of a notify not yet acknowledged
        self._stop = Event()
        self._workers: list[gevent.Greenlet] = []
        self.report.notify_connections = count
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

    def _send(self, conn: Connection, channel: str, extra: dict | None) -> bool:
        body = self._pending.get(channel)
        if body is None:
            seq = self.started.get(channel, 0) + 1
            self.started[channel] = seq
            data = {"s": seq, "t": time.time()}
            if extra:
                data.update(extra)
            body = json.dumps({"channel": channel, "data": data}, separators=(",", ":")).encode()
            self._pending[channel] = body
        seq = self.started[channel]
        headers = "Content-Type: application/json\r\n" + self._auth_header
        if self.idempotency:
            headers += f"Idempotency-Key: lc-{self.run_id}-{channel}-{seq}\r\n"
        began = time.monotonic()
        try:
            return self._deliver(conn, channel, seq, body, headers, extra)
        finally:
            if not (extra and extra.get("end")):  # the rate's figures are the events'
                self.report.notify_busy_s += time.monotonic() - began

    def _deliver(self, conn: Connection, channel: str, seq: int, body: bytes, headers: str,
                 extra: dict | None) -> bool:
        for attempt in range(NOTIFY_ATTEMPTS):
            try:
                reply = conn.request("POST", "/notify", body, headers)
            except HTTPError as exc:
                log.debug("notify %s #%d: %s", channel, seq, exc)
                gevent.sleep(0.05 * 2 ** attempt)  # pacing a retry
                continue
            if reply.status == 200:
                del self._pending[channel]
                self.acked[channel] = seq
                if extra and extra.get("end"):
                    self.report.end_markers_sent += 1
                else:
                    self.report.events_sent += 1
                return True
            log.debug("notify %s #%d: HTTP %d %r", channel, seq, reply.status, reply.body[:200])
            if reply.status != 503:
                break
            gevent.sleep(min(float(reply.headers.get("retry-after", 1) or 1), 5.0))
        self.report.notify_errors += 1
        return False

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
        for channel in queue:
            if channel is None:
                return
            if self._stop.is_set():
                continue  # keep taking what the pacer queued, so it never blocks on put
            with self._locks[index]:
                self._send(conn, channel, None)

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
                    if channel in self._pending:  # a notify that failed earlier: try it once more
                        self._send(self.conns[index], channel, None)
                    if channel in self._pending:
                        continue  # still failing: no marker, the clients will time out
                    self._send(self.conns[index], channel, {"end": 1})

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

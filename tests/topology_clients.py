"""Clients for the chaos runs (tests/test_topology.py, bench/topology.py): they check what they get.

- :class:`Subscriber` long-polls one channel through the load balancer with its cursor,
  retrying every failure (502, 503, a cut connection) with the same cursor. It records each
  event it gets, ``recovered: false`` replies, duplicates within a reply, the longest time
  a poll took past its timeout, and the gaps between answered polls.
- :class:`StreamSubscriber` does the same over Server-Sent Events (``GET /stream``).
- :class:`Notifier` publishes ``{"n": k}`` to channel ``k % channels`` at a steady rate
  (one greenlet per channel, so each channel's notifies are acknowledged in order), each
  with its own Idempotency-Key, retrying 503s, 502s and cut connections until
  acknowledged; it records when each was acknowledged.
- :func:`verdict` checks every subscriber against every acknowledged notify.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import gevent
import requests

#: Pause before retrying a failed request (a client's own pacing, not a synchronisation).
RETRY_PAUSE_S = 0.05


@dataclass
class Subscriber:
    url: str
    channel: str
    poll_timeout: float = 5.0
    got: list[int] = field(default_factory=list)
    got_at: list[float] = field(default_factory=list)
    started_at: float = 0.0  # when the first (cursor-less) poll was answered
    unrecovered: int = 0
    duplicates: int = 0
    statuses: dict = field(default_factory=dict)
    worst_overrun: float = 0.0  # longest poll past its timeout, s
    answered_at: list[float] = field(default_factory=list)
    transport: str = "longpoll"

    def run(self, stop: gevent.event.Event) -> None:
        http = requests.Session()
        cursor = client = None
        while not stop.is_set():
            params = {"channel": self.channel, "timeout": self.poll_timeout if cursor else 0.1}
            if cursor:
                params.update(since=cursor, client=client)
            started = time.monotonic()
            try:
                reply = http.get(self.url + "/register", params=params, timeout=self.poll_timeout + 30)
            except requests.RequestException:
                self.statuses["error"] = self.statuses.get("error", 0) + 1
                stop.wait(RETRY_PAUSE_S)
                continue
            now = time.monotonic()
            self.worst_overrun = max(self.worst_overrun, now - started - params["timeout"])
            self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
            if reply.status_code != 200:  # 503 reconnect (a drain) or backend trouble, 502: again
                body = _json(reply)
                if body.get("cursor"):
                    cursor, client = body["cursor"], body.get("client", client)
                stop.wait(RETRY_PAUSE_S if reply.status_code != 503 or not body.get("reconnect") else 0)
                continue
            body = reply.json()
            self.answered_at.append(now)
            if cursor is None:
                self.started_at = now
            elif body["recovered"] is False:
                self.unrecovered += 1
            ids = [event["id"] for event in body["events"]]
            self.duplicates += len(ids) - len(set(ids))
            for event in body["events"]:
                self.got.append(event["data"]["n"])
                self.got_at.append(now)
            cursor, client = body["cursor"], body["client"]

    def worst_gap(self, start: float, end: float) -> float:
        """The longest time without an answered poll between ``start`` and ``end``."""
        times = [start] + [t for t in self.answered_at if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


@dataclass
class StreamSubscriber(Subscriber):
    """The same checks over ``GET /stream`` (SSE): it resumes with ``last_event_id`` after any
    failure, a ``reconnect`` frame or the end of the stream; every frame (heartbeats too) counts
    as an answer for the gaps; a ``gap`` frame counts as ``recovered: false``."""

    transport: str = "sse"

    def run(self, stop: gevent.event.Event) -> None:
        http = requests.Session()
        self.cursor: str | None = None  # kept across a stream cut mid-read
        while not stop.is_set():
            params = {"channel": self.channel, **({"last_event_id": self.cursor} if self.cursor else {})}
            try:
                with http.get(self.url + "/stream", params=params, stream=True, timeout=(10, 60)) as reply:
                    self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
                    if reply.status_code == 200:
                        self._read(reply, stop)
            except requests.RequestException:
                self.statuses["error"] = self.statuses.get("error", 0) + 1
            stop.wait(RETRY_PAUSE_S)

    def _read(self, reply: requests.Response, stop: gevent.event.Event) -> None:
        frame: dict[str, str] = {}
        for line in reply.iter_lines(decode_unicode=True):
            now = time.monotonic()
            self.answered_at.append(now)
            if line:
                name, _, value = line.partition(":")
                frame[name] = value.lstrip(" ")
                continue
            kind = frame.get("event", "message")
            self.cursor = frame.get("id", self.cursor)
            if kind == "hello" and not self.started_at:
                self.started_at = now
            elif kind == "gap":
                self.unrecovered += 1
            elif kind == "message" and "data" in frame:
                self.got.append(json.loads(frame["data"])["data"]["n"])
                self.got_at.append(now)
            elif kind == "reconnect" or stop.is_set():
                break
            frame = {}


def _json(reply: requests.Response) -> dict:
    try:
        body = reply.json()
    except ValueError:
        return {}  # nginx's own 502 page
    return body if isinstance(body, dict) else {}


@dataclass
class Notifier:
    url: str
    channels: int
    rate: float
    acked: dict[int, float] = field(default_factory=dict)  # n -> when acknowledged
    retries: dict = field(default_factory=dict)
    worst_ack_s: float = 0.0
    key_prefix: str = "chaos"

    def run(self, stop: gevent.event.Event) -> None:
        """One greenlet per channel, each publishing its channel's notifies in order at its share
        of the rate (a slow acknowledgement on one channel does not hold up the others)."""
        greenlets = [gevent.spawn(self._run_channel, stop, channel) for channel in range(self.channels)]
        gevent.joinall(greenlets)
        for greenlet in greenlets:
            if greenlet.exception is not None:
                raise greenlet.exception

    def _run_channel(self, stop: gevent.event.Event, channel: int) -> None:
        http = requests.Session()
        n, pace = channel, self.channels / self.rate
        next_at = time.monotonic() + pace * channel / self.channels
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            self.publish(http, n)
            n += self.channels
            next_at += pace

    def publish(self, http: requests.Session, n: int, deadline_s: float = 60) -> None:
        started = time.monotonic()
        while time.monotonic() - started < deadline_s:
            try:
                reply = http.post(self.url + "/notify", json={"channel": channel_of(n, self.channels),
                                                             "data": {"n": n}},
                                  headers={"Idempotency-Key": f"{self.key_prefix}-{n}"}, timeout=15)
            except requests.RequestException:
                self.retries["error"] = self.retries.get("error", 0) + 1
                gevent.sleep(RETRY_PAUSE_S)
                continue
            if reply.status_code == 200:
                self.acked[n] = time.monotonic()
                self.worst_ack_s = max(self.worst_ack_s, self.acked[n] - started)
                return
            self.retries[reply.status_code] = self.retries.get(reply.status_code, 0) + 1
            gevent.sleep(RETRY_PAUSE_S)
        raise AssertionError(f"notify {n} not acknowledged within {deadline_s} s")


def make_subscriber(url: str, index: int, channels: int, sse_every: int = 10) -> Subscriber:
    """Client ``index``: on channel ``index % channels``, over SSE one time in ``sse_every``."""
    kind = StreamSubscriber if sse_every and index % sse_every == 0 else Subscriber
    return kind(url, channel_of(index, channels))


def channel_of(n: int, channels: int) -> str:
    return f"chaos{n % channels}"


def caught_up(subscribers: list[Subscriber], notifier: Notifier) -> bool:
    """Every subscriber has the last acknowledged notify of its channel (or never will: it was told)."""
    last: dict[str, int] = {}
    for n in notifier.acked:
        channel = channel_of(n, notifier.channels)
        last[channel] = max(last.get(channel, -1), n)
    return all(s.channel not in last or last[s.channel] in s.got or s.unrecovered for s in subscribers)


def verdict(subscribers: list[Subscriber], notifier: Notifier) -> dict:
    """Counts of what was lost, out of order or duplicated; an explicit ``recovered: false`` excuses loss."""
    lost = silent = out_of_order = 0
    for sub in subscribers:
        owed = [n for n, at in sorted(notifier.acked.items(), key=lambda item: item[0])
                if channel_of(n, notifier.channels) == sub.channel and at > sub.started_at]
        got, owed_set = set(sub.got), set(owed)
        missing = [n for n in owed if n not in got]
        lost += len(missing)
        if not sub.unrecovered:  # a client told recovered=false may be given events again
            silent += len(missing)
            mine = [n for n in sub.got if n in owed_set]
            out_of_order += sum(1 for a, b in zip(mine, mine[1:]) if b <= a)
    statuses: dict = {}
    for sub in subscribers:
        for status, count in sub.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return {"clients": len(subscribers), "sse_clients": sum(s.transport == "sse" for s in subscribers),
            "acked": len(notifier.acked), "lost": lost, "silently_lost": silent,
            "out_of_order_or_repeated": out_of_order,
            "duplicates_in_a_reply": sum(s.duplicates for s in subscribers),
            "recovered_false": sum(s.unrecovered for s in subscribers),
            "worst_poll_overrun_s": round(max(s.worst_overrun for s in subscribers), 2),
            "poll_statuses": statuses, "notify_retries": notifier.retries,
            "worst_notify_ack_s": round(notifier.worst_ack_s, 2)}

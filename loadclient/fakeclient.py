"""One fake client: a greenlet polling ``/register`` in a loop, checking every event's sequence.

How the accounting stays exact. Each client starts "now": its first poll has
``timeout=0`` and no cursor, and its reply's cursor marks where the client begins.
Only events published after that point are owed to it. The notifier stamps each
event with its own per-channel sequence ``s``; when the client takes its first
cursor it records, per channel, the *floor*: the highest ``s`` whose publish had
already begun (0 in a normal run, where notifies start only once every client is
polling). Events above the floor must all arrive once and in order: a jump is
counted as lost, a repeat or step back as duplicated. Events at or below the floor
may legitimately be missing (they were published while the first cursor was being
taken) and are only checked for repeats. At the end, the notifier's last sequence
per channel tells each client what it still owed (tail losses).

The run ends with an *end marker* on every channel (an event flagged ``end``): a
client stops polling once it has the marker of each of its channels, so every
request it sent has been answered.
"""
from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import quote

import gevent

from .httpconn import Connection, HTTPError

log = logging.getLogger(__name__)

#: A reply may come this long after the poll's own timeout before we call it lost.
REPLY_GRACE_S = 10.0
#: Consecutive failures (transport errors, 503s) after which a client gives up.
MAX_ERRORS_IN_ROW = 20
#: A cursor of only these characters goes into the query as it is (geventcomet's always
#: do); quote() walks it character by character, ~4 % of a load process's CPU.
PLAIN_CURSOR = re.compile(r"[A-Za-z0-9_.:~@-]*\Z")
#: Retry pause after a transport error doubles from this, up to RETRY_MAX_S.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


class GiveUp(Exception):
    """The client cannot go on (a 4xx reply, or too many errors in a row)."""


class FakeClient:
    """Polls ``channels`` through ``conn`` until the group finishes or it is killed."""

    __slots__ = ("group", "conn", "channels", "floors", "lasts", "ends", "cursor", "client_id",
                 "greenlet", "in_request", "removed", "failed")

    def __init__(self, group, conn: Connection, channels: tuple[str, ...]) -> None:
        self.group = group
        self.conn = conn
        self.channels = channels
        self.floors = [0] * len(channels)
        self.lasts = [0] * len(channels)
        self.ends = 0
        self.cursor: str | None = None
        self.client_id: str | None = None
        self.greenlet: gevent.Greenlet | None = None
        self.in_request = False
        self.removed = False
        self.failed = False

    def run(self) -> None:
        """The client's whole life: first cursor, then long-polls until the end markers."""
        group, report = self.group, self.group.report
        try:
            try:
                with group.connect_slots:  # bounds simultaneous connects during a ramp
                    reply, arrived = self._poll(0.0)
                    self._apply(reply, arrived, first=True)
                    self.floors = [group.floor_for(ch) for ch in self.channels]
            finally:
                group.client_started()
            report.ready += 1
            group.client_ready()
            final_check = False
            while self.ends < len(self.channels):
                reply, arrived = self._poll(0.0 if final_check else group.poll_timeout_s)
                got = self._apply(reply, arrived)
                if got and group.think_s and not group.finishing.is_set():
                    gevent.sleep(group.think_s)  # a browser's pause before it polls again
                if group.finishing.is_set() and not got:
                    if final_check:  # the end marker never came: tail losses are counted later
                        break
                    final_check = True  # one immediate poll for anything published meanwhile
        except GiveUp as exc:
            report.clients_failed += 1
            self.failed = True
            log.debug("client %s gave up: %s", self.client_id, exc)
        except gevent.GreenletExit:
            if self.in_request and self.removed:
                report.abandoned += 1
                self._request_done()
            raise
        finally:
            self.conn.close()

    def _target(self, timeout_s: float) -> str:
        parts = ["/register?timeout=", str(timeout_s)]
        for channel in self.channels:
            parts += ("&channel=", channel)
        if self.cursor is not None:
            cursor = self.cursor
            parts += ("&since=", cursor if PLAIN_CURSOR.match(cursor) else quote(cursor, safe="~"))
        if self.client_id is not None:
            parts += ("&client=", self.client_id)
        return "".join(parts)

    def _poll(self, timeout_s: float) -> tuple[dict, float]:
        report = self.group.report
        errors_in_row = 0
        while True:
            report.requests += 1
            report.in_flight += 1
            self.in_request = True
            try:
                reply = self.conn.request("GET", self._target(timeout_s), headers=self.group.auth_header,
                                          timeout_s=timeout_s + REPLY_GRACE_S)
            except HTTPError as exc:
                self._request_done()
                report.count_error(exc.kind)
                pause = min(RETRY_FIRST_S * 2 ** errors_in_row, RETRY_MAX_S)
            else:
                self._request_done()
                report.responses += 1
                report.unstamped += not reply.stamped
                if reply.status == 200:
                    try:
                        return json.loads(reply.body), reply.arrived
                    except ValueError:
                        report.count_error("bad_json")
                        raise GiveUp("reply is not JSON") from None
                report.count_error(f"http_{reply.status}")
                if reply.status != 503:
                    raise GiveUp(f"HTTP {reply.status}: {reply.body[:200]!r}")
                pause = self._retry_after(reply)
            errors_in_row += 1
            if errors_in_row >= MAX_ERRORS_IN_ROW:
                raise GiveUp(f"{errors_in_row} failures in a row")
            gevent.sleep(pause)  # pacing a retry, as a real client would

    def _request_done(self) -> None:
        if self.in_request:
            self.in_request = False
            self.group.report.in_flight -= 1

    def _retry_after(self, reply) -> float:
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("reconnect") and body.get("cursor"):
            self.cursor = body["cursor"]  # the server's shutdown reply keeps our position
        try:
            return min(float(reply.headers.get("retry-after", 1)), 5.0)
        except ValueError:
            return 1.0

    def _apply(self, reply: dict, arrived: float, first: bool = False) -> bool:
        """Check a reply's events against the sequences; True if it carried any of ours.

        ``arrived``: when the reply reached this host (:attr:`~.httpconn.Reply.arrived`).
        """
        report = self.group.report
        if reply.get("timeout") and not first:  # the first poll asks for timeout=0
            report.timeouts += 1
        if reply.get("recovered") is False:
            report.recovered_false += 1
        got = False
        handled = time.time()
        for event in reply.get("events", ()):
            try:
                index = self.channels.index(event["channel"])
                data = event["data"]
                seq = data["s"]
            except (ValueError, KeyError, TypeError):
                continue  # not one of the notifier's events (a private message, another tool)
            got = True
            last = self.lasts[index]
            if seq <= last:
                report.duplicated += 1
                continue
            base = max(last, self.floors[index])
            if seq > base + 1:
                report.lost += seq - base - 1
            self.lasts[index] = seq
            if data.get("end"):
                report.end_markers_received += 1
                self.ends += 1
            else:
                report.events_received += 1
                sent = data["t"]
                report.add_latency(seq, arrived - sent, handled - sent)
        self.cursor = reply.get("cursor", self.cursor)
        self.client_id = reply.get("client", self.client_id)
        return got

    def owed(self, final_seqs: dict[str, int]) -> int:
        """Events of ``final_seqs`` above this client's floor that it never received."""
        missing = 0
        for index, channel in enumerate(self.channels):
            base = max(self.lasts[index], self.floors[index])
            missing += max(0, final_seqs.get(channel, 0) - base)
        return missing

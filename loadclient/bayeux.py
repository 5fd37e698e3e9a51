"""The Bayeux mode: fake Bayeux clients (``/bayeux``) with the long-poll mode's exact accounting.

``run_bayeux(url, **options)`` takes :func:`loadclient.runner.run`'s arguments (and the CLI
reaches it as ``python -m loadclient --bayeux URL ...`` once ``__main__`` has the flag).

Each fake client is a Bayeux session on one keep-alive connection: ``/meta/handshake``, a
first ``/meta/connect`` (answered at once), ``/meta/subscribe`` to its channels, then
``/meta/connect`` in a loop with ``advice.timeout`` = ``--poll-timeout``. The notifier is
the long-poll mode's own (``POST /notify``: one channel space), so every event carries its
per-channel sequence and the same checks apply: each event above the client's floor once
and in order (a jump is lost, a repeat duplicated), the end markers close the run, and
what a client never got is counted as lost. A ``402`` (the session expired) is counted
(``bayeux_402``) and the client handshakes and subscribes again, as real clients do.

Channels are Bayeux names, ``/lc-RUNID/0`` .. ``/lc-RUNID/K-1`` (``--channel-prefix``
changes ``/lc-RUNID/``). ``--procs`` above 1 is not supported by this mode yet.
"""
from __future__ import annotations

import json
import uuid
from typing import Callable

import gevent

from .fakeclient import MAX_ERRORS_IN_ROW, REPLY_GRACE_S, RETRY_FIRST_S, RETRY_MAX_S, FakeClient, GiveUp
from .group import ClientGroup
from .httpconn import Connection, HTTPError
from .report import Report
from .runner import Options, Run, run

_JSON_HEAD = "Content-Type: application/json\r\n"


class BayeuxClient(FakeClient):
    """One fake Bayeux session; the checks are :class:`FakeClient`'s (``_apply``, ``owed``)."""

    __slots__ = ("subscribed", "next_id")

    def __init__(self, group, conn: Connection, channels: tuple[str, ...]) -> None:
        super().__init__(group, conn, channels)
        self.subscribed = False
        self.next_id = 0

    def _message(self, channel: str, **fields) -> dict:
        self.next_id += 1
        message = {"channel": channel, "id": str(self.next_id), **fields}
        if self.client_id is not None:
            message["clientId"] = self.client_id
        return message

    def _poll(self, timeout_s: float) -> tuple[dict, float]:
        """One ``/meta/connect`` (after a handshake and subscribe when there is no session),
        its reply shaped as a long-poll reply for :meth:`FakeClient._apply`."""
        while True:
            if not self.subscribed:
                self._start_session()
            connect = self._message("/meta/connect", connectionType="long-polling",
                                    advice={"timeout": int(timeout_s * 1000)})
            replies, arrived = self._post([connect], timeout_s)
            answer = replies[-1] if replies else {}
            if answer.get("successful"):
                break
            self._refused(answer)
        events = [m for m in replies if m.get("channel") in self.channels and "data" in m]
        recovered = ((answer.get("ext") or {}).get("geventcomet") or {}).get("recovered", True)
        return {"events": events, "timeout": not events and timeout_s > 0, "recovered": recovered}, arrived

    def _start_session(self) -> None:
        self.client_id = None
        [hello], _ = self._post([self._message("/meta/handshake", version="1.0",
                                               supportedConnectionTypes=["long-polling"])], 0.0)
        if not hello.get("successful"):
            raise GiveUp(f"handshake refused: {hello.get('error')}")
        self.client_id = hello["clientId"]
        self._post([self._message("/meta/connect", connectionType="long-polling", advice={"timeout": 0})], 0.0)
        [sub], _ = self._post([self._message("/meta/subscribe", subscription=list(self.channels))], 0.0)
        if not sub.get("successful"):
            raise GiveUp(f"subscribe refused: {sub.get('error')}")
        self.subscribed = True

    def _refused(self, answer: dict) -> None:
        error = str(answer.get("error", ""))
        if error.startswith("402:"):
            self.group.report.count_error("bayeux_402")
            self.subscribed = False  # handshake and subscribe again, as real clients do
            return
        raise GiveUp(f"connect refused: {error[:200] or answer}")

    def _post(self, messages: list[dict], timeout_s: float) -> tuple[list, float]:
        """POST one batch, retrying transport errors and 503s like the long-poll mode."""
        report = self.group.report
        body = json.dumps(messages, separators=(",", ":")).encode()
        headers = _JSON_HEAD + self.group.auth_header
        errors_in_row = 0
        while True:
            report.requests += 1
            report.in_flight += 1
            self.in_request = True
            try:
                reply = self.conn.request("POST", "/bayeux", body, headers, timeout_s=timeout_s + REPLY_GRACE_S)
            except HTTPError as exc:
                self._request_done()
                report.count_error(exc.kind)
                pause = min(RETRY_FIRST_S * 2 ** errors_in_row, RETRY_MAX_S)
            else:
                self._request_done()
                report.responses += 1
                report.unstamped += not reply.stamped
                if reply.status == 200:
                    return _decode(reply.body), reply.arrived
                report.count_error(f"http_{reply.status}")
                if reply.status != 503:
                    raise GiveUp(f"HTTP {reply.status}: {reply.body[:200]!r}")
                pause = self._retry_after(reply)
            errors_in_row += 1
            if errors_in_row >= MAX_ERRORS_IN_ROW:
                raise GiveUp(f"{errors_in_row} failures in a row")
            gevent.sleep(pause)  # pacing a retry, as a real client would


def _decode(body: bytes) -> list:
    try:
        replies = json.loads(body)
    except ValueError:
        raise GiveUp("reply is not JSON") from None
    if not isinstance(replies, list):
        raise GiveUp("reply is not a JSON array")
    return replies


class BayeuxGroup(ClientGroup):
    """A :class:`ClientGroup` of :class:`BayeuxClient` s."""

    client_class = BayeuxClient


class BayeuxRun(Run):
    """A :class:`~loadclient.runner.Run` whose clients speak Bayeux (one process)."""

    def __init__(self, options: Options, **kwargs) -> None:
        if options.procs != 1:
            raise ValueError("the Bayeux mode runs its clients in one process (--procs 1)")
        if options.channel_prefix is None:  # Bayeux names: /segment/segment
            options.channel_prefix = f"/lc-{uuid.uuid4().hex[:8]}/"
        super().__init__(options, **kwargs)

    def start(self) -> None:
        opts = self.options
        group = BayeuxGroup(opts.url, self.channels, channels_per_client=opts.channels_per_client,
                            poll_timeout_s=opts.poll_timeout, floor_for=self.notifier.floor,
                            think_s=opts.think, token=opts.token)
        group.add(opts.clients, opts.ramp)
        self.groups.append(group)


def run_bayeux(url: str, *, on_ready: Callable[[Run], None] | None = None,
               before_finish: Callable[[Run], None] | None = None, **options) -> Report:
    """A whole Bayeux run against ``url`` (``options``: :class:`Options` fields; the hooks
    as :func:`loadclient.runner.run`'s)."""
    return run(url, on_ready=on_ready, before_finish=before_finish, run_class=BayeuxRun, **options)

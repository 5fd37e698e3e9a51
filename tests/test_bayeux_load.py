"""The load client's Bayeux mode (loadclient/bayeux.py): hundreds of sessions, nothing lost or repeated."""
from __future__ import annotations

import gevent

from loadclient.bayeux import run_bayeux

from .helpers import Clock


def test_hundreds_of_bayeux_sessions_get_every_event_once_in_order(start_server):
    server = start_server(timeout_s=5)
    report = run_bayeux(server.url, clients=300, channels=3, duration=1.5, notify_rate=60, poll_timeout=5,
                        accept_short=True, progress=0)
    assert report.clients_failed == 0 and report.ready == 300, report.format_text()
    assert report.events_sent > 0 and report.end_markers_received == 300
    assert report.events_received == report.events_sent * 100  # 100 sessions on each channel
    assert report.lost == 0 and report.duplicated == 0 and report.unanswered == 0
    assert report.exit_code() == 0
    stats = server.app.service.snapshot()["bayeux"]
    assert stats["handshakes"] == 300 and stats["sessions"] == 300


def test_expired_sessions_are_counted_and_the_clients_come_back(start_server):
    server = start_server(timeout_s=2, bayeux_session_ttl_s=60)
    clock = Clock()
    server.app.bayeux.sessions.clock = clock

    def expire_all_once_connected() -> None:
        server.wait_waiting(20, timeout=30)
        clock.now += 61  # every session idle past its TTL: each held connect meets 402

    expiry = gevent.spawn(expire_all_once_connected)
    report = run_bayeux(server.url, clients=20, channels=1, duration=3, notify_rate=20, poll_timeout=2,
                        accept_short=True, progress=0)
    expiry.get(timeout=5)
    assert report.errors.get("bayeux_402", 0) >= 20, report.format_text()
    assert report.clients_failed == 0 and report.duplicated == 0 and report.end_markers_received == 20

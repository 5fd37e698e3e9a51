"""Bytes pipelined behind a held poll: the hang-up is still noticed, the bytes still served (issue 11 items 9, 14).

Before: the socket watch stopped when bytes arrived during a hold, so a later FIN
went unseen and the waiter stayed until its timeout (1,750 such polls filled
``--max-waiting``); a held poll, pipelined garbage and a close gave a BrokenPipeError traceback.
"""
import json
import logging
import socket

import gevent
import pytest

from geventcomet import misbehaviour
from geventcomet.peer import MAX_PIPELINED_WHILE_HELD

from .helpers import Comet
from .test_faults import read_reply

POLL = b"GET /register?channel=p&timeout=60 %s\r\nHost: x\r\n\r\n"


@pytest.fixture
def watched(server, monkeypatch, caplog):
    """The server; fails the test on any traceback (gevent's hub or an ERROR log record)."""
    errors = []
    monkeypatch.setattr(gevent.get_hub(), "handle_error", lambda *args: errors.append(args))
    yield server
    assert errors == [], errors
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])  # the fast path and the WSGI path
@pytest.mark.parametrize("extra", [b"G", b"GARBAGE\r\n\r\n", b"GET /stats HTTP/1.1\r\nHo"])
def test_a_hang_up_after_pipelined_bytes_frees_the_waiter_at_once(watched, version, extra):
    sock = socket.create_connection(("127.0.0.1", watched.port))
    sock.sendall(POLL % version)
    watched.wait_waiting(1)
    sock.sendall(extra)
    gevent.idle()  # let the watch take the bytes first (without it the FIN may come with them)
    sock.close()
    watched.wait_waiting(0, timeout=5)  # not at the 60 s timeout
    assert watched.app.stats.disconnects == 1
    assert watched.server.open_connections.join(timeout=5)  # the handler is gone too


def test_a_pipelined_request_sent_in_pieces_while_held_is_answered_after_the_poll(watched):
    with socket.create_connection(("127.0.0.1", watched.port), timeout=10) as sock:
        sock.sendall(POLL % b"HTTP/1.1")
        watched.wait_waiting(1)
        for piece in (b"GET /register?channel=p", b"&timeout=0 HTTP/1.1\r\n", b"Host: x\r\n\r\n"):
            sock.sendall(piece)
            gevent.idle()  # each piece reaches the held request's watch on its own
        assert watched.hub.waiting == 1  # still held: pipelined bytes are no hang-up
        Comet(watched.url).notify("p", "first")
        pending = bytearray()
        status, _, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["events"][0]["data"] == "first"
        status, _, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["events"] == []  # the pipelined poll, after it


def test_pipelining_more_than_the_bound_while_held_closes_the_connection(watched):
    before = misbehaviour.clients.counts.get("pipelined-while-held", 0)
    with socket.create_connection(("127.0.0.1", watched.port), timeout=10) as sock:
        sock.sendall(POLL % b"HTTP/1.1")
        watched.wait_waiting(1)
        sock.sendall(b"x" * (MAX_PIPELINED_WHILE_HELD + 1))
        watched.wait_waiting(0, timeout=5)
        try:
            assert sock.recv(100) == b""  # closed without a reply
        except ConnectionResetError:
            pass
    assert misbehaviour.clients.counts["pipelined-while-held"] == before + 1

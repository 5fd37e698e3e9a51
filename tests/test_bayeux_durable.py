"""Bayeux sessions live in the backend: Redis with --workers 3 (any worker serves any request of
a session, a worker killed mid-stream loses nothing) and SQLite (a restart mid-stream)."""
from __future__ import annotations

import os
import signal

import gevent
import pytest
import requests

from .bayeux_fixtures import Bayeux, agents  # noqa: F401 (fixtures)
from .helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)

WORKER = "X-Geventcomet-Worker"


@pytest.fixture
def redis_workers(redis_url):
    proc = ServerProcess("--workers", "3", "--backend", redis_url, "--timeout", "5", ready_timeout=40)
    assert proc.ready is not None and len(proc.ready.workers) == 3, "".join(proc.log)
    yield proc
    proc.stop()


def fresh_post(url: str, messages: list) -> tuple[list, str]:
    """One request on a new connection (the kernel picks the worker); the reply and who answered."""
    reply = requests.post(url + "/bayeux", json=messages, headers={"Connection": "close"}, timeout=20)
    assert reply.status_code == 200, reply.text
    return reply.json(), reply.headers[WORKER]


def test_every_request_of_a_session_may_land_on_another_worker(redis_workers):
    url = redis_workers.url
    raw = Bayeux(url)
    [hello], first = fresh_post(url, [raw.message("/meta/handshake", version="1.0",
                                                  supportedConnectionTypes=["long-polling"])])
    raw.client_id = hello["clientId"]
    served = {first}
    replies, worker = fresh_post(url, [raw.message("/meta/connect", connectionType="long-polling")])
    served.add(worker)
    assert replies[-1]["successful"], replies
    [sub], worker = fresh_post(url, [raw.message("/meta/subscribe", subscription="/w/any")])
    served.add(worker)
    assert sub["successful"], sub
    wild = Bayeux(url)  # a wildcard session, its requests on any worker too
    wild.start("/w/*")
    sent = 0
    for _ in range(60):  # publish and connect on fresh connections until three workers took part
        [ack], worker = fresh_post(url, [raw.message("/w/any", data={"n": sent})])
        assert ack["successful"], ack
        sent += 1
        served.add(worker)
        if len(served) == 3:
            break
    assert len(served) == 3, served
    got: list[int] = []
    for _ in range(sent + 5):  # a page per connect at least; bounded
        if len(got) == sent:
            break
        replies, worker = fresh_post(url, [raw.message("/meta/connect", connectionType="long-polling",
                                                       advice={"timeout": 0})])
        got += [m["data"]["n"] for m in replies if m["channel"] == "/w/any"]
        assert replies[-1]["successful"] and len(got) <= sent
    assert got == list(range(sent))
    wild_got: list[int] = []
    for _ in range(sent + 5):
        if len(wild_got) == sent:
            break
        replies, _ = fresh_post(url, [wild.message("/meta/connect", connectionType="long-polling",
                                                   advice={"timeout": 0})])
        wild_got += [m["data"]["n"] for m in replies if m["channel"] == "/w/any"]
        assert replies[-1]["successful"] and len(wild_got) <= sent
    assert wild_got == list(range(sent))


def test_a_worker_killed_mid_stream_loses_nothing(redis_workers, agents):  # noqa: F811
    url = redis_workers.url
    faye, cometd = agents("faye", url), agents("cometd", url)
    for client in (faye, cometd):
        client.subscribe("/w/stream")
    faye.send("publish", channel="/w/stream", count=200)
    cometd.wait_messages(40)
    os.kill(redis_workers.ready.workers[0], signal.SIGKILL)
    faye.wait_for(lambda e: e["ev"] == "published", 60, "200 publishes")
    for client in (faye, cometd):
        # A publish whose worker died before its reply is sent again, and may be stored twice:
        # so 200 messages may arrive before the last one; wait for that one, by its number.
        client.wait_for(lambda e: e["ev"] == "message" and e["data"]["n"] == 199, 60, "the last message")
        got = [m["data"]["n"] for m in client.matching(lambda e: e["ev"] == "message")]
        assert sorted(set(got)) == list(range(200)), client.kind
        assert got == sorted(got), client.kind
        assert len(got) - 200 <= 2, client.kind


def test_sqlite_restart_mid_stream(start_server, agents, tmp_path):  # noqa: F811
    backend = f"sqlite:///{tmp_path}/comet.db"
    first = start_server(backend, timeout_s=5)
    port = first.port
    faye, cometd = agents("faye", first.url), agents("cometd", first.url)
    for client in (faye, cometd):
        client.subscribe("/durable/x")
    faye.publish("/durable/x", count=50)
    cometd.wait_messages(50)
    with gevent.Timeout(10):
        first.stop()
    first.app.close()  # the backend's file lock goes with it
    first.app.bayeux.sessions.close()
    again = start_server(backend, timeout_s=5, port=port)  # the same address: the clients come back
    assert again.app.bayeux.sessions.count() == 2  # both sessions survived
    faye.publish("/durable/x", count=50, data="after")
    for client in (faye, cometd):
        got = client.wait_messages(100, timeout=60)
        assert [m["data"]["n"] for m in got] == list(range(50)) * 2, client.kind
        assert client.handshakes() == 1, client.kind  # the same session carried on: no re-handshake

"""The real Bayeux clients, unmodified from npm (faye; cometd + cometd-nodejs-client), long-polling
against an in-process server: delivery in order, wildcards, unsubscribe, /service, one channel
space with /register and /stream, and an expired session that the client re-establishes itself."""
from __future__ import annotations

import json
import time

import gevent
import jwt
import pytest
import requests

from .bayeux_fixtures import Agent, Bayeux, agents  # noqa: F401 (a fixture)
from .helpers import Clock

pytestmark = pytest.mark.timeout(90)


def numbers(messages: list[dict]) -> list[int]:
    return [m["data"]["n"] for m in messages]


def test_two_of_each_kind_get_200_messages_in_order(start_server, agents):  # noqa: F811
    server = start_server()
    clients = [agents(kind, server.url) for kind in ("faye", "faye", "cometd", "cometd")]
    for client in clients:
        client.subscribe("/chat/room1")
    clients[0].publish("/chat/room1", count=200)  # a faye client publishes
    clients[3].publish("/chat/room2", count=5)  # nobody listens there: nothing arrives
    for client in clients:
        got = client.wait_messages(200, "/chat/room1")
        assert numbers(got) == list(range(200)), client.kind
    clients[2].publish("/chat/room1", count=200, data="cometd")  # and a cometd client
    for client in clients:
        got = client.wait_messages(400, "/chat/room1")[200:]
        assert numbers(got) == list(range(200)) and {m["data"]["data"] for m in got} == {"cometd"}
        assert all(m["channel"] == "/chat/room1" for m in client.messages())


def test_wildcards_unsubscribe_and_service_channels(start_server, agents):  # noqa: F811
    server = start_server()
    faye, cometd = agents("faye", server.url), agents("cometd", server.url)
    for client in (faye, cometd):
        client.subscribe("/news/*")
        client.subscribe("/deep/**")
        client.subscribe("/service/echo")  # accepted, and never delivered: /service is the server's
    faye.publish("/news/sport")
    faye.publish("/news/sport/late")  # two segments below: not /news/*
    cometd.publish("/deep/a/b/c")
    cometd.publish("/service/echo", count=3)
    cometd.publish("/deep/last")
    for client in (faye, cometd):
        got = client.wait_messages(3)
        gevent.sleep(0)
        assert [(m["sub"], m["channel"]) for m in got] == [
            ("/news/*", "/news/sport"), ("/deep/**", "/deep/a/b/c"), ("/deep/**", "/deep/last")], client.kind
    # Unsubscribed: nothing more from /news/*, while /deep/** still delivers (and so marks the end).
    for client in (faye, cometd):
        client.send("unsubscribe", channel="/news/*")
        client.wait_for(lambda e: e["ev"] == "unsubscribed", 15, "unsubscribe")
    faye.publish("/news/sport", count=2)
    cometd.publish("/deep/end")
    for client in (faye, cometd):
        got = client.wait_messages(4)
        assert [m["channel"] for m in got] == ["/news/sport", "/deep/a/b/c", "/deep/last", "/deep/end"], client.kind
        assert not client.matching(lambda e: e["ev"] == "message" and "service" in e["channel"])


def test_faye_cometd_register_and_stream_share_one_channel(start_server, agents):  # noqa: F811
    server = start_server()
    faye, cometd = agents("faye", server.url), agents("cometd", server.url)
    faye.subscribe("/shared/x")
    cometd.subscribe("/shared/x")
    first = requests.get(server.url + "/register", params={"channel": "/shared/x", "timeout": 0}, timeout=10).json()
    stream = requests.get(server.url + "/stream", params={"channel": "/shared/x"}, stream=True, timeout=30)
    frames: list[dict] = []

    def read_stream() -> None:
        for line in stream.iter_lines():
            if line.startswith(b"data: ") and b'"channel"' in line:
                frames.append(json.loads(line[6:]))
                if len(frames) == 5:
                    return

    reader = gevent.spawn(read_stream)
    server.wait_waiting(3)  # the stream is parked, and faye's and cometd's connects
    faye.publish("/shared/x", count=2, data="faye")
    cometd.publish("/shared/x", count=2, data="cometd")
    notified = requests.post(server.url + "/notify", json={"channel": "/shared/x", "data": {"n": 9, "data": "notify"}},
                             timeout=10)
    assert notified.status_code == 200
    expected = [("faye", 0), ("faye", 1), ("cometd", 0), ("cometd", 1), ("notify", 9)]
    for client in (faye, cometd):
        got = client.wait_messages(5)
        assert [(m["data"]["data"], m["data"]["n"]) for m in got] == expected, client.kind
    polled = requests.get(server.url + "/register", params={"channel": "/shared/x", "since": first["cursor"],
                                                            "timeout": 5}, timeout=10).json()
    assert [(e["data"]["data"], e["data"]["n"]) for e in polled["events"]] == expected
    reader.join(timeout=15)
    assert reader.dead, f"the stream gave {len(frames)} of 5 events"
    stream.close()
    assert [(f["data"]["data"], f["data"]["n"]) for f in frames] == expected


@pytest.mark.parametrize("kind", ["faye", "cometd"])
def test_expired_session_gets_402_and_the_client_handshakes_again_by_itself(start_server, agents, kind):  # noqa: F811
    server = start_server(bayeux_session_ttl_s=30, timeout_s=2)
    clock = Clock()
    server.app.bayeux.sessions.clock = clock
    client = agents(kind, server.url)
    client.subscribe("/expiry/x")
    client.publish("/expiry/x")
    client.wait_messages(1)
    server.wait_waiting(1)
    clock.now += 31  # idle past the TTL: the next request of the session finds it gone
    raw = Bayeux(server.url)
    raw.handshake()  # any request sweeps; the held connect then meets 402 when it returns
    client.wait_for(lambda e: e["ev"] == "handshake", 30, "a second handshake", count=2)
    assert server.app.bayeux.stats.unknown_clients >= 1
    _publish_until_delivered(client, raw, "/expiry/x")


def _publish_until_delivered(client: Agent, raw: Bayeux, channel: str) -> None:
    """After a re-handshake the re-subscribe lands a moment later: publish (from another
    client) until one arrives, each waited for with a bound, then check nothing repeats."""
    raw.connect()
    for n in range(1, 40):
        assert raw.publish(channel, {"n": n, "data": "after"})["successful"]
        try:
            client.wait_for(lambda e: e["ev"] == "message" and e["data"]["data"] == "after", 1, "after")
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no message after the re-handshake")


def test_both_clients_send_their_token_in_the_handshake_ext(start_server, agents):  # noqa: F811
    secret = "bayeux-client-token-secret-0123456789"
    server = start_server(token_secret=secret)
    token = jwt.encode({"exp": int(time.time()) + 600, "channels": ["/team/*"], "publish": ["/team/*"]}, secret)
    faye, cometd = agents("faye", server.url, token), agents("cometd", server.url, token)
    for client in (faye, cometd):
        client.subscribe("/team/a")
    cometd.publish("/team/a", count=3)
    for client in (faye, cometd):
        assert numbers(client.wait_messages(3)) == [0, 1, 2], client.kind
    outsider = agents("faye", server.url)  # no token: the handshake passes, the subscribe is refused
    with pytest.raises(AssertionError, match="403"):
        outsider.subscribe("/team/a")

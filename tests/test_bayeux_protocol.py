"""Bayeux over HTTP with a raw client: the meta channels, the held connect, positions, errors,
the JSONP and form transports, tokens, graceful stop, and hostile input."""
from __future__ import annotations

import json
import socket
import time

import gevent
import jwt
import pytest
import requests

from geventcomet import strictjson

from .bayeux_fixtures import Bayeux
from .helpers import Comet

SECRET = "bayeux-token-secret-0123456789abcdef"


def test_handshake_gives_a_long_random_client_id_and_the_transports(server):
    raw = Bayeux(server.url, "/bayeux/handshake")  # CometD posts to /bayeux/<meta>
    hello = raw.handshake()
    assert hello["id"] == "1" and hello["version"] == "1.0" and hello["channel"] == "/meta/handshake"
    assert len(hello["clientId"]) >= 22  # >= 128 random bits of base64url
    assert {"long-polling", "callback-polling"} <= set(hello["supportedConnectionTypes"])
    assert hello["advice"]["reconnect"] == "retry"
    assert Bayeux(server.url).handshake()["clientId"] != hello["clientId"]


def test_a_held_connect_is_woken_by_a_publish_and_by_its_own_subscribe(server):
    listener, talker = Bayeux(server.url), Bayeux(server.url)
    listener.start("/room/1")
    talker.start()
    held = gevent.spawn(listener.connect, None)  # no advice: held for --timeout
    server.wait_waiting(1)
    assert talker.publish("/room/1", {"n": 1})["successful"]
    replies = held.get(timeout=10)
    assert replies[0] == {"channel": "/room/1", "id": 1, "data": {"n": 1}} and replies[-1]["successful"]
    held = gevent.spawn(listener.connect, 20_000)
    server.wait_waiting(1)
    assert listener.subscribe("/room/2")["successful"]  # another request: the held connect returns
    assert held.get(timeout=10)[-1]["successful"]
    held = gevent.spawn(listener.connect, 20_000)
    server.wait_waiting(1)
    talker.publish("/room/2", "second")
    assert [m.get("data") for m in held.get(timeout=10)] == ["second", None]


def test_nothing_published_between_two_connects_is_lost(server, comet):
    raw = Bayeux(server.url)
    raw.start("/gapless")
    for n in range(5):
        comet.notify("/gapless", n)  # /notify reaches Bayeux subscribers: one channel space
    got = raw.connect()
    assert [m["data"] for m in got[:-1]] == list(range(5)) and got[-1]["successful"]
    assert raw.connect() == [got[-1] | {"id": str(int(got[-1]["id"]) + 1)}]  # timeout 0: at once, empty


def test_a_backlog_that_no_longer_reaches_back_is_said_in_ext(start_server):
    server = start_server(backlog=3)
    raw = Bayeux(server.url)
    raw.start("/short")
    for n in range(6):
        raw.publish("/short", n)
    got = raw.connect()
    assert [m["data"] for m in got[:-1]] == [3, 4, 5]
    assert got[-1]["ext"] == {"geventcomet": {"recovered": False}}


def test_wildcards_deliver_each_event_once(server):
    raw, talker = Bayeux(server.url), Bayeux(server.url)
    raw.start("/w/a", "/w/*", "/w/**", "/**")
    talker.start()
    for channel in ("/w/a", "/w/b", "/w/b/c", "/x"):
        talker.publish(channel, channel)
    got = raw.connect()[:-1]
    assert sorted(m["channel"] for m in got) == ["/w/a", "/w/b", "/w/b/c", "/x"]


def test_service_channels_are_not_broadcast_and_meta_cannot_be_subscribed(server):
    raw, talker = Bayeux(server.url), Bayeux(server.url)
    raw.start("/service/rpc", "/plain")
    talker.start()
    assert talker.publish("/service/rpc", "private")["successful"]
    talker.publish("/plain", "end")
    assert [m["data"] for m in raw.connect()[:-1]] == ["end"]
    refused = raw.subscribe("/meta/connect")
    assert not refused["successful"] and refused["error"].startswith("403:")


@pytest.mark.parametrize("message, code", [
    ({"channel": "/meta/nonsense"}, "400:"),
    ({"channel": "/bad channel", "data": 1}, "405:"),
    ({"channel": "/a/*", "data": 1}, "405:"),
    ({"channel": "/a"}, "400:"),  # a publish without data
    ({"channel": "/meta/subscribe", "subscription": "no-slash"}, "405:"),
    ({"channel": "/meta/subscribe", "subscription": ["/ok", 7]}, "405:"),
    ({"channel": "/meta/subscribe"}, "400:"),
])
def test_refused_messages_get_bayeux_errors(server, message, code):
    raw = Bayeux(server.url)
    raw.start()
    [reply] = raw.post([raw.message(**message)])
    assert reply["successful"] is False and reply["error"].startswith(code), reply
    assert reply["channel"] == message["channel"] and reply["id"]


def test_an_unknown_client_gets_402_with_handshake_advice(server):
    raw = Bayeux(server.url)
    raw.client_id = "made-up"
    for reply in (raw.connect()[0], raw.subscribe("/a"), raw.publish("/a", 1)):
        assert reply["error"] == "402:made-up:Unknown client" and reply["advice"]["reconnect"] == "handshake"


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_client_id_the_server_could_not_have_made_is_unknown_and_harms_nobody(kind, start_server, request):
    server = start_server(request.getfixturevalue("redis_url") if kind == "redis" else None)
    good = Bayeux(server.url)
    good.start("/odd")
    bodies = [b'[{"channel":"/meta/connect","clientId":"\\ud800x","connectionType":"long-polling"}]',
              b'[{"channel":"/meta/subscribe","clientId":"a b\\"<","subscription":"/odd"}]',
              json.dumps([{"channel": "/meta/connect", "clientId": "x" * 65}]).encode(),
              json.dumps([{"channel": "/odd", "clientId": 7, "data": 1}]).encode()]
    odd = [gevent.spawn(requests.post, server.url + "/bayeux", data=body, timeout=10,
                        headers={"Content-Type": "application/json"}) for body in bodies]
    assert good.publish("/odd", "for the good one")["successful"]
    assert [m["data"] for m in good.connect()[:-1]] == ["for the good one"]
    for reply in gevent.joinall(odd, timeout=10, raise_error=True):
        assert reply.value.status_code == 200
        [answer] = strictjson.loads(reply.value.content)
        assert answer["error"].startswith("402:") and answer["advice"]["reconnect"] == "handshake"


@pytest.mark.parametrize("body, content_type", [
    (b"not json", "application/json"),
    (b"7", "application/json"),
    (b"[]", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'[{"id": "1"}]', "application/json"),
    (b'[{"channel": 5}]', "application/json"),
    (b'[{"channel": "/meta/handshake", "id": [1]}]', "application/json"),
    (json.dumps([{"channel": "/a", "data": 1}] * 101).encode(), "application/json"),
    (b'{"channel": "/meta/handshake", "x": NaN}', "application/json"),
    (b"message=", "application/x-www-form-urlencoded"),
    (b"nomessage=1", "application/x-www-form-urlencoded"),
    (b"\xff\xfe", "application/json"),
    (b"[" * 30000 + b"]" * 30000, "application/json"),
    (b'[{"channel": "/meta/handshake", "n": 1e999}]', "application/json"),
])
def test_bad_requests_get_400_json_and_the_server_keeps_serving(server, body, content_type):
    reply = requests.post(server.url + "/bayeux", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert reply.status_code == 400 and json.loads(reply.text)["error"], reply.text
    Bayeux(server.url).start("/still")


def test_an_oversized_or_chunked_body(start_server):
    server = start_server(max_body_bytes=1000)
    big = json.dumps([{"channel": "/meta/handshake", "pad": "x" * 2000}])
    reply = requests.post(server.url + "/bayeux", data=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert reply.status_code == 413 and json.loads(reply.text)["error"]
    chunks = iter([b'[{"channel": "/meta/handshake", ', b'"version": "1.0"}]'])
    reply = requests.post(server.url + "/bayeux", data=chunks, timeout=10)  # chunked, as cometd-nodejs-client sends
    assert reply.status_code == 200 and reply.json()[0]["successful"]
    reply = requests.post(server.url + "/bayeux", data=iter([big.encode()]), timeout=10)
    assert reply.status_code == 413


def test_callback_polling_and_the_form_transport(server):
    message = json.dumps([{"channel": "/meta/handshake", "version": "1.0", "id": "9",
                           "supportedConnectionTypes": ["callback-polling"], "ext": {"x": "\u2028"}}])
    reply = requests.get(server.url + "/bayeux", params={"message": message, "jsonp": "__jsonp3__"}, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/javascript")
    assert reply.text.startswith("/**/__jsonp3__([") and reply.text.endswith("]);")
    assert json.loads(reply.text[len("/**/__jsonp3__("):-2])[0]["successful"]
    for bad in ("alert(1)", "a b", "x;y", "", "1abc"):
        refused = requests.get(server.url + "/bayeux", params={"message": message, "jsonp": bad}, timeout=10)
        assert refused.status_code == 400 and "jsonp" in refused.json()["error"]
    assert requests.get(server.url + "/bayeux", params={"jsonp": "cb"}, timeout=10).status_code == 400
    form = requests.post(server.url + "/bayeux/handshake", data={"message": message}, timeout=10)
    assert form.status_code == 200 and form.json()[0]["clientId"]


def test_tokens_travel_in_the_handshake_ext(start_server):
    server = start_server(token_secret=SECRET)
    good = jwt.encode({"exp": int(time.time()) + 600, "channels": ["/team/*"], "publish": ["/team/*"]}, SECRET)
    raw = Bayeux(server.url)
    refused = raw.post([raw.message("/meta/handshake", version="1.0", ext={"token": "forged"})])[0]
    assert not refused["successful"] and refused["error"].startswith("403:")
    raw.handshake(ext={"token": good})
    raw.connect()
    assert raw.subscribe("/team/a")["successful"]
    assert raw.subscribe("/team/*")["successful"]  # the grant covers the pattern's name
    assert raw.subscribe("/other")["error"].startswith("403:")
    assert raw.publish("/team/a", 1)["successful"]
    assert raw.publish("/other", 1)["error"].startswith("403:")
    anonymous = Bayeux(server.url)
    anonymous.start()
    assert anonymous.subscribe("/team/a")["error"].startswith("403:")
    assert anonymous.publish("/team/a", 1)["error"].startswith("403:")


def test_a_graceful_stop_answers_held_connects_with_retry_advice(start_server):
    server = start_server()
    raw = Bayeux(server.url)
    raw.start("/stop")
    held = gevent.spawn(raw.connect, 20_000)
    server.wait_waiting(1)
    gevent.spawn(server.stop)
    replies = held.get(timeout=10)
    assert replies[-1]["successful"] and replies[-1]["advice"]["reconnect"] == "retry"
    assert replies[-1]["advice"]["interval"] >= 0


def test_half_sent_bodies_and_junk_do_not_stop_anyone(start_server):
    server = start_server(body_timeout_s=1)
    raw = Bayeux(server.url)
    raw.start("/calm")
    junk = []
    for payload in (b"POST /bayeux HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"chan",
                    b"POST /bayeux/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n\x00\x01\x02\x03\x04"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(payload)
        junk.append(sock)
    assert raw.publish("/calm", "ok")["successful"]
    assert [m.get("data") for m in raw.connect()] == ["ok", None]
    reply = junk[1].recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    for sock in junk:
        sock.close()


def test_a_notify_reaches_wildcard_subscribers_when_the_service_calls_publish_hooks(server, comet):
    raw = Bayeux(server.url)
    raw.start("/hooked/*", "/hooked/**")
    comet.notify("/hooked/a", "via notify")
    comet.notify("/hooked/a/b", "deeper")
    assert [(m["channel"], m["data"]) for m in raw.connect()[:-1]] == [("/hooked/a", "via notify"),
                                                                      ("/hooked/a/b", "deeper")]
    assert raw.publish("/hooked/c", "bayeux")["successful"]  # once, not twice (hook and publish)
    assert [m["data"] for m in raw.connect()[:-1]] == ["bayeux"]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_notify_retried_with_its_key_reaches_a_wildcard_subscriber_once(kind, start_server, request, tmp_path):
    # memory writes the feeds read now, one key each; SQLite and Redis every feed, in one batch
    if kind == "redis":
        server = start_server(request.getfixturevalue("redis_url"))
    else:
        server = start_server("memory://" if kind == "memory" else f"sqlite:///{tmp_path}/comet.db")
    comet = Comet(server.url)
    raw, deep = Bayeux(server.url), Bayeux(server.url)
    raw.start("/retried/*")
    deep.start("/**", "/retried/**")
    first = comet.notify("/retried/a", "once", headers={"Idempotency-Key": "k1"})
    again = comet.notify("/retried/a", "once", headers={"Idempotency-Key": "k1"})  # its reply was lost
    assert again["id"] == first["id"]
    comet.notify("/retried/a", "next")
    assert [m["data"] for m in raw.connect()[:-1]] == ["once", "next"]
    assert [m["data"] for m in deep.connect()[:-1]] == ["once", "next"]
    assert raw.publish("/retried/b", "bayeux")["successful"]
    assert [m["data"] for m in deep.connect()[:-1]] == ["bayeux"]


def test_a_wildcard_feed_is_written_only_while_a_session_subscribes_to_its_pattern(server, comet):
    def stored_events() -> int:
        return requests.get(server.url + "/stats", timeout=10).json()["backlog_events"]

    comet.notify("/lone/a", "no pattern subscriber")
    assert stored_events() == 1  # not also in bx.one:/lone, bx.any:/lone and bx.any:
    first, second = Bayeux(server.url), Bayeux(server.url)
    first.start("/lone/*")
    second.start("/lone/*", "/**")
    before = stored_events()
    comet.notify("/lone/a", "both")
    assert stored_events() == before + 3  # the channel, bx.one:/lone and bx.any:
    assert [m["data"] for m in first.connect()[:-1]] == ["both"]
    assert [m["data"] for m in second.connect()[:-1]] == ["both"]
    [left] = first.post([first.message("/meta/unsubscribe", subscription="/lone/*")])
    assert left["successful"]
    assert second.publish("/lone/b", "one reader left")["successful"]
    assert [m["data"] for m in second.connect()[:-1]] == ["one reader left"]
    assert [m.get("data") for m in first.connect()] == [None]  # its connect reply only
    [gone] = second.post([second.message("/meta/disconnect")])
    assert gone["successful"]
    before = stored_events()
    comet.notify("/lone/a", "nobody again")
    assert stored_events() == before + 1
    assert first.subscribe("/**")["successful"]  # a pattern subscribed anew starts now
    comet.notify("/lone/c", "after")
    assert [m["data"] for m in first.connect()[:-1]] == ["after"]


def test_sessions_and_subscriptions_are_bounded(start_server):
    server = start_server(max_channels=3, max_clients_total=2)
    first = Bayeux(server.url)
    first.start("/b/1", "/b/2")
    assert first.subscribe("/b/3", "/b/1")["successful"]  # three different ones: the bound
    refused = first.subscribe("/b/4")
    assert refused["error"].startswith("400:") and "--max-channels" in refused["error"]
    Bayeux(server.url).handshake()
    third = Bayeux(server.url)
    [full] = third.post([third.message("/meta/handshake", version="1.0")])
    assert full["error"].startswith("503:") and full["advice"]["reconnect"] == "handshake"
    assert first.publish("/b/3", "still served")["successful"]
    assert [m["data"] for m in first.connect()[:-1]] == ["still served"]


def test_head_runs_no_batch(server):
    message = json.dumps([{"channel": "/meta/handshake", "version": "1.0"}])
    reply = requests.head(server.url + "/bayeux", params={"message": message}, timeout=10)
    assert reply.status_code == 405 and server.app.bayeux.stats.handshakes == 0

"""``POST /notify`` with ``{"events": [...]}`` over real HTTP: the reply, the limits, the key,
the token covering every channel, and hostile bodies (each a 4xx naming the mistake)."""
import json
import socket

import pytest
import requests

from .test_auth_tokens import SECRET, mint


def post(server, body, *, token=None, key=None, raw=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(server.url + "/notify", data=data, headers=headers, timeout=10)


def events(*pairs):
    return {"events": [{"channel": channel, "data": data} for channel, data in pairs]}


def poll_ids(server, channel, since=0):
    reply = requests.get(server.url + "/register", params={"channel": channel, "since": since, "timeout": 0},
                         timeout=10)
    return [(e["id"], e["data"]) for e in reply.json()["events"]]


def test_a_batch_is_stored_in_order_and_answered_event_by_event(start_server):
    server = start_server()
    requests.post(server.url + "/notify", json={"channel": "a", "data": "first"}, timeout=10)
    reply = post(server, events(("a", 1), ("b", 2), ("a", 3)))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": [{"channel": "a", "id": 2, "woken": 0}, {"channel": "b", "id": 1, "woken": 0},
                                       {"channel": "a", "id": 3, "woken": 0}]}
    assert poll_ids(server, "a") == [(1, "first"), (2, 1), (3, 3)]
    assert poll_ids(server, "b") == [(1, 2)]


def test_a_batch_wakes_waiting_polls(start_server):
    server = start_server()
    import gevent
    waiting = gevent.spawn(requests.get, server.url + "/register", params={"channel": "a", "timeout": 10},
                           timeout=20)
    server.wait_waiting(1)
    reply = post(server, events(("a", "x"), ("a", "y")))
    assert [e["woken"] for e in reply.json()["events"]] == [1, 1]
    assert [e["data"] for e in waiting.get(timeout=10).json()["events"]] == ["x", "y"]


def test_the_idempotency_key_covers_the_batch(start_server):
    server = start_server()
    body = events(("a", 1), ("b", 2))
    first = post(server, body, key="batch-1")
    again = post(server, body, key="batch-1")
    assert first.json()["events"] == again.json()["events"] == [{"channel": "a", "id": 1, "woken": 0},
                                                                 {"channel": "b", "id": 1, "woken": 0}]
    assert poll_ids(server, "a") == [(1, 1)]
    assert post(server, body, key="x" * 201).status_code == 400


def test_the_event_count_and_the_body_are_bounded(start_server):
    server = start_server(max_batch_events=3, max_body_bytes=400)
    reply = post(server, events(*[("a", i) for i in range(4)]))
    assert reply.status_code == 413 and "max-batch-events" in reply.json()["error"]
    assert post(server, events(*[("a", "x" * 200)] * 3)).status_code == 413
    assert poll_ids(server, "a") == []
    assert post(server, events(*[("a", i) for i in range(3)])).status_code == 200


@pytest.mark.parametrize("body, says", [
    ({"events": []}, "non-empty list"),
    ({"events": {"channel": "a"}}, "non-empty list"),
    ({"events": [1]}, "events[0]"),
    ({"events": [{"channel": "a", "data": 1}, {"channel": "a"}]}, "events[1]"),
    ({"events": [{"channel": "a", "data": 1}, {"channel": "bad name", "data": 1}]}, "events[1]"),
    ({"events": [{"channel": "a", "client": "b", "data": 1}]}, "exactly one"),
    ({"events": [{"channel": 7, "data": 1}]}, "must be a string"),
    ({"events": [{"channel": "a", "data": 1}], "channel": "a"}, "only events"),
])
def test_a_malformed_batch_is_400_naming_the_mistake_and_stores_nothing(server, body, says):
    reply = post(server, body)
    assert reply.status_code == 400 and says in reply.json()["error"], reply.text
    assert poll_ids(server, "a") == []


@pytest.mark.parametrize("raw, says", [
    (b'{"events": [{"channel": "a", "data": NaN}]}', "finite"),
    (b'{"events": [{"channel": "a", "data": "\\ud800"}]}', "surrogate"),
    (b'{"events": [' + b'[' * 70 + b']' * 70 + b']}', "deeper"),
    (b'{"events": [{"channel": "a", "data": 1}', "malformed"),
])
def test_a_batch_that_is_not_strict_json_is_400(server, raw, says):
    reply = post(server, None, raw=raw)
    assert reply.status_code == 400 and says in reply.json()["error"], reply.text
    json.loads(reply.content)


def test_a_notify_whose_data_names_events_is_still_a_single_notify(server):
    reply = post(server, {"channel": "a", "data": {"events": [1, 2]}})
    assert reply.json() == {"channel": "a", "id": 1, "woken": 0}


def test_a_publisher_token_must_cover_every_channel_of_the_batch(start_server):
    server = start_server(token_secret=SECRET, public_channels="*")
    token = mint({"publish": ["game:1:*"]})
    reply = post(server, events(("game:1:a", 1), ("game:2:a", 2)), token=token)
    assert reply.status_code == 403 and reply.json()["auth"] == "publish" and "game:2:a" in reply.json()["error"]
    assert poll_ids(server, "game:1:a") == []
    assert post(server, events(("game:1:a", 1)), token=None).status_code == 401
    assert post(server, events(("game:1:a", 1), ("game:1:b", 2)), token=token).status_code == 200
    private = post(server, {"events": [{"client": "someone", "data": 1}]}, token=token)
    assert private.status_code == 403 and "@***" in private.json()["error"]


def test_a_batch_to_an_unregistered_client_is_404_and_stores_nothing(server):
    reply = post(server, {"events": [{"channel": "a", "data": 1}, {"client": "nobody", "data": 2}]})
    assert reply.status_code == 404
    assert poll_ids(server, "a") == []


def test_a_half_sent_batch_gets_no_event_stored(start_server):
    server = start_server(body_timeout_s=0.5)
    body = json.dumps(events(("a", 1), ("a", 2))).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert poll_ids(server, "a") == []

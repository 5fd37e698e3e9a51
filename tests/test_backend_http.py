"""Issue 11's backend reproductions, over real HTTP: ids after a re-registration, colliding
Redis keys, the channel bound and paging, on each backend where they apply.

Expiry is driven with a clock the test moves (never a sleep); the server is built
around the backend with ``start_server(backend=...)``.
"""
import json

import pytest

from geventcomet import Config, clientid
from geventcomet.backends.memory import MemoryBackend
from geventcomet.backends.redis import RedisBackend
from geventcomet.backends.sqlite import SQLiteBackend

from .helpers import Clock, Comet

SETTINGS = dict(client_ttl_s=200, timeout_s=2, max_timeout_s=5)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend_url(request, tmp_path):
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/http.db"
    return request.getfixturevalue("redis_url")


def open_with_clock(url: str, clock: Clock, **settings):
    config = Config(backend=url, **settings)
    kind = {"memory": MemoryBackend, "sqlite": SQLiteBackend, "redis": RedisBackend}[url.split(":")[0]]
    return kind(config, clock=clock)


def test_an_old_cursor_after_a_reregistration_is_told_not_recovered(backend_url, start_server):
    """Issue 11 item 4: ids 1, 2; the registration expires; three new private events must
    neither reuse 1 and 2 nor reach the old cursor with recovered true."""
    clock = Clock()
    server = start_server(backend=open_with_clock(backend_url, clock, **SETTINGS), **SETTINGS)
    comet = Comet(server.url)
    c = clientid.mint(server.app.backend.client_secret())  # an id as the server mints them
    start = comet.register(client=c, timeout=0)
    assert [comet.notify(client=c, data=i)["id"] for i in (1, 2)] == [1, 2]
    seen = comet.register(client=c, since=start["cursor"], timeout=0)
    assert [e["id"] for e in seen["events"]] == [1, 2] and seen["cursor"].endswith(f"@{c}~2")
    clock.now += 300  # quiet past the TTL
    assert server.app.backend.expire_idle() == [c]
    comet.notify(client=c, data="lost", expect=404)
    comet.register(client=c, timeout=0)  # a new poll registers c again
    again = [comet.notify(client=c, data=i)["id"] for i in (3, 4, 5)]
    assert again[0] > 2 and again == list(range(again[0], again[0] + 3))
    reply = comet.register(client=c, since=seen["cursor"], timeout=0)
    assert reply["recovered"] is False  # never a silent skip
    assert [e["id"] for e in reply["events"]] == again and [e["data"] for e in reply["events"]] == [3, 4, 5]


def test_a_new_notify_on_a_channel_with_colons_is_stored(redis_url, start_server):
    """Issue 11 item 2: gc:i:X:b:c was the key of both (X:b, c) and (X, b:c)."""
    server = start_server(backend=RedisBackend(Config(backend=redis_url)))
    comet = Comet(server.url)
    assert comet.notify("X:b", "first", headers={"Idempotency-Key": "c"})["id"] == 1
    assert comet.notify("X", "second", headers={"Idempotency-Key": "b:c"})["id"] == 1
    reply = comet.register("X", since=0, timeout=0)
    assert [(e["id"], e["data"]) for e in reply["events"]] == [(1, "second")]


def test_a_retried_key_on_another_channel_is_another_event(backend_url, start_server):
    """Issue 11 item 3: K on A, K on B, a retry of K on A: A holds its event once."""
    server = start_server(backend=open_with_clock(backend_url, Clock()))
    comet = Comet(server.url)
    for channel in ("A", "B", "A"):
        assert comet.notify(channel, channel, headers={"Idempotency-Key": "K"})["id"] == 1
    for channel in ("A", "B"):
        assert [e["data"] for e in comet.register(channel, since=0, timeout=0)["events"]] == [channel]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_notify_past_the_channel_bound_gets_503_and_the_rest_carry_on(kind, tmp_path, start_server):
    url = "memory" if kind == "memory" else f"sqlite://{tmp_path}/bound.db"
    server = start_server(backend=open_with_clock(url, Clock(), max_channels_total=2))
    comet = Comet(server.url)
    comet.notify("a", 1)
    comet.notify("b", 1)
    reply = comet.http.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10)
    assert reply.status_code == 503 and "at most 2" in reply.json()["error"]
    assert not reply.json()["error"].startswith("backend unavailable")  # a bound, not a failure
    assert reply.headers["Retry-After"] == "10"
    assert comet.notify("a", 2)["id"] == 2
    assert comet.stats()["channels"] == 2


def test_a_poll_on_a_long_backlog_gets_pages_and_resumes_where_each_stopped(backend_url, start_server):
    """Issue 11 item 7: never one reply of the whole backlog; every event once, in order."""
    limits = dict(max_reply_bytes=100_000, max_reply_events=1000)
    server = start_server(backend=open_with_clock(backend_url, Clock(), **limits), **limits)
    comet = Comet(server.url)
    for i in range(20):
        comet.notify("big", {"n": i, "pad": "p" * 30_000})
    since, got, replies = "0", [], 0
    while True:
        reply = comet.http.get(server.url + "/register", params={"channel": "big", "since": since, "timeout": 0},
                               timeout=10)
        assert reply.status_code == 200 and len(reply.content) < 100_000 + 1000
        body = json.loads(reply.content)
        if not body["events"]:
            break
        assert body["recovered"] is True
        got += [e["id"] for e in body["events"]]
        since, replies = body["cursor"], replies + 1
    assert got == list(range(1, 21)) and replies >= 7

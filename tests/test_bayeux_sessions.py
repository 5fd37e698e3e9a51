"""The Bayeux session stores, one contract for the three (memory, SQLite, Redis), with plain calls."""
from __future__ import annotations

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geventcomet import Config
from geventcomet.bayeux import channels
from geventcomet.bayeux.sessions import MemorySessions, Session
from geventcomet.bayeux.sessions_sqlite import SQLiteSessions
from geventcomet.bayeux.stores import open_sessions
from geventcomet.errors import BackendError

from .helpers import Clock


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        made = MemorySessions(60, Clock())
    elif request.param == "sqlite":
        made = SQLiteSessions(f"sqlite:///{tmp_path}/comet.db", 60, Clock())
    else:
        made = open_sessions(Config(backend=request.getfixturevalue("redis_url"), bayeux_session_ttl_s=60))
    yield made
    made.close()


def test_a_session_keeps_subscriptions_and_merges_positions(store):
    store.create(Session("c1", positions={"bx.s:c1": 0}, epoch="E1", token="t"))
    assert store.subscribe("c1", {"/a": 3, "bx.one:/b": 0}, "E1", ["/a", "/b/*"])
    assert store.save("c1", {"/a": 5, "bx.s:c1": 1}, "E1")  # a connect that read /a and the control channel
    assert store.subscribe("c1", {"/z": 9}, "E1", ["/z"])  # meanwhile elsewhere
    session = store.load("c1")
    assert session.subscriptions == ["/a", "/b/*", "/z"]
    assert session.positions == {"/a": 5, "bx.one:/b": 0, "/z": 9, "bx.s:c1": 1}
    assert (session.epoch, session.token, session.connected) == ("E1", "t", True)
    assert store.unsubscribe("c1", ["/b/*"], ["bx.one:/b"])
    session = store.load("c1")
    assert session.subscriptions == ["/a", "/z"] and "bx.one:/b" not in session.positions


def test_a_gone_session_is_not_resurrected(store):
    assert store.load("nobody") is None
    assert not store.subscribe("nobody", {"/a": 1}, "E", ["/a"])
    assert not store.save("nobody", {"/a": 1}, "E")
    assert not store.unsubscribe("nobody", ["/a"], ["/a"])
    store.create(Session("c2"))
    store.delete("c2")
    assert store.load("c2") is None and not store.save("c2", {"/a": 1}, "E")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_idle_sessions_expire_on_the_clock_and_a_touch_keeps_one(kind, tmp_path):
    clock = Clock()
    made = MemorySessions(60, clock) if kind == "memory" else SQLiteSessions(f"sqlite:///{tmp_path}/c.db", 60, clock)
    made.create(Session("old"))
    made.create(Session("kept"))
    clock.now += 59
    assert made.load("kept") is not None
    clock.now += 2
    assert made.expire() == 1 and made.count() == 1
    assert made.load("old") is None and made.load("kept") is not None
    clock.now += 61
    assert made.load("kept") is None and made.count() == 0


def test_sqlite_sessions_survive_reopening(tmp_path):
    url = f"sqlite:///{tmp_path}/comet.db"
    first = SQLiteSessions(url, 60)
    first.create(Session("c3", positions={"bx.s:c3": 2}, epoch="E"))
    first.subscribe("c3", {"/a": 7}, "E", ["/a"])
    first.close()
    again = SQLiteSessions(url, 60)
    session = again.load("c3")
    assert session.subscriptions == ["/a"] and session.positions == {"bx.s:c3": 2, "/a": 7}
    again.close()


def test_redis_sessions_expire_by_themselves(redis_url):
    made = open_sessions(Config(backend=redis_url, bayeux_session_ttl_s=60))
    made.create(Session("c4"))
    ttl_ms = made.redis.pttl("gc:bx:s:c4")
    assert 0 < ttl_ms <= 60_000
    made.redis.pexpire("gc:bx:s:c4", 5000)  # 55 idle seconds later
    assert made.load("c4") is not None and made.redis.pttl("gc:bx:s:c4") > 5000  # a request restarts it
    made.redis.delete("gc:bx:s:c4")  # what the TTL does at 60 idle seconds
    assert made.load("c4") is None and not made.save("c4", {}, "E")
    made.close()


def test_redis_sessions_batch_concurrent_connects_and_survive_a_script_flush(redis_url):
    made = open_sessions(Config(backend=redis_url, bayeux_session_ttl_s=60))
    for n in range(50):
        made.create(Session(f"b{n}", positions={f"bx.s:b{n}": 0}))
    saves = [gevent.spawn(made.save, f"b{n}", {f"/c/{n}": n}, "E") for n in range(50)]
    loads = [gevent.spawn(made.load, f"b{n}") for n in range(50)] + [gevent.spawn(made.load, "nobody")]
    gevent.joinall(saves + loads, timeout=10, raise_error=True)
    assert all(save.value for save in saves)
    assert loads[-1].value is None  # each caller gets its own replies out of the shared pipeline
    for n, load in enumerate(loads[:-1]):
        assert load.value.client_id == f"b{n}" and load.value.positions[f"bx.s:b{n}"] == 0
    unsendable = [gevent.spawn(made.load, "b\ud8001"), gevent.spawn(made.load, "b2")]
    gevent.joinall(unsendable, timeout=10)  # a lone surrogate has no UTF-8: that call alone fails
    assert isinstance(unsendable[0].exception, BackendError) and unsendable[1].value.client_id == "b2"
    made.redis.script_flush()  # Redis restarted or flushed its scripts: they are loaded again
    assert made.load("b1").positions["/c/1"] == 1
    made.redis.script_flush()
    assert made.subscribe("b1", {"/d": 4}, "E", ["/d"])
    session = made.load("b1")
    assert session.subscriptions == ["/d"] and session.positions["/c/1"] == 1 and session.positions["/d"] == 4
    made.close()


def test_the_memory_store_counts_the_sessions_that_read_each_wildcard_feed():
    clock = Clock()
    store = MemorySessions(60, clock, knows_all_readers=True)
    assert store.wildcard_feeds("/a/x") == ()
    for client_id in ("c1", "c2", "c3"):
        store.create(Session(client_id))
    store.subscribe("c1", {}, "E", ["/a/*", "/a/b"])
    store.subscribe("c1", {}, "E", ["/a/*"])  # again: still one reader
    store.subscribe("c2", {}, "E", ["/a/*", "/**"])
    assert store.wildcard_feeds("/a/x") == ("bx.one:/a", "bx.any:")
    store.unsubscribe("c2", ["/a/*", "/not/held/*"], [])
    assert store.wildcard_feeds("/a/x") == ("bx.one:/a", "bx.any:")
    store.delete("c1")
    assert store.wildcard_feeds("/a/x") == ("bx.any:",)
    store.subscribe("c3", {}, "E", ["/a/**"])
    clock.now += 30
    assert store.load("c3") is not None
    clock.now += 31  # c2 idle past the TTL, c3 not
    assert store.expire() == 1 and store.wildcard_feeds("/a/x") == ("bx.any:/a",)
    clock.now += 61
    assert store.load("c3") is None and store.wildcard_feeds("/a/x") == ()


def test_stores_that_cannot_know_every_reader_answer_every_feed(store):
    assert store.wildcard_feeds("/a/x") == ("bx.one:/a", "bx.any:/a", "bx.any:")


_NAMES = ["/a/*", "/a/**", "/a/b", "/**", "/*", "/a/b/*"]
_OPS = st.lists(st.tuples(st.sampled_from(["subscribe", "unsubscribe", "delete", "create", "idle", "load", "expire"]),
                          st.sampled_from(["c1", "c2", "c3"]), st.lists(st.sampled_from(_NAMES), max_size=3)),
                max_size=40)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_the_wildcard_feeds_written_are_always_those_a_live_session_reads(ops):
    """Whatever order clients subscribe, unsubscribe, disconnect and go idle in, a publish
    writes exactly the feeds of the patterns the held sessions subscribe to: never fewer (a
    subscriber would miss events), and none left over once nobody holds them (no leak).
    Checked against a model: client -> (subscriptions, last seen), gone past 60 s idle."""
    clock = Clock()
    store = MemorySessions(60, clock, knows_all_readers=True)
    model: dict[str, tuple[set[str], float]] = {}

    def touch(client_id: str) -> set[str] | None:  # the model's _live
        if client_id in model and model[client_id][1] + 60 <= clock.now:
            del model[client_id]
        if client_id not in model:
            return None
        model[client_id] = (model[client_id][0], clock.now)
        return model[client_id][0]

    for op, client_id, names in ops:
        if op == "create":
            if store.load(client_id) is None:
                store.create(Session(client_id))
            if touch(client_id) is None:
                model[client_id] = (set(), clock.now)
        elif op == "subscribe":
            assert store.subscribe(client_id, {}, "E", names) == (touch(client_id) is not None)
            if client_id in model:
                model[client_id][0].update(names)
        elif op == "unsubscribe":
            assert store.unsubscribe(client_id, names, []) == (touch(client_id) is not None)
            if client_id in model:
                model[client_id][0].difference_update(names)
        elif op == "delete":
            store.delete(client_id)
            model.pop(client_id, None)
        elif op == "idle":
            clock.now += 40  # twice without a touch: the session is gone
        elif op == "load":
            assert (store.load(client_id) is None) == (touch(client_id) is None)
        else:
            store.expire()
            model = {c: held for c, held in model.items() if held[1] + 60 > clock.now}
        held_feeds = {channels.feed_of(name) for subscribed, _ in model.values() for name in subscribed}
        for channel in ("/a/b/c", "/a/x", "/z"):
            expected = tuple(feed for feed in channels.feeds_of_publish(channel) if feed in held_feeds)
            assert store.wildcard_feeds(channel) == expected

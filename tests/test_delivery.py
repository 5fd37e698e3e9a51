"""Delivery over real HTTP: one and many waiters, timeouts, cursors, backlog, targeted clients."""
import time

import gevent
import pytest

from geventcomet import Config
from geventcomet.backends.memory import MemoryBackend

from .helpers import Comet


def test_one_notify_wakes_every_waiter(server, comet):
    polls = [gevent.spawn(Comet(server.url).register, "news", timeout=20) for _ in range(50)]
    server.wait_waiting(50)
    assert comet.notify("news", "hello")["woken"] == 50
    for poll in polls:
        reply = poll.get(timeout=10)
        assert reply["events"] == [{"channel": "news", "id": 1, "data": "hello"}]


def test_stats_time_the_last_fan_out_in_the_hub(server, comet):
    """A wake of 100+ waiters is timed from the first switch to the last reply sent."""
    assert comet.stats()["last_fanout"] is None
    polls = [gevent.spawn(Comet(server.url).register, "crowd", timeout=20) for _ in range(120)]
    server.wait_waiting(120)
    before = time.time()
    comet.notify("crowd", "all")
    for poll in polls:
        assert poll.get(timeout=10)["events"][0]["data"] == "all"
    fanout = comet.stats()["last_fanout"]
    assert fanout["waiters"] == 120
    assert before <= fanout["started_unix"] and 0 < fanout["ms"] < (time.time() - before) * 1000
    single = gevent.spawn(Comet(server.url).register, "one", timeout=20)
    server.wait_waiting(1)
    comet.notify("one", "x")
    single.get(timeout=10)
    assert comet.stats()["last_fanout"] == fanout  # one waiter is not a fan-out


def test_timeout_message_keeps_the_cursor(server, comet):
    first = comet.register("quiet", timeout=0.2)
    assert first["events"] == [] and first["timeout"] is True and first["recovered"] is True
    again = comet.register("quiet", timeout=0.1, since=first["cursor"], client=first["client"])
    assert again["timeout"] is True and again["cursor"] == first["cursor"]


def test_a_zero_timeout_answers_at_once(comet):
    assert comet.register("x", timeout=0)["timeout"] is True


def test_one_poll_listens_on_several_channels(server, comet):
    start = comet.register("a", "b", timeout=0)
    poll = gevent.spawn(comet.register, "a", "b", since=start["cursor"], client=start["client"], timeout=20)
    server.wait_waiting(1)
    comet.notify("b", 2)
    reply = poll.get(timeout=5)
    assert reply["events"] == [{"channel": "b", "id": 1, "data": 2}]
    comet.notify("a", 1)
    comet.notify("b", 3)
    reply = comet.register("a", "b", since=reply["cursor"], client=start["client"])
    assert [(e["channel"], e["id"]) for e in reply["events"]] == [("a", 1), ("b", 2)]


def test_events_published_between_polls_come_with_the_next_poll_in_order(comet):
    start = comet.register("feed", timeout=0)
    for i in range(5):
        comet.notify("feed", i)
    reply = comet.register("feed", since=start["cursor"], client=start["client"])
    assert [e["data"] for e in reply["events"]] == [0, 1, 2, 3, 4]
    assert [e["id"] for e in reply["events"]] == [1, 2, 3, 4, 5]
    assert reply["recovered"] is True
    comet.notify("feed", 5)
    reply = comet.register("feed", since=reply["cursor"], client=start["client"])
    assert [e["id"] for e in reply["events"]] == [6]


def test_a_plain_event_id_works_as_since(comet):
    for i in range(3):
        comet.notify("plain", i)
    assert [e["id"] for e in comet.register("plain", since=1)["events"]] == [2, 3]


def test_backlog_exceeded_is_reported_as_not_recovered(start_server):
    server = start_server(backlog=3)
    comet = Comet(server.url)
    start = comet.register("busy", timeout=0)
    for i in range(5):
        comet.notify("busy", i)
    reply = comet.register("busy", since=start["cursor"])
    assert reply["recovered"] is False
    assert [e["id"] for e in reply["events"]] == [3, 4, 5]  # everything still kept, and no wait
    after = comet.register("busy", since=reply["cursor"], timeout=0)
    assert after["recovered"] is True and after["events"] == []


def test_events_older_than_the_backlog_age_are_dropped_and_reported(start_server):
    now = [1000.0]
    config = Config(port=0, backlog_age_s=60)
    server = start_server(backend=MemoryBackend(config, clock=lambda: now[0]), backlog_age_s=60)
    comet = Comet(server.url)
    start = comet.register("old", timeout=0)
    comet.notify("old", "stale")
    now[0] += 61
    reply = comet.register("old", since=start["cursor"], timeout=0)
    assert reply["recovered"] is False and reply["events"] == []


def test_a_cursor_from_the_future_is_not_recovered(comet):
    comet.notify("f", 1)
    reply = comet.register("f", since=9)
    assert reply["recovered"] is False and reply["events"] == []
    assert reply["cursor"].split("~")[1:3] == ["f", "1"]


def test_a_cursor_from_another_epoch_is_not_recovered(comet):
    comet.notify("e", 1)
    reply = comet.register("e", since="0ld~e~0", timeout=5)
    assert reply["recovered"] is False
    assert [e["id"] for e in reply["events"]] == [1]


def test_a_notify_can_target_one_registered_client(server, comet):
    me = comet.register("hello", timeout=0)  # the server mints the ids
    alice = me["client"]
    me = comet.register(timeout=0, client=alice)
    other = comet.register("shared", timeout=0)
    mine = gevent.spawn(comet.register, since=me["cursor"], client=alice, timeout=20)
    theirs = gevent.spawn(Comet(server.url).register, "shared", since=other["cursor"], client=other["client"],
                          timeout=1)
    server.wait_waiting(2)
    reply = comet.notify(client=alice, data="just you")
    assert reply["channel"] == "@" + alice and reply["woken"] == 1
    assert mine.get(timeout=5)["events"] == [{"channel": "@" + alice, "id": 1, "data": "just you"}]
    assert theirs.get(timeout=5)["events"] == []


def test_the_server_assigns_a_client_id_when_none_is_given(comet):
    client = comet.register("x", timeout=0)["client"]
    assert client and comet.notify(client=client, data=1)["id"] == 1


def test_registrations_expire_after_the_idle_time(start_server):
    now = [0.0]
    config = Config(port=0, client_ttl_s=200)
    server = start_server(backend=MemoryBackend(config, clock=lambda: now[0]), client_ttl_s=200)
    comet = Comet(server.url)
    idle = comet.register("hello", timeout=0)["client"]
    busy = comet.register("hello", timeout=0)["client"]
    now[0] += 150
    comet.register(timeout=0, client=busy)
    now[0] += 100
    assert server.app.backend.expire_idle() == [idle]
    comet.notify(client=idle, data=1, expect=404)
    assert comet.notify(client=busy, data=1)["id"] == 1
    assert comet.stats()["clients"] == 1


def test_unknown_client_notify_is_404(comet):
    assert "no registered client" in comet.notify(client="ghost", data=1, expect=404)["error"]


def test_an_idempotency_key_stores_one_event(comet):
    key = {"Idempotency-Key": "order-17"}
    first = comet.notify("orders", "paid", headers=key)
    second = comet.notify("orders", "paid", headers=key)
    assert first["id"] == second["id"] == 1
    assert len(comet.register("orders", since=0)["events"]) == 1


@pytest.mark.parametrize("channels", [1, 16])
def test_stats_count_what_happened(server, comet, channels):
    names = [f"c{i}" for i in range(channels)]
    poll = gevent.spawn(comet.register, *names, timeout=20)
    server.wait_waiting(1)
    assert comet.stats()["waiting"] == 1
    comet.notify(names[-1], 1)
    poll.get(timeout=5)
    comet.register("t", timeout=0)
    stats = comet.stats()
    for key in ("waiting", "clients", "channels", "published", "delivered", "timeouts",
                "disconnects", "uptime_s", "rss_bytes"):
        assert key in stats
    assert (stats["waiting"], stats["published"], stats["delivered"], stats["timeouts"]) == (0, 1, 1, 1)
    assert stats["clients"] == 2 and stats["rss_bytes"] > 1_000_000

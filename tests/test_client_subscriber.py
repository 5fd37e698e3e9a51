"""geventcomet.client.Subscriber against a real server: events in order with an exact cursor,
gaps, token refresh, a refused client id, the shutdown "reconnect" reply, the cursor store."""

import pytest
import requests

from geventcomet.client import Backoff, Event, FileCursorStore, Gap, Subscriber, wire

from .client_fixtures import Collector, FaultProxy, publish_ids
from .helpers import ServerProcess
from .test_auth_tokens import SECRET, mint

FAST = Backoff(0.01, 0.2)


def first_cursor(url, *channels):
    """A cursor at the channels' start (position 0 in each), from raw polls."""
    cursor = None
    for channel in channels:
        cursor = requests.get(url + "/register", params={"channel": channel, "since": 0, "timeout": 0},
                              timeout=10).json()["cursor"]
        if len(channels) > 1:
            return cursor.split("~")[0] + "".join(f"~{name}~0" for name in channels)
    return cursor


def test_events_arrive_in_order_and_the_cursor_follows_each(server):
    sub = Subscriber(server.url, ["a", "b"], cursor=first_cursor(server.url, "a", "b"), poll_timeout_s=5)
    publish_ids(server.url, "a", 3)
    publish_ids(server.url, "b", 2)
    collector = Collector(sub)
    collector.wait_for(5)
    collector.stop()
    got = [(e.channel, e.id, e.data) for e in collector.events]
    assert sorted(got) == [("a", 1, 0), ("a", 2, 1), ("a", 3, 2), ("b", 1, 0), ("b", 2, 1)]
    assert sub.cursor == collector.events[-1].cursor


def test_the_cursor_is_exact_in_the_middle_of_a_reply(server):
    publish_ids(server.url, "a", 3)
    publish_ids(server.url, "b", 3)
    with Subscriber(server.url, ["a", "b"], cursor=first_cursor(server.url, "a", "b"), poll_timeout_s=5) as sub:
        taken = [next(sub) for _ in range(4)]  # one reply of six events, four taken
        cursor = sub.cursor
    assert [(e.channel, e.id) for e in taken] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    with Subscriber(server.url, ["a", "b"], cursor=cursor, poll_timeout_s=5) as sub:
        rest = [next(sub) for _ in range(2)]
    assert [(e.channel, e.id) for e in rest] == [("b", 2), ("b", 3)]  # none lost, none twice


def test_a_gap_is_an_item_or_goes_to_on_gap(start_server):
    server = start_server(backlog=5)
    publish_ids(server.url, "a", 1)
    cursor = requests.get(server.url + "/register", params={"channel": "a", "since": 0, "timeout": 0},
                          timeout=10).json()["cursor"]
    publish_ids(server.url, "a", 10)  # event 2 is trimmed before the subscriber comes back
    with Subscriber(server.url, "a", cursor=cursor, poll_timeout_s=5) as sub:
        items = [next(sub) for _ in range(6)]
    assert isinstance(items[0], Gap) and items[0].cursor == cursor
    assert [item.id for item in items[1:]] == [7, 8, 9, 10, 11]
    gaps = []
    with Subscriber(server.url, "a", cursor=cursor, poll_timeout_s=5, on_gap=gaps.append) as sub:
        assert isinstance(next(sub), Event) and len(gaps) == 1


def test_a_token_callable_is_asked_again_after_a_401(start_server):
    server = start_server(token_secret=SECRET, notify_token="admin")
    tokens = [mint({"channels": ["a"]}, ttl=-10), mint({"channels": ["a"]})]
    asked = []

    def token():
        asked.append(1)
        return tokens[min(len(asked), 2) - 1]
    sub = Subscriber(server.url, "a", token=token, poll_timeout_s=5, backoff=FAST)
    collector = Collector(sub)
    server.wait_waiting(1)
    publish_ids(server.url, "a", 1, token="admin")
    collector.wait_for(1)
    collector.stop()
    assert len(asked) >= 2


def test_a_fixed_token_refused_raises(start_server):
    from geventcomet.client import AuthError
    server = start_server(token_secret=SECRET)
    with Subscriber(server.url, "a", token=mint({"channels": ["b"]}), poll_timeout_s=5) as sub:
        with pytest.raises(AuthError) as refused:
            next(sub)
    assert refused.value.status == 403


def test_a_client_id_the_server_refuses_is_dropped_and_the_public_position_kept(server):
    publish_ids(server.url, "a", 2)
    epoch = requests.get(server.url + "/stats", timeout=10).json()["epoch"]
    forged = f"{epoch}~a~1~@forgedclientid00~0"
    with Subscriber(server.url, "a", cursor=forged, poll_timeout_s=5, backoff=FAST) as sub:
        event = next(sub)
        assert (event.id, sub.client != "forgedclientid00") == (2, True)


@pytest.mark.parametrize("transport", ["longpoll", "sse"])
def test_a_stopping_server_sends_its_clients_to_the_next_one(tmp_path, transport):
    """SQLite server stopped (503 "reconnect" to the held poll) and started again behind the
    same address: the subscriber resumes where it was, nothing lost, no gap."""
    database = f"sqlite:///{tmp_path}/c.db"
    first = ServerProcess("--backend", database)
    proxy = FaultProxy(("127.0.0.1", int(first.url.rsplit(":", 1)[1])), every=10**9)
    try:
        start = first_cursor(first.url, "a")
        publish_ids(first.url, "a", 3)
        sub = Subscriber(proxy.url, "a", cursor=start, poll_timeout_s=20, backoff=FAST, transport=transport)
        collector = Collector(sub)
        collector.wait_for(3)
        assert first.terminate() == 0
        second = ServerProcess("--backend", database)
        proxy.upstream = ("127.0.0.1", int(second.url.rsplit(":", 1)[1]))
        publish_ids(second.url, "a", 3)
        collector.wait_for(6)
        collector.stop()
        second.stop()
    finally:
        proxy.close()
        first.stop()
    assert [(item.id, item.data) for item in collector.items] == [(1, 0), (2, 1), (3, 2), (4, 0), (5, 1), (6, 2)]


def test_a_file_cursor_store_resumes_a_new_subscriber(server, tmp_path):
    store = tmp_path / "cursor"
    start = first_cursor(server.url, "a")
    publish_ids(server.url, "a", 4)
    with Subscriber(server.url, "a", cursor=start, cursor_store=store,
                    poll_timeout_s=5) as sub:
        assert [next(sub).id for _ in range(2)] == [1, 2]
    saved = FileCursorStore(store).load()
    assert saved is not None and "~a~2~" in saved
    with Subscriber(server.url, "a", cursor_store=str(store), poll_timeout_s=5) as sub:
        assert [next(sub).id for _ in range(2)] == [3, 4]


def test_close_from_another_greenlet_ends_the_iteration(server):
    sub = Subscriber(server.url, "a", poll_timeout_s=30)
    collector = Collector(sub)
    server.wait_waiting(1)
    sub.close()
    collector.greenlet.join(timeout=10)
    assert collector.greenlet.dead and collector.items == []


def test_sse_hands_out_the_same_events_with_the_same_cursors(start_server):
    server = start_server(backlog=5)
    start = first_cursor(server.url, "a", "b")
    publish_ids(server.url, "a", 2)
    publish_ids(server.url, "b", 1)
    with Subscriber(server.url, ["a", "b"], cursor=start, transport="sse") as sse, \
            Subscriber(server.url, ["a", "b"], cursor=start, poll_timeout_s=5) as poll:
        by_sse = [next(sse) for _ in range(3)]
        by_poll = [next(poll) for _ in range(3)]
        public = wire.without_private
        assert [(e.channel, e.id, e.data, public(e.cursor)) for e in by_sse] == \
            [(e.channel, e.id, e.data, public(e.cursor)) for e in by_poll]
        cursor = sse.cursor
    publish_ids(server.url, "a", 1)
    with Subscriber(server.url, ["a", "b"], cursor=cursor, poll_timeout_s=5) as poll:  # SSE's cursor resumes a poll
        assert (next(poll).channel, poll.cursor.split("~")[1:5]) == ("a", ["a", "3", "b", "1"])
    publish_ids(server.url, "a", 10)  # more than the backlog since the cursor: a gap
    with Subscriber(server.url, ["a", "b"], cursor=cursor, transport="sse") as sse:
        assert isinstance(next(sse), Gap) and next(sse).id == 9


def test_an_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="transport"):
        Subscriber("http://127.0.0.1:1", "a", transport="websocket")

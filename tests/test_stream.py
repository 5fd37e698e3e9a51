"""``GET /stream`` (Server-Sent Events) over real HTTP, and its pure framing functions."""
from __future__ import annotations

import http.client
import json
from urllib.parse import quote, urlsplit

import gevent
import pytest

from geventcomet import protocol
from geventcomet.longpoll import PollResult
from geventcomet.stream import event_position, frame, frame_batch, start_positions


class SSE:
    """A minimal EventSource: one streamed GET, read frame by frame with a deadline."""

    def __init__(self, base_url: str, query: str, headers: dict | None = None) -> None:
        url = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        self.conn.request("GET", "/stream?" + query, headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def next(self, timeout: float = 5) -> dict | None:
        """The next frame as ``{"event", "id", "data", "retry", "comments"}``; None at the end."""
        found: dict = {"event": "message", "id": None, "data": None, "retry": None, "comments": []}
        with gevent.Timeout(timeout, AssertionError("no SSE frame in time")):
            while True:
                line = self.response.readline()
                if not line:
                    return None
                line = line.decode().rstrip("\n")
                if line == "":
                    return found
                field, _, value = line.partition(": ")
                if field == "":
                    found["comments"].append(value)
                elif field == "data":
                    found["data"] = json.loads(value)
                else:
                    found[field] = value

    def messages(self, count: int, timeout: float = 5) -> list[dict]:
        """The next ``count`` message frames, skipping heartbeats."""
        got = []
        while len(got) < count:
            item = self.next(timeout)
            assert item is not None, f"stream ended after {got}"
            if item["event"] == "message":
                got.append(item)
        return got

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def streams():
    opened: list[SSE] = []

    def open_stream(base_url: str, query: str, headers: dict | None = None) -> SSE:
        opened.append(SSE(base_url, query, headers))
        return opened[-1]

    yield open_stream
    for sse in opened:
        sse.close()


# -- pure framing ------------------------------------------------------------

def test_event_position_reads_channel_and_seq_from_the_encoded_event():
    assert event_position(protocol.encode_event("a.b:c-1", 42, '{"x":","}')) == ("a.b:c-1", 42)
    assert event_position(protocol.encode_event("@k2J9-_", 7, '"s"')) == ("@k2J9-_", 7)


def test_frame_layout():
    assert frame(b"{}", event="gap", event_id="E~a~1", retry_ms=1500) == \
        b"event: gap\nid: E~a~1\nretry: 1500\ndata: {}\n\n"
    assert frame(b"1") == b"data: 1\n\n"


def test_each_event_id_is_the_cursor_just_after_it():
    events = [protocol.encode_event("a", 3, "1"), protocol.encode_event("a", 4, "2"),
              protocol.encode_event("b", 8, "3")]
    result = PollResult(events, {"a": 4, "b": 8, "@c": 0}, "ep", True)
    positions = start_positions(result)
    assert positions == {"a": 2, "b": 7, "@c": 0}
    text = frame_batch(result, positions).decode()
    assert [line[4:] for line in text.splitlines() if line.startswith("id: ")] == \
        ["ep~a~3~b~7~@c~0", "ep~a~4~b~7~@c~0", "ep~a~4~b~8~@c~0"]
    assert "event: gap" not in text


def test_a_gap_is_marked_before_the_retained_events():
    result = PollResult([protocol.encode_event("a", 9, "1")], {"a": 9}, "new", False)
    positions = start_positions(result)
    assert positions == {"a": 8}  # resuming here loses nothing more
    text = frame_batch(result, positions).decode()
    assert text.startswith('event: gap\ndata: {"recovered":false,"epoch":"new"}\n\n')
    assert "id: new~a~9\n" in text


# -- over HTTP ---------------------------------------------------------------

def test_stream_headers_and_hello(server, streams):
    sse = streams(server.url, "channel=news")
    assert sse.status == 200
    headers = sse.response.headers
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["X-Accel-Buffering"] == "no"
    assert "no-store" in headers["Cache-Control"]
    hello = sse.next()
    assert hello["event"] == "hello"
    assert 1000 <= int(hello["retry"]) <= 3000
    client = hello["data"]["client"]
    assert hello["id"] == f"{hello['data']['epoch']}~news~0~@{client}~0"


def test_events_arrive_at_once_with_cursor_ids(server, comet, streams):
    sse = streams(server.url, "channel=news&channel=sport")
    epoch = sse.next()["data"]["epoch"]
    server.wait_waiting(1)
    comet.notify("news", {"n": 1})
    comet.notify("sport", "goal")
    first, second = sse.messages(2)
    assert first["data"] == {"channel": "news", "id": 1, "data": {"n": 1}}
    assert second["data"] == {"channel": "sport", "id": 1, "data": "goal"}
    assert protocol.decode_cursor(second["id"]).positions["news"] == 1
    assert protocol.decode_cursor(second["id"]).positions["sport"] == 1
    assert protocol.decode_cursor(first["id"]).positions["sport"] == 0
    assert protocol.decode_cursor(first["id"]).epoch == epoch
    assert server.app.stats.delivered >= 2


@pytest.mark.parametrize("how", ["header", "query"])
def test_last_event_id_resumes_with_nothing_lost_and_the_same_client(server, comet, streams, how):
    sse = streams(server.url, "channel=a&channel=b")
    client = sse.next()["data"]["client"]
    server.wait_waiting(1)
    comet.notify("a", 1)
    (seen,) = sse.messages(1)
    sse.close()
    server.wait_waiting(0)
    for channel, data in (("b", 2), ("a", 3), ("b", 4)):
        comet.notify(channel, data)
    if how == "header":
        again = streams(server.url, "channel=a&channel=b", {"Last-Event-ID": seen["id"]})
    else:
        again = streams(server.url, "channel=a&channel=b&last_event_id=" + quote(seen["id"]))
    hello = again.next()
    assert hello["data"]["client"] == client  # the cursor names the private channel
    assert hello["id"] == seen["id"]
    assert sorted(m["data"]["data"] for m in again.messages(3)) == [2, 3, 4]
    comet.notify(client=client, data="private")
    assert again.messages(1)[0]["data"] == {"channel": "@" + client, "id": 1, "data": "private"}


def test_a_header_wins_over_the_query_on_native_reconnect(server, comet, streams):
    comet.notify("a", 1)
    comet.notify("a", 2)
    sse = streams(server.url, "channel=a&last_event_id=0", {"Last-Event-ID": "1"})
    sse.next()
    assert [m["data"]["id"] for m in sse.messages(1)] == [2]


def test_since_zero_replays_the_history(server, comet, streams):
    for i in range(3):
        comet.notify("game", i)
    sse = streams(server.url, "channel=game&since=0")
    assert sse.next()["event"] == "hello"
    assert [m["data"]["data"] for m in sse.messages(3)] == [0, 1, 2]


def test_heartbeat_comment_on_an_idle_stream(server, streams):
    server.app.stream.heartbeat_s = 0.2
    sse = streams(server.url, "channel=quiet")
    sse.next()
    beat = sse.next(timeout=3)
    assert beat["comments"] == ["heartbeat"] and beat["data"] is None


def test_a_trimmed_backlog_is_reported_as_a_gap(start_server, streams):
    server = start_server(backlog=2)
    from tests.helpers import Comet
    comet = Comet(server.url)
    sse = streams(server.url, "channel=news")
    start = sse.next()["id"]
    sse.close()
    server.wait_waiting(0)
    for i in range(1, 6):
        comet.notify("news", i)
    again = streams(server.url, "channel=news", {"Last-Event-ID": start})
    again.next()
    gap = again.next()
    assert gap["event"] == "gap" and gap["data"]["recovered"] is False
    assert [m["data"]["id"] for m in again.messages(2)] == [4, 5]


def test_a_cursor_from_another_epoch_is_a_gap(server, comet, streams):
    comet.notify("news", "kept")
    sse = streams(server.url, "channel=news", {"Last-Event-ID": "deadbeef~news~7"})
    hello = sse.next()
    assert hello["id"].endswith("~news~0~@" + hello["data"]["client"] + "~0")
    assert sse.next()["event"] == "gap"
    assert sse.messages(1)[0]["data"]["data"] == "kept"


def test_shutdown_ends_the_stream_with_reconnect(server, streams):
    sse = streams(server.url, "channel=news")
    sse.next()
    server.wait_waiting(1)
    stopper = gevent.spawn(server.stop)
    assert sse.next()["event"] == "reconnect"
    assert sse.next() is None  # the response ends: EventSource reconnects after retry
    stopper.get(timeout=5)


def test_a_client_that_hangs_up_is_noticed_at_once(server, streams):
    sse = streams(server.url, "channel=news")
    sse.next()
    server.wait_waiting(1)
    assert server.app.service.streams.open == 1
    sse.close()
    server.wait_waiting(0)  # the unpark and the generator's finally run without a switch between
    assert server.app.service.streams.open == 0
    assert server.app.stats.disconnects == 1


def test_errors_before_the_stream_are_plain_json(start_server, streams):
    server = start_server(max_waiting=1)
    bad = streams(server.url, "channel=bad%20name")
    assert bad.status == 400 and "channel" in json.loads(bad.response.read())["error"]
    multi = streams(server.url, "channel=a&channel=b", {"Last-Event-ID": "3"})
    assert multi.status == 400
    first = streams(server.url, "channel=a")
    first.next()
    server.wait_waiting(1)
    full = streams(server.url, "channel=a")
    assert full.status == 503 and full.response.headers["Retry-After"] == "1"

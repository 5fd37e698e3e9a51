"""The client's pure parts, with plain calls: backoff, Retry-After, cursors, poll replies,
SSE frames, the retry policy, and what a hostile or broken server may send."""
import json

import pytest

from geventcomet.client import Backoff, CometClientError, Event, Gap, Unavailable, wire
from geventcomet.client.backoff import retry_after
from geventcomet.client.errors import AuthError, BadRequest, NotFound, PayloadTooLarge, Refused
from geventcomet.client.policy import DONE, RETRY, Attempts, SubscriberCore
from geventcomet.client.sse import FrameParser


def test_full_jitter_stays_under_the_exponential_bound_and_the_cap():
    backoff = Backoff(0.1, 1.0)
    for attempt, bound in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 1.0), (1000, 1.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= bound
        assert max(delays) > bound / 2  # spread over the range, not a constant
    assert all(2.0 <= backoff.delay(5, 2.0) <= 3.0 for _ in range(100))  # Retry-After is a floor


@pytest.mark.parametrize("header, seconds", [("3", 3.0), (" 0 ", 0.0), (None, None), ("-1", None),
                                             ("1.5", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None),
                                             ("9" * 40, None), ("٣", None)])
def test_retry_after_takes_delta_seconds_only(header, seconds):
    assert retry_after(header) == seconds


def test_a_cursor_moves_event_by_event_within_a_reply():
    body = json.dumps({"events": [{"channel": "a", "id": 3, "data": 1}, {"channel": "a", "id": 4, "data": 2},
                                  {"channel": "b", "id": 7, "data": 3}],
                       "cursor": "ep~a~4~b~7~@me~0", "recovered": True, "client": "me", "epoch": "ep"}).encode()
    poll = wire.parse_poll(body)
    assert [after for *_, after in poll.events] == ["ep~a~3~b~6~@me~0", "ep~a~4~b~6~@me~0", "ep~a~4~b~7~@me~0"]
    assert wire.cursor_client("ep~a~4~@me~0") == "me" and wire.without_private("ep~a~4~@me~0") == "ep~a~4"
    assert wire.without_private("ep~@me~0") is None


def test_a_cursor_of_another_form_moves_only_at_the_end_of_a_reply():
    body = json.dumps({"events": [{"channel": "a", "id": 1}, {"channel": "a", "id": 2}], "cursor": "opaque"}).encode()
    assert [after for *_, after in wire.parse_poll(body).events] == [None, "opaque"]
    core = SubscriberCore(("a",), None, Backoff())
    items, _ = core.after_reply(200, None, body, False)
    for item in items:
        core.handed(item)
    assert core.cursor == "opaque"


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]", b'{"events": 1, "cursor": "x"}', b'{"events": []}'])
def test_a_reply_that_is_not_a_poll_reply_raises_a_client_error(body):
    with pytest.raises(CometClientError):
        SubscriberCore(("a",), None, Backoff()).after_reply(200, None, body, False)


def test_a_subscriber_decides_by_status():
    core = SubscriberCore(("a",), "ep~a~1~@me~0", Backoff(0.01, 0.02))
    assert core.client == "me"
    assert core.after_reply(503, "2", b'{"error": "stopping", "reconnect": true, "cursor": "x"}', False)[1] >= 2
    assert core.cursor == "ep~a~1~@me~0"  # its own position is kept: the server's is the same
    assert core.after_reply(401, None, b'{"error": "expired", "auth": "expired"}', True) == ([], 0.0)
    with pytest.raises(AuthError):  # refreshed once already: the second 401 raises
        core.after_reply(401, None, b'{"error": "expired", "auth": "expired"}', True)
    items, _ = core.after_reply(403, None, b'{"error": "no", "auth": "client"}', False)
    assert (items, core.client, core.cursor) == ([], None, "ep~a~1")
    with pytest.raises(AuthError):
        core.after_reply(403, None, b'{"error": "no", "auth": "channel"}', False)
    with pytest.raises(BadRequest):
        core.after_reply(400, None, b'{"error": "bad cursor"}', False)
    gap, _ = core.after_reply(200, None, json.dumps({"events": [], "cursor": "e2~a~0", "recovered": False,
                                                     "epoch": "e2"}).encode(), False)
    assert gap == [Gap("ep~a~1", "e2")] and core.cursor == "e2~a~0"


def test_a_publish_retries_what_retrying_can_fix_within_its_time():
    now = [0.0]
    attempts = Attempts(Backoff(0.1, 0.1), retry_for_s=1.0, clock=lambda: now[0])
    assert attempts.after_reply(200, None, b"{}", False) == (DONE, b"{}")
    outcome, delay = attempts.after_reply(503, "0", b"", False)
    assert outcome == RETRY and 0 <= delay <= 0.1
    for status, kind in [(400, BadRequest), (403, AuthError), (404, NotFound), (413, PayloadTooLarge),
                         (500, Refused), (415, BadRequest)]:
        with pytest.raises(kind):
            attempts.after_reply(status, None, b'{"error": "x"}', False)
    now[0] = 0.95
    with pytest.raises(Unavailable, match="HTTP 502"):
        attempts.after_reply(502, "1", b"", False)  # the wait would end after the deadline


def test_sse_frames_parse_as_the_server_writes_them():
    parser = FrameParser()
    lines = ["event: hello", "id: ep~a~0~@me~0", "retry: 1500", 'data: {"client":"me","epoch":"ep"}', "",
             ": heartbeat", "", "id: ep~a~1~@me~0", 'data: {"channel":"a","id":1,"data":[1,2]}', "",
             "event: gap", 'data: {"recovered":false,"epoch":"e2"}', "", "event: reconnect",
             'data:{"reason":"shutdown"}', ""]
    frames = [frame for frame in map(parser.feed, lines) if frame is not None]
    assert [(f.event, f.id) for f in frames] == [("hello", "ep~a~0~@me~0"), ("message", "ep~a~1~@me~0"),
                                                 ("gap", None), ("reconnect", None)]
    assert frames[0].retry_ms == 1500
    core = SubscriberCore(("a",), None, Backoff())
    assert core.after_frame(frames[0]) == ([], False) and (core.client, core.cursor) == ("me", "ep~a~0~@me~0")
    assert core.after_frame(frames[1]) == ([Event("a", 1, [1, 2], "ep~a~1~@me~0")], False)
    assert core.after_frame(frames[2]) == ([Gap("ep~a~0~@me~0", "e2")], False)
    assert core.after_frame(frames[3]) == ([], True)
    with pytest.raises(CometClientError):
        core.after_frame(FrameParser().feed("data: not json") or next(
            f for f in map(parser.feed, ["data: {oops", ""]) if f))


def test_batch_bodies_and_data_that_is_not_json():
    assert json.loads(wire.batch_body([("a", 1), {"client": "c", "data": 2}])) == {
        "events": [{"channel": "a", "data": 1}, {"client": "c", "data": 2}]}
    with pytest.raises(CometClientError, match="not JSON"):
        wire.notify_body("a", None, {1, 2})
    with pytest.raises(CometClientError):
        wire.batch_ids(b'{"channel": "a", "id": 1}')

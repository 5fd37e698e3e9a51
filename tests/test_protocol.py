"""The wire protocol as pure function calls: no sockets, no gevent."""
import pytest

from geventcomet import protocol
from geventcomet.errors import BadRequest, LengthRequired, PayloadTooLarge, UnsupportedMediaType

LIMITS = dict(default_timeout_s=25.0, max_timeout_s=120.0, max_channels=4)


# centrifuge's clientRecoverTests table, as (since, first, last) -> (after, recovered)
@pytest.mark.parametrize("case, since, first, last, after, recovered", [
    ("empty stream", 0, 1, 0, 0, True),
    ("from position", 8, 1, 10, 8, True),
    ("same position, nothing new", 10, 1, 10, 10, True),
    ("position already gone (trimmed)", 8, 11, 20, 10, False),
    ("position just before the oldest kept", 10, 11, 20, 10, True),
    ("position from the future", 108, 1, 10, 10, False),
    ("new subscriber starts now", None, 1, 10, 10, True),
    ("everything expired by age", 5, 11, 10, 10, False),
])
def test_plan_read_follows_the_recovery_table(case, since, first, last, after, recovered):
    assert protocol.plan_read(since, first, last) == protocol.ReadPlan(after, recovered), case


def test_plan_read_from_another_epoch_delivers_all_kept_and_says_not_recovered():
    assert protocol.plan_read(3, 5, 9, same_epoch=False) == protocol.ReadPlan(4, False)


def test_cursor_round_trips():
    positions = {"news": 7, "a.b:c-d_e": 0, "@client_1": 3}
    text = protocol.encode_cursor("ab12", positions)
    assert protocol.decode_cursor(text) == protocol.Cursor("ab12", positions)


@pytest.mark.parametrize("text", ["ab12~news", "ab12~news~x", "~news~1", "ab12~bad name~1",
                                  "ab12~news~-1", "ab 12~news~1", "ab12~news~99999999999999999999"])
def test_malformed_cursors_are_refused(text):
    with pytest.raises(BadRequest, match="malformed cursor"):
        protocol.decode_cursor(text)


def test_register_query_is_parsed_and_deduplicated():
    req = protocol.parse_register("channel=a&channel=b,a&timeout=2.5&client=me&since=7e~a~3~b~4", **LIMITS)
    assert req.channels == ("a", "b")
    assert req.timeout_s == 2.5
    assert req.client == "me"
    assert req.cursor == protocol.Cursor("7e", {"a": 3, "b": 4})


def test_plain_event_id_is_a_position_in_the_single_channel():
    assert protocol.parse_register("channel=a&since=5", **LIMITS).cursor == protocol.Cursor(None, {"a": 5})
    with pytest.raises(BadRequest, match="exactly one channel"):
        protocol.parse_register("channel=a&channel=b&since=5", **LIMITS)


@pytest.mark.parametrize("query, message", [
    ("", "missing channel"),
    ("channel=", "empty"),
    ("channel=has%20space", "invalid channel name"),
    ("channel=%40someone", "invalid channel name"),
    ("channel=" + "x" * 129, "longer than 128"),
    ("channel=a&channel=b&channel=c&channel=d&channel=e", "too many channels"),
    ("channel=a&timeout=soon", "timeout must be a number"),
    ("channel=a&timeout=-1", "between 0 and 120"),
    ("channel=a&timeout=121", "between 0 and 120"),
    ("channel=a&timeout=nan", "between 0 and 120"),
    ("channel=a&since=zz~a", "malformed cursor"),
    ("channel=a&client=no/slash", "invalid client id"),
])
def test_bad_register_queries_say_what_is_wrong(query, message):
    with pytest.raises(BadRequest, match=message):
        protocol.parse_register(query, **LIMITS)


def test_register_with_only_a_client_is_allowed():
    assert protocol.parse_register("client=me", **LIMITS).channels == ()


def test_event_is_encoded_once_as_compact_json():
    assert protocol.encode_event("a", 3, '{"x":1}') == b'{"channel":"a","id":3,"data":{"x":1}}'
    assert protocol.event_prefix("a") + b'3,"data":1}' == protocol.encode_event("a", 3, "1")


def test_notify_accepts_json_and_forms():
    req = protocol.parse_notify("application/json; charset=utf-8", b'{"channel":"a","data":{"k":[1,2]}}')
    assert (req.channel, req.client, req.data_json) == ("a", None, '{"k":[1,2]}')
    req = protocol.parse_notify("application/x-www-form-urlencoded", b"client=me&data=hi+there&token=t")
    assert (req.channel, req.client, req.data_json, req.token) == (None, "me", '"hi there"', "t")


@pytest.mark.parametrize("content_type, body, error, message", [
    ("application/json", b'{"channel": "a", "data": ', BadRequest, "malformed JSON"),
    ("application/json", b"[1, 2]", BadRequest, "must be an object"),
    ("application/json", b'{"channel": "a"}', BadRequest, "missing data"),
    ("application/json", b'{"data": 1}', BadRequest, "exactly one of channel and client"),
    ("application/json", b'{"channel": "a", "client": "b", "data": 1}', BadRequest, "exactly one"),
    ("application/json", b'{"channel": 5, "data": 1}', BadRequest, "channel must be a string"),
    ("application/json", b'{"channel": "a b", "data": 1}', BadRequest, "invalid channel name"),
    ("text/plain", b"hello", UnsupportedMediaType, "application/json"),
])
def test_bad_notify_bodies_say_what_is_wrong(content_type, body, error, message):
    with pytest.raises(error, match=message):
        protocol.parse_notify(content_type, body)


def test_body_length_is_checked_before_reading():
    assert protocol.check_body_length("10", False, 64) == 10
    with pytest.raises(PayloadTooLarge):
        protocol.check_body_length("65", False, 64)
    with pytest.raises(LengthRequired):
        protocol.check_body_length(None, True, 64)
    with pytest.raises(BadRequest):
        protocol.check_body_length("ten", False, 64)


def resumable(query: str, last_event_id: str | None = None) -> protocol.RegisterRequest:
    return protocol.parse_register(query, default_timeout_s=25, max_timeout_s=120, max_channels=16,
                                   resumable=True, last_event_id=last_event_id)


def test_a_resumable_register_resumes_from_the_header_then_the_query():
    assert resumable("channel=a&since=e~a~1&last_event_id=e~a~2").cursor.positions == {"a": 2}
    assert resumable("channel=a&last_event_id=e~a~2&last_event_id=e~a~3").cursor.positions == {"a": 2}
    assert resumable("channel=a&last_event_id=e~a~2", last_event_id="e~a~5").cursor.positions == {"a": 5}
    assert resumable("channel=a&last_event_id=7").cursor.positions == {"a": 7}  # one channel: a plain id
    with pytest.raises(BadRequest, match="malformed cursor"):
        resumable("channel=a", last_event_id="not a cursor")


def test_a_resumable_register_finds_its_client_in_the_cursor():
    assert resumable("", last_event_id="e~@me~3").client == "me"
    assert resumable("client=you", last_event_id="e~@me~3").client == "you"  # the query's wins
    assert resumable("channel=a", last_event_id="e~@me~3~@other~1").client is None  # two: neither
    with pytest.raises(BadRequest, match="missing channel"):
        resumable("", last_event_id="e~x~3")


def test_last_event_id_means_nothing_to_a_long_poll():
    req = protocol.parse_register("channel=a&last_event_id=e~a~2", default_timeout_s=25, max_timeout_s=120,
                                  max_channels=16, last_event_id="e~a~3")
    assert req.cursor.positions == {} and req.client is None


def test_the_one_json_encoder_is_compact_utf8_and_strict():
    assert protocol.json_bytes({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'.encode()
    assert protocol.json_bytes({"bad": "\ud800"}) == b'{"bad":"?"}'  # never invalid UTF-8
    with pytest.raises(ValueError):
        protocol.json_bytes(float("inf"))

"""Property-based attack on the protocol parsers and the notify body (issue #11, general defences).

For any input the outcome is a parsed request or a :class:`CometError` with a 4xx status,
never another exception; every accepted notify's ``data_json`` parses strictly and
round-trips. A smaller run sends such inputs to a real server: 2xx or 4xx JSON, never a
500, and every body parses strictly (Python without NaN/Infinity, then Node).
"""
from __future__ import annotations

import json
import math

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventcomet import protocol
from geventcomet.errors import CometError

from .test_input_strict import node_rejects, strict_loads

LIMITS = dict(default_timeout_s=25.0, max_timeout_s=120.0, max_channels=4)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates included (hypothesis leaves category Cs out by default).
any_char = st.characters(codec=None, categories=None, exclude_categories=())
odd_text = st.text(alphabet=any_char, max_size=20) | st.sampled_from(
    ["\ud800", "a\udfffb", "\U0001F600", "\u0000", "\u2028", "\ufeff", "\u00b2", "\u0661", "\uff15", "", " "])
wire_chars = st.sampled_from(list("aZ09_.:-~@,&=%+ ") + ["%C2%B2", "%ED%A0%80", "%FF", "%00", "%7E", "%40",
                                                          "\u00b2", "\u0661", "1_0", "e9", "nan", "inf"])
wire_text = st.lists(wire_chars, max_size=24).map("".join)

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
                | st.floats(allow_nan=True, allow_infinity=True) | odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(odd_text, inner, max_size=4), max_leaves=20)


def deep_body(depth: int, kind: str) -> bytes:
    """Nesting built as bytes: Python's own json.dumps would hit the recursion limit first."""
    opening, closing = (b"[", b"]") if kind == "list" else (b'{"k":', b"}")
    return b'{"channel":"fz","data":' + opening * depth + b"1" + closing * depth + b"}"


def is_strict(value: object) -> bool:
    """Would this value encode as strict JSON (finite floats, no lone surrogates)?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in item):
            return False
        if isinstance(item, dict):
            if not all(is_strict(k) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def depth_of(value: object) -> int:
    best, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            best = max(best, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return best


def encode(value: object, ascii_only: bool) -> bytes:
    """What a lenient client sends: Python's json, NaN and surrogates allowed."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def notify_outcome(content_type: str, body: bytes):
    try:
        return protocol.parse_notify(content_type, body)
    except CometError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return exc


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """A body with a few bytes replaced, inserted or dropped: the fuzzer's classic."""
    body = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "brackets"]))
        at = draw(st.integers(0, len(body)))
        if op == "replace" and body:
            body[min(at, len(body) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b'"\\ud800"', b"\xed\xa0\x80",
                                                b"[" * 70, b"{", b"\\", b'"', b"\x00", b"\xff", b",", b"9" * 5000]))
        elif op == "delete":
            del body[at:at + draw(st.integers(1, 8))]
        else:
            body[at:at] = b"[" * draw(st.integers(1, 2000))
    return bytes(body)


def envelope(data: object) -> dict:
    return {"channel": "fz", "data": data}


valid_bodies = json_values.map(lambda v: json.dumps(envelope(v), allow_nan=True).encode("utf-8", "surrogatepass"))
notify_bodies = (
    st.tuples(json_values, st.booleans()).map(lambda t: encode(envelope(t[0]), t[1]))
    | st.tuples(st.integers(60, 5000), st.sampled_from(["list", "dict"])).map(lambda t: deep_body(*t))
    | mutated(valid_bodies)
    | st.binary(max_size=200)
)


@FAST
@given(json_values, st.booleans())
def test_notify_json_is_accepted_exactly_when_strict_and_round_trips(data, ascii_only):
    result = notify_outcome("application/json", encode(envelope(data), ascii_only))
    strict = is_strict(data) and depth_of(data) < protocol.MAX_JSON_DEPTH
    if isinstance(result, CometError):
        assert not strict, (data, result.message)
        return
    assert strict
    assert strict_loads(result.data_json.encode()) == data  # nothing lost or changed, strictly
    assert protocol.encode_event("fz", 1, result.data_json).decode() == \
        '{"channel":"fz","id":1,"data":' + result.data_json + "}"


@FAST
@given(notify_bodies, st.sampled_from(["application/json", "", "application/json; charset=utf-8"]))
def test_any_notify_body_is_a_request_or_a_4xx(body, content_type):
    result = notify_outcome(content_type, body)
    if not isinstance(result, CometError):
        strict_loads(result.data_json.encode())


@FAST
@given(st.lists(st.tuples(wire_text, wire_text), max_size=6) | st.binary(max_size=120).map(
    lambda b: [("data", b.decode("latin-1"))]))
def test_any_form_body_is_a_request_or_a_4xx(fields):
    body = "&".join(f"{k}={v}" for k, v in [("channel", "fz"), *fields]).encode("utf-8", "surrogatepass")
    result = notify_outcome("application/x-www-form-urlencoded", body)
    if not isinstance(result, CometError):
        assert isinstance(strict_loads(result.data_json.encode()), str)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["channel", "since", "timeout", "client", "x"]), wire_text), max_size=8)
       | wire_text.map(lambda q: [("raw", q)]))
def test_any_register_query_is_a_request_or_a_4xx(pairs):
    query = pairs[0][1] if pairs and pairs[0][0] == "raw" else "&".join(f"{k}={v}" for k, v in pairs)
    try:
        req = protocol.parse_register(query, **LIMITS)
    except CometError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert 0 <= req.timeout_s <= LIMITS["max_timeout_s"]
    for channel, seq in req.cursor.positions.items():
        assert channel.isascii() and 0 <= seq < 10 ** 18


@FAST
@given(wire_text | odd_text | st.builds(lambda e, c, s: f"{e}~{c}~{s}", wire_text, wire_text, wire_text))
def test_any_since_is_a_cursor_or_a_4xx(text):
    for parse in (lambda: protocol.parse_since(text, ["a"]), lambda: protocol.decode_cursor(text)):
        try:
            cursor = parse()
        except CometError as exc:
            assert exc.status == 400
            continue
        assert all(type(seq) is int and 0 <= seq < 10 ** 18 for seq in cursor.positions.values())
        if cursor.epoch is not None:  # a cursor the server would have written: it round-trips
            assert protocol.decode_cursor(protocol.encode_cursor(cursor.epoch, cursor.positions)) == cursor


@FAST
@given(wire_text | odd_text | st.floats().map(repr))
def test_any_timeout_is_a_number_in_range_or_a_4xx(text):
    try:
        value = protocol.parse_timeout(text, 25.0, 120.0)
    except CometError as exc:
        assert exc.status == 400
        return
    assert 0 <= value <= 120.0 and text.isascii()


def test_a_real_server_answers_2xx_or_4xx_json_that_parses_strictly(server):
    http = requests.Session()
    bodies: list[bytes] = []

    def check(reply: requests.Response) -> None:
        assert reply.status_code < 500 and reply.status_code != 0, (reply.status_code, reply.text)
        if reply.headers.get("Content-Type", "").startswith("application/json") and reply.content:
            strict_loads(reply.content)
            bodies.append(reply.content)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(notify_bodies, st.sampled_from(["application/json", "application/x-www-form-urlencoded", ""]),
           wire_text)
    def attack(body, content_type, query):
        check(http.post(server.url + "/notify", data=body, headers={"Content-Type": content_type}, timeout=10))
        check(http.get(server.url + "/register?timeout=0&" + query, timeout=10))
        check(http.get(server.url + "/register?channel=fz&since=0&timeout=0", timeout=10))

    attack()
    assert node_rejects(bodies) == []

"""Strict JSON in and out, and ASCII-only numbers (issue #11 items 6 and 14), on a real server.

Every body the server sends as JSON is checked twice: by Python's parser with
``NaN``/``Infinity`` refused, and by Node's ``JSON.parse`` over the raw bytes
(decoded as fatal UTF-8), the parser the shipped browser client uses.
"""
from __future__ import annotations

import base64
import json
import socket
import subprocess

import pytest
import requests

from geventcomet import protocol, strictjson
from geventcomet.errors import BadRequest

from .conftest import require_binary
from .helpers import Comet

#: Reads a JSON array of base64 bodies on stdin; prints the indexes JSON.parse refuses.
NODE_CHECK = """
let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const bad = [];
  JSON.parse(input).forEach((b64, i) => {
    try { JSON.parse(decoder.decode(Buffer.from(b64, 'base64'))); } catch (e) { bad.push([i, String(e)]); }
  });
  process.stdout.write(JSON.stringify(bad));
});
"""


def _refuse(name: str):
    raise ValueError(f"non-standard constant {name}")


def strict_loads(body: bytes) -> object:
    """Python's parser, minus its extensions: NaN, Infinity and -Infinity are errors."""
    value = json.loads(body.decode("utf-8"), parse_constant=_refuse)
    strictjson.check(value, max_depth=10_000)  # and no lone surrogates, no overflowed floats
    return value


def node_rejects(bodies: list[bytes]) -> list:
    """The bodies Node's JSON.parse refuses, as (index, error); [] when all parse."""
    node = require_binary("node")  # skips locally without node, fails in CI
    payload = json.dumps([base64.b64encode(b).decode() for b in bodies])
    out = subprocess.run([node, "-e", NODE_CHECK], input=payload, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def post_raw(url: str, body: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(url + "/notify", data=body, headers={"Content-Type": content_type}, timeout=10)


BAD_JSON = [
    (b'{"channel":"s","data":NaN}', "NaN is not a JSON number"),
    (b'{"channel":"s","data":[1,Infinity]}', "Infinity is not a JSON number"),
    (b'{"channel":"s","data":{"x":-Infinity}}', "-Infinity is not a JSON number"),
    (b'{"channel":"s","data":1e999}', "numbers must be finite"),
    (b'{"channel":"s","data":[-1.5e400]}', "numbers must be finite"),
    (b'{"channel":"s","data":"\\ud800"}', "lone UTF-16 surrogates"),
    (b'{"channel":"s","data":"a\\udfffb"}', "lone UTF-16 surrogates"),
    (b'{"channel":"s","data":{"\\ud800":1}}', "lone UTF-16 surrogates"),
    (b'{"channel":"s","data":"\xed\xa0\x80"}', "lone UTF-16 surrogates"),  # raw, as CESU-8
    (b'{"channel":"s","data":' + b"[" * 990 + b"]" * 990 + b"}", "nested deeper than 64"),
    (b'{"channel":"s","data":' + b"[" * 65_000 + b"}", "nested deeper than 64"),
    (b'{"channel":"s","data":' + b'{"a":' * 64 + b"1" + b"}" * 64 + b"}", "nested deeper than 64"),
]


@pytest.mark.parametrize("body, message", BAD_JSON, ids=[m + str(i) for i, (_, m) in enumerate(BAD_JSON)])
def test_non_strict_json_is_refused_with_400_saying_why(comet, body, message):
    reply = post_raw(comet.url, body)
    assert reply.status_code == 400, reply.text
    assert message in strict_loads(reply.content)["error"]
    assert comet.stats()["published"] == 0


def test_the_nesting_limit_is_exactly_64_levels_counting_the_envelope():
    inside = protocol.MAX_JSON_DEPTH - 1  # the {"channel":..,"data":..} object is level 1
    ok = b'{"channel":"s","data":' + b"[" * inside + b"]" * inside + b"}"
    assert protocol.parse_notify("application/json", ok).data_json == "[" * inside + "]" * inside
    with pytest.raises(BadRequest, match="nested deeper than 64"):
        protocol.parse_notify("application/json", ok.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1))


def test_valid_json_that_python_could_mangle_is_stored_and_served_exactly(comet):
    data = {"emoji": "\U0001F600", "pair": "\ud83d\ude00", "big": 2 ** 70, "neg0": -0.0, "tiny": 5e-324,
            "ctrl": "\u0000\u001f\u2028\u2029", "nested": [[[[{"k": None}]]]], "max": 1.7976931348623157e308}
    body = json.dumps({"channel": "s", "data": data}).encode()  # ASCII with \\u escapes
    assert post_raw(comet.url, body).status_code == 200
    reply = requests.get(comet.url + "/register", params={"channel": "s", "since": 0, "timeout": 0}, timeout=10)
    served = strict_loads(reply.content)["events"][0]["data"]
    assert served == {**data, "pair": "\U0001F600"}
    assert node_rejects([reply.content]) == []


@pytest.mark.parametrize("body", [
    b"channel=s&data=%ED%A0%80",  # a %-escaped surrogate decodes to U+FFFD, never to a surrogate
    b"channel=s&data=%FF%FE",
])
def test_a_form_cannot_smuggle_a_surrogate(comet, body):
    assert post_raw(comet.url, body, "application/x-www-form-urlencoded").status_code == 200
    reply = requests.get(comet.url + "/register", params={"channel": "s", "since": 0, "timeout": 0}, timeout=10)
    assert "\ufffd" in strict_loads(reply.content)["events"][0]["data"]


def test_a_raw_surrogate_in_a_form_body_is_refused(comet):
    reply = post_raw(comet.url, b"channel=s&data=\xed\xa0\x80", "application/x-www-form-urlencoded")
    assert reply.status_code == 400 and "malformed form body" in strict_loads(reply.content)["error"]


@pytest.mark.parametrize("query, message", [
    ("channel=a&since=%C2%B2", "malformed cursor"),  # SUPERSCRIPT TWO passes str.isdigit()
    ("channel=a&since=%D9%A1%D9%A2", "malformed cursor"),  # Arabic-Indic digits pass int()
    ("channel=a&since=%EF%BC%95", "malformed cursor"),  # FULLWIDTH DIGIT FIVE
    ("channel=a&since=1_0", "malformed cursor"),
    ("channel=a&since=+5", "malformed cursor"),
    ("channel=a&since=%205", "malformed cursor"),
    ("channel=a&since=e1~a~%C2%B2", "malformed cursor"),
    ("channel=a&since=e1~a~%D9%A1", "malformed cursor"),
    ("channel=a&timeout=%D9%A1", "timeout must be a number"),
    ("channel=a&timeout=1_0", "timeout must be a number"),
    ("channel=a&timeout=%205", "timeout must be a number"),
    ("channel=a&timeout=infinity", "timeout must be a number"),
    ("channel=a&timeout=-0", "timeout must be a number"),
])
def test_numbers_are_ascii_digits_only(comet, query, message):
    reply = requests.get(comet.url + "/register?" + query, timeout=10)
    assert reply.status_code == 400, reply.text
    assert message in strict_loads(reply.content)["error"]


def test_unicode_digits_in_content_length_are_refused():
    for value in ("\u0661\u0662", "+5", "1_0", " 5", "5 "):
        with pytest.raises(BadRequest, match="invalid Content-Length"):
            protocol.check_body_length(value, False, 1000)
    assert protocol.check_body_length("12", False, 1000) == 12


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_every_kind_of_json_reply_parses_strictly_in_python_and_node(server):
    """Poll replies (events, timeout, gap), notify replies, every error, /stats, /, the shutdown-free set."""
    comet = Comet(server.url)
    bodies: list[bytes] = []

    def get(path: str, **params) -> None:
        reply = requests.get(server.url + path, params=params, timeout=10)
        assert reply.headers["Content-Type"].startswith("application/json"), path
        bodies.append(reply.content)

    unicode = json.dumps({"channel": "k", "data": {"x": "\u00e9\U0001F600"}}, ensure_ascii=False).encode()
    bodies.append(post_raw(server.url, unicode).content)
    bodies.append(post_raw(server.url, b"channel=k&data=%E2%80%A8", "application/x-www-form-urlencoded").content)
    for body, _ in BAD_JSON:  # first, so that a poll would serve whatever of them got stored
        bodies.append(post_raw(server.url, body).content)
    bodies.append(post_raw(server.url, b'{"channel":"k","data":' + b"[" * 900 + b"]" * 900 + b"}").content)
    get("/register", channel="k", since=0, timeout=0)  # events
    get("/register", channel="s", since=0, timeout=0)
    get("/register", channel="k", timeout=0)  # a timeout
    get("/register", channel="k", since="zz99~k~5", timeout=0)  # another epoch: recovered false
    get("/stats")
    get("/")
    for query in ("channel=a&since=%C2%B2", "channel=%ED%A0%80", "channel=" + "x" * 300, "client=%00",
                  "channel=a&timeout=nan", "channel=a&timeout=%FF"):
        bodies.append(requests.get(server.url + "/register?" + query, timeout=10).content)
    bodies.append(post_raw(server.url, b"\xff\xfe{").content)
    bodies.append(post_raw(server.url, b"[]").content)
    bodies.append(post_raw(server.url, b"x", "text/plain").content)
    bodies.append(requests.delete(server.url + "/register", timeout=10).content)
    bodies.append(comet.http.post(server.url + "/notify", json={"client": "nobody", "data": 1}, timeout=10).content)
    # A 404 echoes the path: raw bytes that are not UTF-8, quotes and backslashes.
    raw = _raw_exchange(server.port, b'GET /\xff\xfe"\\\x7f%ED%A0%80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4"), head
    bodies.append(body)
    for body in bodies:
        strict_loads(body)
    assert node_rejects(bodies) == []


def test_json_bytes_refuses_to_emit_nan():
    with pytest.raises(ValueError):
        protocol.json_bytes({"x": float("nan")})


@pytest.mark.parametrize("body", [
    '{"a":"\\ud800"}'.encode("utf-16"),  # an escaped surrogate, in UTF-16: ASCII bytes and NULs
    '{"a":"\\ud800"}'.encode("utf-32-le"),
    b"[1E999]", b"[-2.5e+400]", b"[2e308]", b"[" + b"9" * 400 + b".5]",  # floats that overflow to infinity
    b"[" + b"9" * 210 + b"e99]", b"[" + b"9" * 250 + b".5E+60]",
    b"[" * 65 + b"]" * 65,
    '{"a":"\udc80"}'.encode("utf-8", "surrogatepass"),
])
def test_the_fast_path_never_skips_a_body_the_walk_would_refuse(body):
    # loads() walks the value only when needs_check() says the bytes could hold a fault.
    assert strictjson.needs_check(body)
    with pytest.raises(strictjson.StrictJSONError):
        strictjson.loads(body)


def test_plain_small_bodies_take_the_fast_path_and_still_parse_the_same():
    body = b'{"channel":"c1","data":{"n":[1,2.5,true,null,"x"],"s":"caf\\u00e9"}}'
    assert strictjson.needs_check(body)  # a \u escape: walked
    plain = b'{"channel":"c1","data":{"n":[1,2.5,true,null,"x"],"deep":[[[{"k":-0.25}]]]}}'
    assert not strictjson.needs_check(plain)
    assert strictjson.loads(plain) == json.loads(plain)
    small_exponents = b'{"channel":"/lc-3e4f/7","data":[1e99,-2.5E+12,' + b"9" * 199 + b'.5e99]}'
    assert not strictjson.needs_check(small_exponents)  # finite, whatever the digits
    assert strictjson.loads(small_exponents) == json.loads(small_exponents)

"""Subscriber tokens over real HTTP: every refusal and grant of the contract (briefs/auth_api.md)."""
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geventcomet.auth import Patterns, masked_request_line
from geventcomet.config import Config

from .helpers import Clock

SECRET = "test-token-secret-0123456789abcdef"
SUB = "player-one"


def mint(claims=None, *, key=SECRET, algorithm="HS256", ttl=3600, now=None):
    payload = {"exp": int((now or time.time()) + ttl), **(claims or {})}
    return jwt.encode(payload, key, algorithm=algorithm)


def get(server, path, params=None, token=None, query_token=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    params = dict(params or {})
    if query_token is not None:
        params["token"] = query_token
    return requests.get(server.url + path, params=params, headers=headers, timeout=10, **kwargs)


def poll(server, *channels, **kwargs):
    return get(server, "/register", {"channel": list(channels), "timeout": 0}, **kwargs)


def refused(reply, status, kind):
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = json.loads(reply.text)
    assert body["auth"] == kind and body["error"], body
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    return body["error"]


@pytest.fixture
def tokened(start_server):
    return start_server(token_secret=SECRET, public_channels="news,lobby:*")


def test_no_token_is_401_missing_and_public_channels_need_none(tokened):
    refused(poll(tokened, "game:42"), 401, "missing")
    assert 'realm="geventcomet"' in poll(tokened, "game:42").headers["WWW-Authenticate"]
    assert poll(tokened, "news", "lobby:3").status_code == 200
    refused(poll(tokened, "news", "game:42"), 401, "missing")


def test_a_token_in_the_header_or_the_query_grants_its_channels(tokened):
    token = mint({"channels": ["game:42", "user:17:*"]})
    assert poll(tokened, "game:42", "user:17:inbox", token=token).status_code == 200
    assert poll(tokened, "game:42", query_token=token).status_code == 200
    assert poll(tokened, "game:42", "news", token=token).status_code == 200  # public needs no claim
    assert "user:18:inbox" in refused(poll(tokened, "user:18:inbox", token=token), 403, "channel")
    assert "game:43" in refused(poll(tokened, "game:43", query_token=token), 403, "channel")


def test_the_header_wins_over_the_query(tokened):
    good, other = mint({"channels": ["a"]}), mint({"channels": ["b"]})
    assert poll(tokened, "a", token=good, query_token=other).status_code == 200
    refused(poll(tokened, "b", token=good, query_token=other), 403, "channel")


@pytest.mark.parametrize("make_token", [
    lambda: mint({"channels": ["a"]}, key="another-secret-of-enough-length-xyz"),  # bad signature
    lambda: jwt.encode({"exp": int(time.time()) + 60, "channels": ["a"]}, None, algorithm="none"),
    lambda: jwt.encode({"channels": ["a"]}, SECRET, algorithm="HS256"),  # no exp
    lambda: mint({"channels": "a"}),  # channels not a list
    lambda: mint({"channels": ["a"], "sub": 17}),  # sub not a string
    lambda: "not.a.jwt",
    lambda: "x" * 9000,
], ids=["signature", "alg-none", "no-exp", "channels-type", "sub-type", "garbage", "too-long"])
def test_an_invalid_token_is_401_invalid(tokened, make_token):
    reply = poll(tokened, "a", token=make_token())
    refused(reply, 401, "invalid")
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


def test_an_expired_token_is_401_expired(tokened):
    token = mint({"channels": ["a"]}, ttl=-10)
    assert "expired" in refused(poll(tokened, "a", token=token), 401, "expired")


def test_a_token_is_verified_once_and_refused_when_expired_even_if_cached(tokened):
    tokens = tokened.app.access.tokens
    clock = Clock()
    tokens.clock = clock
    calls = []
    verify = tokens.decode
    tokens.decode = lambda token: calls.append(1) or verify(token)
    token = mint({"channels": ["a"]}, now=clock.now, ttl=60)  # real exp far in the past: the clock decides
    for _ in range(20):
        assert poll(tokened, "a", token=token).status_code == 200
    assert len(calls) == 1 and tokens.cached() == 1
    clock.now += 61
    refused(poll(tokened, "a", token=token), 401, "expired")
    refused(poll(tokened, "a", token=token), 401, "expired")


def test_the_cache_is_bounded(tokened):
    tokens = tokened.app.access.tokens
    tokens.max_entries = 3
    for n in range(5):
        assert poll(tokened, "a", token=mint({"channels": ["a"], "n": n})).status_code == 200
    assert tokens.cached() == 3


def test_the_token_sub_is_the_client_and_proves_its_private_channel(tokened):
    token = mint({"sub": SUB, "channels": ["a"]})
    reply = poll(tokened, "a", token=token)
    assert reply.json()["client"] == SUB
    named = get(tokened, "/register", {"channel": "a", "client": SUB, "timeout": 0}, token=token)
    assert named.json()["client"] == SUB
    other = get(tokened, "/register", {"channel": "a", "client": "someone-else", "timeout": 0}, token=token)
    refused(other, 403, "client")
    no_sub = get(tokened, "/register", {"channel": "a", "client": SUB, "timeout": 0},
                 token=mint({"channels": ["a"]}))
    refused(no_sub, 403, "client")  # a chosen id is no credential


def notify(server, body, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(server.url + "/notify", json=body, headers=headers, timeout=10, **kwargs)


def test_publishing_needs_a_publish_claim_or_the_admin_token(start_server):
    server = start_server(token_secret=SECRET, notify_token="admin-secret")
    mover = mint({"publish": ["game:42:*"]})
    assert notify(server, {"channel": "game:42:moves", "data": 1}, mover).json()["id"] == 1
    assert "game:43" in refused(notify(server, {"channel": "game:43", "data": 1}, mover), 403, "publish")
    refused(notify(server, {"channel": "x", "data": 1}, mint({"channels": ["x"]})), 403, "publish")
    refused(notify(server, {"channel": "x", "data": 1}), 401, "missing")
    refused(notify(server, {"channel": "x", "data": 1}, mint({"publish": ["x"]}, ttl=-5)), 401, "expired")
    refused(notify(server, {"channel": "x", "data": 1}, "garbage"), 401, "invalid")
    assert notify(server, {"channel": "anything", "data": 1}, "admin-secret").status_code == 200
    query = requests.post(server.url + "/notify", params={"token": mover}, json={"channel": "game:42:x", "data": 2},
                          timeout=10)
    assert query.status_code == 200


def test_notifying_a_client_needs_its_private_channel_in_publish(tokened):
    first = poll(tokened, "a", token=mint({"sub": SUB, "channels": ["a"]})).json()
    client = first["client"]
    body = {"client": client, "data": "hi"}
    error = refused(notify(tokened, body, mint({"publish": ["*"]})), 403, "publish")
    assert SUB not in error  # a bare * covers no private channel, and the refusal names none
    assert notify(tokened, body, mint({"publish": [f"@{SUB}"]})).status_code == 200
    assert notify(tokened, body, mint({"publish": ["@*"]})).status_code == 200
    events = get(tokened, "/register", {"channel": "a", "since": first["cursor"], "timeout": 0},
                 token=mint({"sub": SUB, "channels": ["a"]})).json()["events"]
    assert [e["data"] for e in events] == ["hi", "hi"]


def test_the_sse_stream_takes_the_token_in_the_query(tokened):
    token = mint({"channels": ["game:42"]})
    refused(get(tokened, "/stream", {"channel": "game:42"}), 401, "missing")
    refused(get(tokened, "/stream", {"channel": "game:43"}, query_token=token), 403, "channel")
    with get(tokened, "/stream", {"channel": "game:42"}, query_token=token, stream=True) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        assert next(lines) == b"event: hello"


def hs256_by_hand(payload, key: bytes) -> str:
    """An HS256 JWT with any bytes as the secret (PyJWT refuses a PEM key as an HMAC secret)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(payload).encode())
    return (signing_input + b"." + b64(hmac.new(key, signing_input, hashlib.sha256).digest())).decode()


def keypair(kind):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public_pem


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_tokens_signed_by_a_private_key(start_server, tmp_path, algorithm):
    private, public_pem = keypair(algorithm)
    (tmp_path / "key.pem").write_bytes(public_pem)
    server = start_server(token_public_key=str(tmp_path / "key.pem"))
    token = mint({"channels": ["a"]}, key=private, algorithm=algorithm)
    assert poll(server, "a", token=token).status_code == 200
    refused(poll(server, "a", token=mint({"channels": ["a"]})), 401, "invalid")  # HS256 is not accepted here
    # The public key itself as an HMAC secret: the algorithm is pinned per key, so refused.
    forged = hs256_by_hand({"exp": int(time.time()) + 60, "channels": ["a"]}, public_pem)
    refused(poll(server, "a", token=forged), 401, "invalid")


def test_a_bad_public_key_file_is_a_start_up_error(start_server, tmp_path):
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ValueError, match="token_public_key"):
        start_server(token_public_key=str(tmp_path / "key.pem"))


def test_tokens_off_is_open_and_warns_once_at_start(start_server, caplog):
    with caplog.at_level("WARNING", logger="geventcomet.app"):
        server = start_server()
    assert sum("every channel is public" in r.getMessage() for r in caplog.records) == 1
    assert poll(server, "game:42").status_code == 200
    assert poll(server, "game:42", token="whatever").status_code == 200
    assert notify(server, {"channel": "x", "data": 1}).status_code == 200


def test_patterns():
    patterns = Patterns.parse(["game:42", "user:17:*", "@*"])
    assert patterns.covers("game:42") and not patterns.covers("game:421")
    assert patterns.covers("user:17:a") and not patterns.covers("user:1")
    assert patterns.covers("@abc")
    everything = Patterns.parse(["*"])
    assert everything.covers("x") and not everything.covers("@abc")


def test_masked_request_line():
    line = masked_request_line("GET /register?channel=a&token=T0K&tok%65n=T1&since=E~a~1&client=C HTTP/1.1")
    assert line == "GET /register?channel=a&token=***&tok%65n=***&since=***&client=*** HTTP/1.1"


def test_tokens_without_pyjwt_are_a_start_up_error_not_a_500(monkeypatch):
    import builtins

    from geventcomet import auth

    real_import = builtins.__import__

    def no_jwt(name, *args, **kwargs):
        if name == "jwt":
            raise ImportError("No module named 'jwt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jwt)
    with pytest.raises(ValueError, match=r"geventcomet\[jwt\]"):
        auth.TokenVerifier(Config(token_secret="s"))
    auth.TokenVerifier(Config())  # tokens off: PyJWT is not needed

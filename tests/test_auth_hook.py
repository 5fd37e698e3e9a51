"""The authorization hook over real HTTP, and the Flask example docs/security.md quotes."""
import logging

import pytest
import requests
from flask import Flask, request, session
from itsdangerous import BadSignature

from geventcomet.auth import AuthRequest
from geventcomet.auth_hook import load_authorizer
from geventcomet.errors import Forbidden

# -- the Flask example -------------------------------------------------------------------------
# A Flask app that already has users signs its session cookie; geventcomet, mounted beside it
# (same site, so the browser sends the cookie to both), reads that session in its hook.

flask_app = Flask(__name__)
flask_app.secret_key = "flask-session-secret-for-the-test"


@flask_app.post("/login")
def login():
    session["user"] = request.form["user"]
    return "logged in"


def authorize_from_flask_session(req: AuthRequest, channels: tuple[str, ...]) -> list[str]:
    """Grant the lobby to everyone logged in, and ``user:NAME:*`` to NAME only."""
    serializer = flask_app.session_interface.get_signing_serializer(flask_app)
    cookie = req.cookies.get(flask_app.config["SESSION_COOKIE_NAME"])
    try:
        user = serializer.loads(cookie)["user"] if cookie else None
    except (BadSignature, KeyError):
        user = None
    if user is None:
        raise Forbidden("log in first")
    return [c for c in channels if c == "lobby" or c.startswith(f"user:{user}:")]


def flask_session_cookie(user: str) -> str:
    reply = flask_app.test_client().post("/login", data={"user": user})
    name = flask_app.config["SESSION_COOKIE_NAME"]
    return reply.headers["Set-Cookie"].split(";")[0].removeprefix(name + "=")


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def hooked(start_server):
    """Start a server with the authorization hook ``authorize``."""
    return lambda authorize, **overrides: start_server(authorize=authorize, **overrides)


def poll(server, *channels, headers=None, **params):
    return requests.get(server.url + "/register", params={"channel": list(channels), "timeout": 0, **params},
                        headers=headers or {}, timeout=10)


def test_the_flask_session_example(hooked):
    server = hooked(authorize_from_flask_session)
    alice = {"Cookie": f"session={flask_session_cookie('alice')}"}
    assert poll(server, "lobby", "user:alice:inbox", headers=alice).status_code == 200
    bob_inbox = poll(server, "user:bob:inbox", headers=alice)
    assert bob_inbox.status_code == 403 and bob_inbox.json()["auth"] == "channel"
    assert "user:bob:inbox" in bob_inbox.json()["error"]
    stranger = poll(server, "lobby")
    assert stranger.status_code == 403 and stranger.json() == {"error": "log in first", "auth": "channel"}
    forged = poll(server, "lobby", headers={"Cookie": "session=eyJ1c2VyIjoiYWxpY2UifQ.forged.sig"})
    assert forged.status_code == 403


def test_the_hook_sees_the_request_and_is_asked_once_per_registration(hooked):
    seen = []

    def authorize(req, channels):
        seen.append((req, channels))
        return channels

    server = hooked(authorize)
    headers = {"Cookie": "sid=abc; theme=dark", "X-Custom": "v"}
    first = poll(server, "a", "b", headers=headers, extra="q").json()
    for _ in range(10):
        assert poll(server, "a", "b", headers=headers, since=first["cursor"]).status_code == 200
    assert len(seen) == 1
    req, channels = seen[0]
    assert channels == ("a", "b")
    assert req.cookies == {"sid": "abc", "theme": "dark"} and req.headers["x-custom"] == "v"
    assert req.query["extra"] == "q" and req.peer == "127.0.0.1"
    assert poll(server, "a", "c", headers=headers).status_code == 200  # other channels: asked again
    assert len(seen) == 2
    # Without a cookie or token the grant is keyed on the client id the request names.
    client = poll(server, "a").json()["client"]
    calls = len(seen)
    for _ in range(5):
        assert poll(server, "a", client=client).status_code == 200
    assert len(seen) == calls + 1


def test_the_grant_is_asked_again_after_the_client_ttl(hooked):
    calls = []
    server = hooked(lambda req, channels: calls.append(1) or channels, client_ttl_s=200)
    hook = server.app.access.hook
    now = [1000.0]
    hook.clock = lambda: now[0]
    headers = {"Cookie": "sid=1"}
    poll(server, "a", headers=headers)
    poll(server, "a", headers=headers)
    now[0] += 201
    poll(server, "a", headers=headers)
    assert len(calls) == 2


def test_public_channels_pass_the_hook_by(hooked):
    server = hooked(lambda req, channels: (), public_channels="news")
    assert poll(server, "news").status_code == 200
    assert poll(server, "news", "x").status_code == 403


def test_a_hook_that_raises_is_a_403_logged_once_never_a_500(hooked, caplog):
    def broken(req, channels):
        raise RuntimeError("database down")

    server = hooked(broken)
    with caplog.at_level(logging.ERROR, logger="geventcomet"):
        replies = [poll(server, "a", headers={"Cookie": f"sid={n}"}) for n in range(3)]
    assert [r.status_code for r in replies] == [403] * 3
    assert all(r.json()["auth"] == "channel" for r in replies)
    assert sum("authorizer failed" in r.getMessage() for r in caplog.records) == 1
    assert server.app.access.hook.failures == 3


def test_a_refusal_is_not_remembered(hooked):
    allowed = set()
    server = hooked(lambda req, channels: [c for c in channels if c in allowed])
    headers = {"Cookie": "sid=1"}
    assert poll(server, "a", headers=headers).status_code == 403
    allowed.add("a")  # the user logged in meanwhile
    assert poll(server, "a", headers=headers).status_code == 200


def test_the_hook_and_tokens_together(hooked):
    import time

    import jwt
    server = hooked(lambda req, channels: [c for c in channels if c == "hooked"], token_secret="s" * 32)
    token = jwt.encode({"exp": int(time.time()) + 60, "channels": ["claimed"]}, "s" * 32, algorithm="HS256")
    bearer = {"Authorization": f"Bearer {token}"}
    assert poll(server, "claimed", "hooked", headers=bearer).status_code == 200
    assert poll(server, "hooked").status_code == 200
    assert poll(server, "other", headers=bearer).status_code == 403


def test_the_stream_asks_the_hook_too(hooked):
    server = hooked(lambda req, channels: [c for c in channels if c == "ok"])
    assert requests.get(server.url + "/stream", params={"channel": "no"}, timeout=10).status_code == 403
    with requests.get(server.url + "/stream", params={"channel": "ok"}, stream=True, timeout=10) as reply:
        assert reply.status_code == 200 and next(reply.iter_lines()) == b"event: hello"


def grant_everything(req, channels):
    return channels


def test_authorizer_flag_loads_module_function(start_server):
    server = start_server(authorizer="tests.test_auth_hook:grant_everything")
    assert server.app.access.hook.authorize is grant_everything
    assert poll(server, "x").status_code == 200
    for spec in ("nocolon", "tests.test_auth_hook:missing", "no_such_module_xyz:f", "tests.test_auth_hook:__doc__"):
        with pytest.raises(ValueError, match="authorizer"):
            load_authorizer(spec)

"""The browser side of issue #13 (authorization), in real headless Chromium.

- The demo game is played by two pages on a server with tokens on, each page opened
  with its own HS256 token (minted here with PyJWT) in its URL; a page without one is
  refused and says so.
- An EventSource page sends its token as ``?token=``.
- A token *function* that first returns an expired token: the client asks it again on
  the 401 and retries at once (no backoff), then receives its event.
- A stored client id the server never signed (an id from before ids were
  self-certifying) gets 403 ``auth: "client"``: the client forgets it, registers afresh
  and reports a gap for the old private channel.

Every wait is on a page condition with a bound (``Browser.wait``), never a sleep.
"""
from __future__ import annotations

import json
import time

import jwt
import pytest

from .helpers import Comet
from .test_browser import play

SECRET = "browser-test-secret-0123456789abcdef"
ADMIN = "admin-browser-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def mint(channels: list[str], publish: list[str] | None = None, *, expires_in: float = 600, **claims) -> str:
    """An HS256 token as a web app would mint it for one page."""
    payload = {"exp": int(time.time() + expires_in), "channels": channels, **claims}
    if publish is not None:
        payload["publish"] = publish
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture
def token_server(start_server):
    return start_server(token_secret=SECRET, notify_token=ADMIN)


def test_the_demo_game_is_played_with_tokens(token_server, browser):
    channels = ["ttt-sealed"]
    url = token_server.url + "/demo?game=sealed&token="
    browser.open("x", url + mint(channels, channels))
    browser.wait("x", "document.body.dataset.mark === 'X'")
    browser.open("o", url + mint(channels, channels))
    browser.wait("o", "document.body.dataset.mark === 'O'")
    browser.wait("x", "demo.game.players.O !== null")
    # The token is a credential: out of the address (history, Referer) and the opponent's link.
    assert browser.eval("o", "[location.search, document.getElementById('share').href.includes('token')]") == \
        ["?game=sealed", False]
    marks = {"x": "X", "o": "O"}
    play(browser, [("x", 0), ("o", 4), ("x", 1)], marks)
    browser.call("reload", page="o")  # the tab keeps its token (sessionStorage) and replays the game
    assert browser.wait("o", "document.getElementById('moves').textContent === 'X1 O5 X2' && "
                             "document.body.dataset.mark") == "O"
    play(browser, [("o", 8), ("x", 2)], marks)  # X wins on the top row
    for page, verdict in (("x", "X wins: you win!"), ("o", "X wins: you lose")):
        browser.wait(page, "document.body.dataset.winner === 'X'")
        assert browser.eval(page, "document.getElementById('status').textContent") == verdict
        assert browser.eval(page, "demo.gaps") == 0
    # A stranger without a token sees nothing of the game and is told why.
    browser.open("stranger", token_server.url + "/demo?game=sealed")
    browser.wait("stranger", "demo.sub.closed", timeout=15)  # a 401 stops the subscription
    assert browser.eval("stranger", "[demo.sub.state, demo.events.length]") == ["closed", 0]
    # A token for another game cannot publish here.
    other = mint(["ttt-other"], ["ttt-other"])
    status = browser.eval("o", "new GeventComet.Client({token: %s}).publish('ttt-sealed', {type: 'move', "
                               "player: 'p', cell: 5}).then(() => 200, (e) => [e.status, e.body.auth])"
                          % json.dumps(other))
    assert status == [403, "publish"]


def test_an_eventsource_sends_its_token_in_the_query(token_server, browser):
    token = mint(["news"])
    browser.open("sse", token_server.url + "/example?channel=news&transport=eventsource&token=" + token)
    browser.wait("sse", "sub.state === 'open'")
    token_server.wait_waiting(1)
    Comet(token_server.url).notify("news", "for token holders", headers=ADMIN_HEADERS)
    assert browser.wait("sse", "received.length === 1 && received[0]") == \
        {"channel": "news", "id": 1, "data": "for token holders"}
    assert browser.errors("sse") == []


REFRESHING = """([transport, expired, fresh]) => {
  window.asked = 0; window.states = []; window.events = []; window.errors = [];
  const client = new GeventComet.Client({url: '', token: () => Promise.resolve(asked++ === 0 ? expired : fresh)});
  window.probe = client.subscribe(['news'], {transport,
    onState: (state, info) => states.push(state + (info.reason ? ': ' + info.reason : '')),
    onEvent: (e) => events.push(e.data),
    onError: (err) => errors.push([err.status, err.body && err.body.auth])});
  return true;
}"""


@pytest.mark.parametrize("transport", ["longpoll", "eventsource"])
def test_a_token_function_is_asked_again_when_its_token_expired(token_server, browser, transport):
    browser.open("p", token_server.url + "/example")
    expired, fresh = mint(["news"], expires_in=-30), mint(["news"])
    browser.eval("p", f"({REFRESHING})({json.dumps([transport, expired, fresh])})")
    browser.wait("p", "asked === 2", timeout=15)
    token_server.wait_waiting(1)  # the retry with the fresh token is parked (a long-poll or a stream)
    Comet(token_server.url).notify("news", "after the refresh", headers=ADMIN_HEADERS)
    assert browser.wait("p", "events.length === 1 && events[0]") == "after the refresh"
    assert browser.eval("p", "[asked, errors]") == [2, []]
    # Retried at once: the refusal never went through the backoff.
    assert not [s for s in browser.eval("p", "states") if s.startswith("reconnecting")]


def test_a_client_id_the_server_never_signed_is_dropped_and_a_gap_reported(server, browser):
    browser.open("p", server.url + "/example")
    browser.eval("p", """(() => {
      window.gaps = []; window.events = []; window.errors = [];
      window.probe = new GeventComet.Client({url: ''}).subscribe(['news'], {client: 'old-unsigned-id',
        onGap: (info) => gaps.push(info), onEvent: (e) => events.push(e.data),
        onError: (err) => errors.push(err.status)});
      return true;
    })()""")
    gaps = browser.wait("p", "gaps.length && gaps", timeout=15)
    assert gaps == [{"recovered": False, "channel": "@old-unsigned-id",
                     "reason": "client id refused: registering afresh"}], gaps
    server.wait_waiting(1)  # registered afresh: parked without client=
    Comet(server.url).notify("news", "public")
    assert browser.wait("p", "events.length === 1 && events[0]") == "public"
    client = browser.eval("p", "probe.client")
    assert client != "old-unsigned-id" and len(client) == 38, client  # an id the server signed
    server.wait_waiting(1)
    Comet(server.url).notify(client=client, data="just for you")
    assert browser.wait("p", "events.length === 2 && events[1]") == "just for you"
    assert browser.eval("p", "[errors, gaps.length]") == [[], 1]


def test_publish_refreshes_an_expired_token_once(token_server, browser):
    browser.open("p", token_server.url + "/example")
    expired, fresh = mint([], ["news"], expires_in=-30), mint([], ["news"])
    reply = browser.eval("p", f"""(([expired, fresh]) => {{
      window.asked = 0;
      const client = new GeventComet.Client({{token: () => asked++ === 0 ? expired : fresh}});
      return client.publish('news', 'refreshed').then((r) => [r.id, asked]);
    }})({json.dumps([expired, fresh])})""")
    assert reply == [1, 2]
    # A fixed token cannot be refreshed: its 401 is the caller's to handle, at once.
    refused = browser.eval("p", f"new GeventComet.Client({{token: {json.dumps(expired)}}}).publish('news', 1)"
                                ".then(() => 'sent', (e) => [e.status, e.body.auth])")
    assert refused == [401, "expired"]

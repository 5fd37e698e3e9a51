"""The browser side in a real headless Chromium: the demo game, the Notify page, reconnects.

Chromium is Debian's ``/usr/bin/chromium`` driven by playwright-core from npm
(``tests/browser``, installed by ``.ci/install-test-deps``); nothing downloads a
browser. Without them these tests skip locally, and fail in CI. Every wait is on a
page condition with a bound (``Browser.wait``), never a sleep.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import gevent
import pytest
import requests
from gevent.server import StreamServer
from gevent.socket import create_connection

from .chromium import BROWSER_DIR, RECONNECT_S, Browser, require_browser
from .helpers import Comet, ServerProcess


class DropProxy:
    """A TCP proxy whose connections can all be cut at once: a dropped network, for real."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.heads: list[bytes] = []  # what the browser sent that starts a request (its head)
        self._conns: set = set()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handle(self, client, _address) -> None:
        upstream = create_connection(("127.0.0.1", self.target_port))
        self._conns.update((client, upstream))

        def pipe(src, dst, record):
            try:
                while data := src.recv(65536):
                    if record and data[:4] in (b"GET ", b"POST"):
                        self.heads.append(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    try:
                        sock.shutdown(2)
                    except OSError:
                        pass

        back = gevent.spawn(pipe, upstream, client, False)
        pipe(client, upstream, True)
        back.join()
        for sock in (client, upstream):
            self._conns.discard(sock)
            sock.close()

    def drop_all(self) -> None:
        for sock in list(self._conns):
            try:
                sock.shutdown(2)
            except OSError:
                pass

    def stop(self) -> None:
        self.drop_all()
        self.server.stop(timeout=1)


def test_js_pure_parts_under_node():
    if shutil.which("node") is None:
        require_browser()
    out = subprocess.run(["node", "unit.mjs"], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_static_routes_are_served(comet):
    for path, kind in (("/geventcomet.js", "application/javascript"), ("/demo", "text/html"),
                       ("/demo.js", "application/javascript"), ("/example", "text/html")):
        reply = comet.http.get(comet.url + path, timeout=5)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith(kind), path
    assert "GeventComet" in comet.http.get(comet.url + "/geventcomet.js", timeout=5).text


def play(browser: Browser, moves: list[tuple[str, int]], marks: dict[str, str]) -> list[float]:
    """Click each move on its page; wait until the other page shows it. Returns seconds per move."""
    took = []
    for page, cell in moves:
        other = next(p for p in marks if p != page)
        browser.click(page, f"#cell-{cell}")  # waits until the cell is enabled: the page's turn
        started = time.monotonic()
        browser.wait(other, f"document.getElementById('cell-{cell}').textContent === '{marks[page]}'")
        took.append(time.monotonic() - started)
    return took


def test_two_pages_play_a_whole_game_and_a_reload_misses_nothing(server, browser):
    url = server.url + "/demo?game=g1"
    browser.open("x", url)
    browser.wait("x", "document.body.dataset.mark === 'X'")
    browser.open("o", url)
    browser.wait("o", "document.body.dataset.mark === 'O'")
    browser.wait("x", "demo.game.players.O !== null")
    marks = {"x": "X", "o": "O"}
    width, height = browser.eval("x", "(r => [r.width, r.height])(document.getElementById('cell-4')"
                                       ".getBoundingClientRect())")
    assert abs(width - height) <= 1 and width >= 60, (width, height)  # square cells, not 80x128
    assert "monospace" not in browser.eval("x", "getComputedStyle(document.getElementById('moves')).fontFamily")
    took = play(browser, [("x", 4), ("o", 0), ("x", 2)], marks)
    browser.call("reload", page="o")  # a player reloads mid-game: same tab, same player
    assert browser.wait("o", "document.getElementById('moves').textContent === 'X5 O1 X3' && "
                             "document.body.dataset.mark") == "O"
    took += play(browser, [("o", 8), ("x", 6)], marks)  # X wins on the 2-4-6 diagonal
    for page, verdict in (("x", "X wins: you win!"), ("o", "X wins: you lose")):
        browser.wait(page, "document.body.dataset.winner === 'X'")
        assert browser.eval(page, "document.getElementById('status').textContent") == verdict
        assert browser.eval(page, "[...document.querySelectorAll('#board button.win')].map(b => b.id)") == \
            ["cell-2", "cell-4", "cell-6"]
        assert browser.eval(page, "demo.gaps") == 0
        assert browser.errors(page) == []
    assert max(took) < 2, took  # each move reaches the opponent at once, not at a poll interval


def test_a_notify_from_the_notify_page_reaches_subscriber_pages(server, browser):
    browser.open("poll", server.url + "/example?channel=news")
    browser.open("sse", server.url + "/example?channel=news&transport=eventsource")
    browser.wait("sse", "sub.state === 'open'")
    server.wait_waiting(2)  # the long-poll and the stream are both parked
    browser.open("notify", server.url + "/notify")
    browser.call("fill", page="notify", selector="#channel", value="news")
    browser.call("fill", page="notify", selector="#data", value="hello from the form")
    browser.click("notify", "button[type=submit]")
    browser.wait("notify", "document.querySelector('.sent') !== null")  # 303 back to the page
    assert browser.eval("notify", "document.getElementById('channel').value") == "news"  # kept for the next
    assert browser.eval("notify", "document.getElementById('channel').checkValidity()")  # the pattern compiles
    for page in ("poll", "sse"):
        assert browser.wait(page, "received.length === 1 && received[0]") == \
            {"channel": "news", "id": 1, "data": "hello from the form"}
        assert browser.eval(page, "document.querySelector('#log li[data-id=\"1\"]').textContent") == \
            'news #1: "hello from the form"'


def test_eventsource_resumes_after_a_dropped_connection(server, browser):
    proxy = DropProxy(server.port)
    try:
        comet = Comet(server.url)
        browser.open("sse", proxy.url + "/example?channel=news&transport=eventsource")
        browser.wait("sse", "sub.state === 'open'")
        server.wait_waiting(1)
        comet.notify("news", 1)
        browser.wait("sse", "received.length === 1")
        proxy.drop_all()
        server.wait_waiting(0)  # the server saw the hang-up; the browser has not reconnected
        comet.notify("news", 2)
        comet.notify("news", 3)
        got = browser.wait("sse", "received.length >= 3 && received.map(e => e.data)", timeout=RECONNECT_S)
        assert got == [1, 2, 3]
        assert browser.eval("sse", "sub.recovered") is True
        streams = [h for h in proxy.heads if h.startswith(b"GET /stream")]
        assert len(streams) >= 2 and b"last-event-id:" in streams[-1].lower()  # the native resume
        comet.notify("news", 4)
        browser.wait("sse", "received.length === 4")
        assert browser.eval("sse", "received.map(e => e.id)") == [1, 2, 3, 4]
    finally:
        proxy.stop()


def test_a_server_restart_mid_game_loses_no_move(browser, tmp_path):
    try:
        import geventcomet.backends.sqlite  # noqa: F401
    except ImportError:
        pytest.skip("needs the SQLite backend (geventcomet/backends/sqlite.py) for history across a restart")
    backend = f"sqlite:///{tmp_path}/comet.sqlite3"
    first = ServerProcess("--backend", backend)
    second = None
    try:
        port = first.url.rsplit(":", 1)[1]
        url = first.url + "/demo?game=restart"
        browser.open("x", url)  # long-poll
        browser.wait("x", "document.body.dataset.mark === 'X'")
        browser.open("o", url + "&transport=eventsource")
        browser.wait("o", "document.body.dataset.mark === 'O'")
        marks = {"x": "X", "o": "O"}
        play(browser, [("x", 0), ("o", 4)], marks)
        x_player = browser.eval("x", "demo.player")
        assert first.terminate() == 0
        for page in ("x", "o"):
            browser.wait(page, "document.body.dataset.conn === 'reconnecting'")
        second = ServerProcess("--backend", backend, "--port", port)
        # Published before either page is back: they must find it in the history.
        requests.post(second.url + "/notify", timeout=5,
                      json={"channel": "ttt-restart", "data": {"type": "move", "player": x_player, "cell": 1}})
        for page in ("x", "o"):
            browser.wait(page, "document.getElementById('cell-1').textContent === 'X'", timeout=RECONNECT_S)
        play(browser, [("o", 8), ("x", 2)], marks)  # X wins on the top row
        for page in ("x", "o"):
            browser.wait(page, "document.body.dataset.winner === 'X'")
            assert browser.eval(page, "document.getElementById('moves').textContent") == "X1 O5 X2 O9 X3"
            assert browser.eval(page, "demo.gaps") == 0  # the cursor was honoured: nothing lost
            assert browser.eval(page, "demo.events.filter(e => e.data.type === 'move').length") == 5
    finally:
        first.stop()
        if second is not None:
            second.stop()


SUBSCRIBE_AND_RECORD = """(transport) => {
  window.states = []; window.errors = []; window.events = [];
  window.probe = comet.subscribe(['r'], {transport, minDelay: 100, maxDelay: 400,
    onState: (state, info) => states.push({state, delay: info.delay || 0, reason: info.reason || ''}),
    onEvent: (e) => events.push(e.data),
    onError: (err) => errors.push(err.status)});
  return true;
}"""


@pytest.mark.parametrize("transport", ["longpoll", "eventsource"])
def test_a_503_retry_after_is_honoured_before_reconnecting(server, browser, transport):
    browser.open("p", server.url + "/example")
    path = "register" if transport == "longpoll" else "stream"
    # EventSource hides the status; the client asks again with fetch (the probe) to learn it.
    browser.call("route", page="p", pattern=f"**/{path}?**", status=503, times=1 if transport == "longpoll" else 2,
                 headers={"Retry-After": "2", "Content-Type": "application/json"}, body='{"error": "busy"}')
    browser.eval("p", f"({SUBSCRIBE_AND_RECORD})('{transport}')")
    retry = browser.wait("p", "states.find(s => s.state === 'reconnecting')")
    assert 2000 <= retry["delay"] < 2000 + 400, retry  # Retry-After plus at most the jittered backoff
    server.wait_waiting(1, timeout=10)  # then it does come back
    Comet(server.url).notify("r", "after")
    assert browser.wait("p", "events.length === 1 && events[0]") == "after"
    assert browser.eval("p", "errors") == []


@pytest.mark.parametrize("transport", ["longpoll", "eventsource"])
def test_a_403_stops_the_subscription(server, browser, transport):
    browser.open("p", server.url + "/example")
    path = "register" if transport == "longpoll" else "stream"
    browser.call("route", page="p", pattern=f"**/{path}?**", status=403,
                 headers={"Content-Type": "application/json"}, body='{"error": "origin not allowed"}')
    browser.eval("p", f"({SUBSCRIBE_AND_RECORD})('{transport}')")
    assert browser.wait("p", "errors.length && errors") == [403]
    assert browser.eval("p", "[probe.state, probe.closed, states.some(s => s.state === 'reconnecting')]") == \
        ["closed", True, False]


def test_publish_sends_the_token_and_a_401_is_not_retried(start_server, browser):
    server = start_server(notify_token="s3cret")
    browser.open("p", server.url + "/example")
    assert browser.eval("p", "comet.publish('x', 1).then(() => 'sent', (e) => e.status)") == 401
    reply = browser.eval("p", "new GeventComet.Client({token: 's3cret'}).publish('x', {a: 1})")
    assert reply == {"channel": "x", "id": 1, "woken": 0}
    assert server.app.stats.published == 1

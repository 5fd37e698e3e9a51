"""The browser side of issue #11 (items 6 and 16), in real headless Chromium.

- The shipped pages run under their Content-Security-Policy with no violation, and
  the policy really refuses code that is not theirs.
- ``geventcomet.js`` given replies (long-poll) or events (EventSource) that it
  cannot parse neither spins nor skips: it keeps its cursor, reports the error and
  backs off with growing delays. The broken replies come from a tiny WSGI server
  here (a broken proxy or server); its request times are compared with the delays
  the client reported, with ``Math.random`` pinned so the delays are exact.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from urllib.parse import parse_qs

import pytest
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from .helpers import Comet

#: Unparseable replies served before a good one.
BAD_REPLIES = 5
#: minDelay 100, maxDelay 400, random() = 0.5: the client must wait exactly these (ms).
EXPECTED_DELAYS = [50, 100, 200, 200, 200]
GOOD_EVENT = {"channel": "r", "id": 1, "data": "ok"}
GOOD_REPLY = {"events": [GOOD_EVENT], "cursor": "e1~r~1", "timeout": False, "recovered": True,
              "client": "c1", "epoch": "e1"}
#: Each is a 200 a strict parser (JSON.parse) refuses, or JSON that is not a poll reply.
BROKEN_REPLIES = [
    b'{"events":[{"channel":"r","id":1,"data":NaN}],"cursor":"e1~r~1","timeout":false,'
    b'"recovered":true,"client":"c1","epoch":"e1"}',
    b'{"events":[',
    b"<html>proxy error</html>",
    b'{"events":[null],"cursor":"e1~r~1","client":"c1"}',
    b'{"events":[{"channel":"r","id":1.5,"data":1}],"cursor":"e1~r~1","client":"c1"}',
]

SUBSCRIBE = """(transport) => {
  Math.random = () => 0.5;
  window.states = []; window.events = []; window.errors = [];
  window.probe = new GeventComet.Client({url: ''}).subscribe(['r'], {transport, minDelay: 100, maxDelay: 400,
    onState: (state, info) => {
      if (state !== 'reconnecting') return;
      states.push({delay: info.delay, attempt: info.attempt, reason: info.reason,
                   status: info.error && info.error.status, unusable: !!(info.error && info.error.unusable)});
    },
    onEvent: (e) => events.push(e),
    onError: (err) => errors.push(err.message)});
  return true;
}"""


class BrokenServer:
    """Serves a page with geventcomet.js, then BAD_REPLIES broken replies, then a good one."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str | None]] = []  # (arrival, the since it carried)
        self.good_sent = Event()
        self.release = Event()  # held requests end when set
        self.script = resources.files("geventcomet").joinpath("static", "geventcomet.js").read_bytes()
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b'<!doctype html><title>t</title><script src="/geventcomet.js"></script>']
        if path == "/geventcomet.js":
            start_response("200 OK", [("Content-Type", "application/javascript")])
            return [self.script]
        if path not in ("/register", "/stream"):  # /favicon.ico
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no"]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        since = (query.get("since") or query.get("last_event_id") or [None])[0]
        count = len(self.requests)
        self.requests.append((time.monotonic(), since))
        if count > BAD_REPLIES:  # after the good reply: a long-poll that waits
            self.release.wait(30)
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error":"test over"}']
        if path == "/register":
            body = BROKEN_REPLIES[count] if count < BAD_REPLIES else json.dumps(GOOD_REPLY).encode()
            if count == BAD_REPLIES:
                self.good_sent.set()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store")])
        return self._stream(count)

    def _stream(self, count: int):
        yield b'retry: 60000\nevent: hello\nid: e1~r~0\ndata: {"client":"c1"}\n\n'
        if count < BAD_REPLIES:
            yield b"id: e1~r~1\ndata: " + BROKEN_REPLIES[count].replace(b"\n", b" ") + b"\n\n"
        else:
            yield b"id: e1~r~1\ndata: " + json.dumps(GOOD_EVENT).encode() + b"\n\n"
            self.good_sent.set()
        self.release.wait(30)  # the client closes a broken stream itself

    def stop(self) -> None:
        self.release.set()
        self.server.stop(timeout=2)


@pytest.mark.parametrize("transport", ["longpoll", "eventsource"])
def test_unusable_replies_back_off_are_reported_and_skip_nothing(browser, transport):
    broken = BrokenServer()
    try:
        browser.open("p", broken.url + "/")
        browser.eval("p", f"({SUBSCRIBE})('{transport}')")
        assert broken.good_sent.wait(30), f"only {len(broken.requests)} requests arrived"
        assert browser.wait("p", "events.length === 1 && events[0]") == GOOD_EVENT
        states = browser.eval("p", "states")
        assert [s["delay"] for s in states] == EXPECTED_DELAYS, states
        assert [s["attempt"] for s in states] == [1, 2, 3, 4, 5]
        for state in states:
            assert state["unusable"] and state["status"] == 200 and "unusable" in state["reason"], state
        times = [t for t, _ in broken.requests[:BAD_REPLIES + 1]]
        for gap, delay in zip((b - a for a, b in zip(times, times[1:])), EXPECTED_DELAYS):
            assert gap * 1000 >= delay - 2, (gap, delay)  # the retry really waited: no spin
        # The cursor never moved past what could not be read (e1~r~1 is the broken event's position).
        assert "e1~r~1" not in {since for _, since in broken.requests[:BAD_REPLIES + 1]}
        assert browser.eval("p", "[probe.lastError, probe.cursor, probe.closed, errors]") == \
            [None, "e1~r~1", False, []]
    finally:
        broken.stop()


def test_the_pages_run_under_their_csp_and_it_refuses_foreign_code(server, browser):
    comet = Comet(server.url)
    browser.open("ex", server.url + "/example?channel=csp")
    server.wait_waiting(1, timeout=10)  # its long-poll is parked: the page's script ran
    comet.notify("csp", {"n": 1})
    assert browser.wait("ex", "received.length === 1 && received[0].data") == {"n": 1}
    # Code that is not the pages' own does not run: an injected inline script, eval, a handler attribute.
    foreign = """() => new Promise((done) => {
      const seen = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        seen.push(e.violatedDirective); if (seen.length === 3) done(seen.sort());
      });
      setTimeout(() => done(seen.sort()), 5000);  // a bound, should a violation never come
      const s = document.createElement('script'); s.textContent = 'window.pwned = 1'; document.body.appendChild(s);
      // (from a task of the page's own: code evaluated by the test driver is exempt from CSP)
      setTimeout(() => { try { eval('window.pwned = 2'); } catch (e) { /* EvalError under CSP */ } }, 0);
      const img = document.createElement('img'); img.setAttribute('onerror', 'window.pwned = 3');
      img.src = 'data:,x'; document.body.appendChild(img);
    })"""
    violations = browser.eval("ex", f"({foreign})()")
    assert len(violations) == 3 and all(v.startswith("script-src") for v in violations), violations
    assert browser.eval("ex", "window.pwned === undefined") is True
    for path in ("/notify", "/demo?game=csp"):
        browser.open(path, server.url + path)
    browser.wait("/demo?game=csp", "document.body.dataset.mark === 'X'")
    for page in ("/notify", "/demo?game=csp"):
        logs = browser.errors(page)
        assert not [line for line in logs if "Content Security Policy" in line or "Refused" in line], logs
    assert not [line for line in browser.errors("ex") if "Refused to apply" in line]
    assert browser.eval("/notify", "getComputedStyle(document.body).maxWidth") != "none"  # its <style> applied


def test_a_page_cannot_be_framed_even_by_its_own_origin(server, browser):
    browser.open("framer", server.url + "/example")
    # A page on the server's own origin (served by the browser's router) that frames the Notify page:
    # same-origin, so the frame's document would be readable if it had loaded.
    browser.call("route", page="framer", pattern="**/framer", status=200, headers={"Content-Type": "text/html"},
                 body='<iframe id="f" src="/notify"></iframe>')
    browser.call("goto", page="framer", url=server.url + "/framer")
    loaded = browser.eval("framer", """(() => new Promise((done) => {
      const f = document.getElementById('f');
      const check = () => { let form = null;
        try { form = f.contentDocument && f.contentDocument.getElementById('notify'); } catch (e) { /* opaque */ }
        done(!!form); };
      f.addEventListener('load', check);
      if (f.contentDocument && f.contentDocument.readyState === 'complete' && f.contentDocument.URL !== 'about:blank') {
        check();
      }
      setTimeout(check, 5000);  // a bound, should no load event come
    }))()""")
    assert loaded is False

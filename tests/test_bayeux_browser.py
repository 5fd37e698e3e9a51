"""The Faye browser client (the demo page, geventcomet/static/bayeux*) in a real headless Chromium:
same-origin long-polling, JSONP callback-polling (from another origin too), and CORS long-polling."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests
from gevent.pywsgi import WSGIServer

import geventcomet

from .bayeux_fixtures import Bayeux
from .chromium import RECONNECT_S

STATIC = Path(geventcomet.__file__).parent / "static"
FILES = {"/bayeux.html": ("bayeux.html", "text/html; charset=utf-8"),
         "/bayeux-faye.js": ("bayeux-faye.js", "application/javascript; charset=utf-8"),
         "/bayeux-demo.js": ("bayeux-demo.js", "application/javascript; charset=utf-8")}


def serve_demo(app) -> None:
    """The demo's routes, until ``pages.STATIC`` lists them (a lead's change: see the report)."""
    for path, (name, content_type) in FILES.items():
        if path not in app.routes:
            body = (STATIC / name).read_bytes()
            app.routes[path] = {"GET": lambda environ, body=body, content_type=content_type:
                                (200, body, content_type, ())}


@pytest.fixture
def other_origin():
    """A plain web server on another port (another origin) serving the demo page, no CSP."""
    def app(environ, start_response):
        name, content_type = FILES.get(environ["PATH_INFO"], (None, None))
        if name is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no"]
        start_response("200 OK", [("Content-Type", content_type)])
        return [(STATIC / name).read_bytes()]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.stop()


def exchange(server, browser, page: str, channel: str) -> None:
    """A raw Bayeux client and the page each publish once; both see both."""
    browser.wait(page, "window.bayeuxDemo && window.bayeuxDemo.subscribed", RECONNECT_S)
    raw = Bayeux(server.url)
    raw.start(channel)
    assert raw.publish(channel, {"from": "raw"})["successful"]
    browser.wait(page, "window.bayeuxDemo.received.length >= 1", RECONNECT_S)
    browser.eval(page, "window.bayeuxDemo.publish({from: 'page'})")
    browser.wait(page, "window.bayeuxDemo.received.length >= 2 && window.bayeuxDemo.published === 1", RECONNECT_S)
    assert browser.eval(page, "window.bayeuxDemo.received") == [{"from": "raw"}, {"from": "page"}]
    got = [m["data"] for m in raw.connect()[:-1]]
    assert got == [{"from": "raw"}, {"from": "page"}]
    assert [e for e in browser.errors(page) if "404" not in e] == []  # 404: the page's favicon


def test_the_demo_page_long_polls_same_origin(server, browser):
    serve_demo(server.app)
    browser.open("same", server.url + "/bayeux.html?channel=/browser/same")
    exchange(server, browser, "same", "/browser/same")
    assert server.app.bayeux.stats.callback_polls == 0


def test_callback_polling_from_another_origin(start_server, browser, other_origin):
    server = start_server()
    endpoint = server.url + "/bayeux"
    browser.open("jsonp", f"{other_origin}/bayeux.html?channel=/browser/jsonp&transport=callback-polling"
                          f"&server={endpoint}")
    exchange(server, browser, "jsonp", "/browser/jsonp")
    assert server.app.bayeux.stats.callback_polls > 0


def test_cors_long_polling_from_another_origin(start_server, browser, other_origin):
    server = start_server(cors_origins=other_origin)
    preflight = requests.options(server.url + "/bayeux", timeout=10, headers={
        "Origin": other_origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "pragma"})
    assert preflight.headers.get("Access-Control-Allow-Credentials") == "true"
    assert "pragma" in preflight.headers.get("Access-Control-Allow-Headers", "").lower()
    browser.open("cors", f"{other_origin}/bayeux.html?channel=/browser/cors&server={server.url}/bayeux")
    exchange(server, browser, "cors", "/browser/cors")  # Faye's first handshake may go by JSONP; then CORS

"""The pages a person looks at: the Notify page, the static files (JS client, demo).

Routes (see :func:`static_routes`):

- ``GET /geventcomet.js``: the dependency-free client library;
- ``GET /demo`` (+ ``/demo.js``): two-player tic-tac-toe over Comet;
- ``GET /example``: the smallest page using the library;
- ``GET /notify``: a form to publish an event, with the channels and their waiters (with an
  admin token configured, only for its holder: :func:`login_page` otherwise).

The files are package data (``geventcomet/static/``), read once. ``geventcomet.js`` carries
the placeholder :data:`JS_VERSION_PLACEHOLDER` where its ``version`` goes; it is served with
``geventcomet.__version__`` there, the one version source.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from html import escape
from importlib import resources
from string import Template
from typing import Callable
from urllib.parse import parse_qs

from .replies import Reply
from .service import CometService

#: URL path -> (file in geventcomet/static, content type).
STATIC = {
    "/geventcomet.js": ("geventcomet.js", "application/javascript; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "application/javascript; charset=utf-8"),
    "/example": ("example.html", "text/html; charset=utf-8"),
    "/bayeux.html": ("bayeux.html", "text/html; charset=utf-8"),
    "/bayeux-faye.js": ("bayeux-faye.js", "application/javascript; charset=utf-8"),
    "/bayeux-demo.js": ("bayeux-demo.js", "application/javascript; charset=utf-8"),
}
HTML = "text/html; charset=utf-8"
#: Stands for the package's version in ``static/geventcomet.js``; replaced when served.
JS_VERSION_PLACEHOLDER = b"@GEVENTCOMET_VERSION@"
#: Channels listed on the Notify page (the backend's first ones, and every one waited on).
NOTIFY_PAGE_CHANNELS = 200


def static_routes() -> dict[str, Callable[[dict], Reply]]:
    """``{path: handler}`` for the static files."""
    routes = {}
    for path, (name, content_type) in STATIC.items():
        body = _read(name)
        if name == "geventcomet.js":
            body = body.replace(JS_VERSION_PLACEHOLDER, package_version().encode())
        routes[path] = _static_handler(body, content_type)
    return routes


def package_version() -> str:
    """``geventcomet.__version__``. Read from the imported package (this module is inside it,
    so it is imported): importing it by name here would close a cycle geventcomet -> app -> pages."""
    return str(getattr(sys.modules.get("geventcomet"), "__version__", "unknown"))


def _static_handler(body: bytes, content_type: str) -> Callable[[dict], Reply]:
    def serve(environ: dict) -> Reply:
        return (200, body, content_type, ())
    return serve


def notify_page(service: CometService, query_string: str, *, token_field: bool) -> Reply:
    """The Notify page; after its form was sent (``?sent=C&id=N&woken=W``) it says so."""
    channels = service.channels(NOTIFY_PAGE_CHANNELS)
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{waiters}</td></tr>" for name, waiters in channels)
    query = parse_qs(query_string)
    sent = ""
    if "sent" in query:
        sent = (f'<p class="sent">Sent event #{escape(query.get("id", ["?"])[0])} to '
                f'{escape(query["sent"][0])}, waking {escape(query.get("woken", ["0"])[0])}.</p>')
    page = _template("notify.html").substitute(
        rows=rows or '<tr><td colspan="2">no channels yet</td></tr>', sent=sent,
        channel=escape(query.get("sent", [""])[0]),  # the next event most often goes to the same one
        waiting=_requests_waiting(service.hub.waiting), token_field=(
            '<label>Token <input name="token" type="password"></label>' if token_field else ""))
    return (200, page.encode(), HTML, ())


def login_page(status: int) -> Reply:
    """The Notify page's form without the channels, for a browser that has not given the
    admin token yet (a correct submit sets the cookie that shows the whole page)."""
    page = _template("notify.html").substitute(
        rows='<tr><td colspan="2">send the admin token with a notification to see the channels</td></tr>',
        sent="", channel="", waiting="? requests",
        token_field='<label>Token <input name="token" type="password" required></label>')
    return (status, page.encode(), HTML, ())


def _requests_waiting(count: int) -> str:
    return f"{count} request" if count == 1 else f"{count} requests"


def _read(name: str) -> bytes:
    return resources.files("geventcomet").joinpath("static", name).read_bytes()


@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    return Template(_read(name).decode("utf-8"))

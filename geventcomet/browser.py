"""Routes for browser clients: the JS library, the EventSource stream and the demo (issue #6).

``install_routes(app)`` adds to ``app.routes``:

- ``GET /stream``: Server-Sent Events (:mod:`geventcomet.stream`);
- ``GET /geventcomet.js``: the dependency-free client library;
- ``GET /demo`` (+ ``/demo.js``): two-player tic-tac-toe over Comet;
- ``GET /example``: the smallest page using the library.

The static files are package data (``geventcomet/static/``), read once here.
"""
from __future__ import annotations

from importlib import resources

from .stream import StreamEndpoint

#: URL path -> (file in geventcomet/static, content type).
STATIC = {
    "/geventcomet.js": ("geventcomet.js", "application/javascript; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "application/javascript; charset=utf-8"),
    "/example": ("example.html", "text/html; charset=utf-8"),
}


def install_routes(app) -> None:
    """Add the browser routes to ``app.routes``; ``app.stream`` is the SSE endpoint."""
    app.stream = StreamEndpoint(app)
    app.routes["/stream"] = {"GET": app.stream}
    static = resources.files("geventcomet").joinpath("static")
    for path, (name, content_type) in STATIC.items():
        app.routes[path] = {"GET": _static_handler(static.joinpath(name).read_bytes(), content_type)}


def _static_handler(body: bytes, content_type: str):
    def serve(environ: dict):
        return (200, body, content_type, ())
    return serve

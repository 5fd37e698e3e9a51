"""The WSGI entry point for other servers, such as gunicorn's gevent worker.

    GEVENTCOMET_BACKEND=redis://127.0.0.1:6379/0 \\
        gunicorn -k gevent -w 4 -b 0.0.0.0:8080 'geventcomet.wsgi:app'

Configuration comes from the ``GEVENTCOMET_*`` environment variables (see
``geventcomet serve --help``). The app is built on first use, inside each worker
process (after gunicorn's gevent worker has monkey-patched), so every worker has
its own backend connections and its own pub/sub listener. With more than one
worker the backend must be shared (Redis): with ``memory`` a notify would only
wake clients held by the worker that received it. ``create_app()`` is the same
thing as a factory: ``gunicorn 'geventcomet.wsgi:create_app()'``.
"""
from __future__ import annotations

import logging

from .app import CometApp, make_app
from .config import Config

log = logging.getLogger(__name__)

_app = None


def create_app() -> CometApp:
    """Build the app from the environment; each response names its worker process."""
    from .workers import worker_headers
    config = Config.from_env()
    if config.backend.split(":", 1)[0].lower() != "redis":
        log.warning("backend %s is not shared between processes: run ONE worker with it, "
                    "or use redis:// for several", config.backend)
    comet = make_app(config)
    comet.extra_headers = worker_headers()
    return comet


def __getattr__(name: str):
    # Lazy, so importing this module (or gunicorn's master) builds nothing.
    global _app
    if name in ("app", "application"):
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

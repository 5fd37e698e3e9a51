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

import functools
import logging

from .app import CometApp, make_app
from .backends import backend_class
from .config import Config
from .security import mask_credentials

log = logging.getLogger(__name__)


def create_app(config: Config | None = None) -> CometApp:
    """Build the app (from the environment unless ``config`` is given); each response names
    its worker process."""
    from .workers import worker_headers  # not at the top: gunicorn's master imports no server
    config = config if config is not None else Config.from_env()
    if not backend_class(config.backend).shared:
        log.warning("backend %s is not shared between processes: run ONE worker with it, "
                    "or use redis:// for several", mask_credentials(config.backend))
    comet = make_app(config)
    comet.extra_headers = worker_headers()
    return comet


#: The app of this process, built on first use.
built_app = functools.cache(create_app)


def __getattr__(name: str):
    # Lazy, so importing this module (or gunicorn's master) builds nothing.
    if name in ("app", "application"):
        return built_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

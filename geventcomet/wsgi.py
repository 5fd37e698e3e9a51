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

**Graceful stop under gunicorn.** This module is also a gunicorn config module:

    gunicorn -k gevent -c python:geventcomet.wsgi ... 'geventcomet.wsgi:app'

gives the hooks :func:`post_worker_init` and :func:`worker_int`, so that a worker being
stopped (``SIGTERM`` to the arbiter or the worker, a ``HUP`` reload, ``SIGINT``/``SIGQUIT``)
answers every held poll at once with the reconnect reply carrying its cursor, as
``geventcomet serve`` does, instead of holding it until ``--graceful-timeout`` and then
dropping the connection. Measured fact (gunicorn 27's gevent worker): ``SIGTERM`` only
sets ``worker.alive = False``; the worker then stops accepting and waits up to
``--graceful-timeout`` for its connections to finish, and no hook runs before that wait,
so the hook wraps the worker's ``SIGTERM`` handler. A worker recycled by
``--max-requests`` gets no signal and is not drained.
"""
from __future__ import annotations

import functools
import logging
import signal
from typing import Any

import gevent

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


def drain() -> None:
    """Answer every poll held by this process with "reconnect"; later polls get it at once."""
    if built_app.cache_info().currsize:  # an app never built holds nothing
        log.info("stopping: held polls are told to reconnect")
        built_app().hub.shutdown()


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: the worker's ``SIGTERM`` handler also drains (see the module docstring)."""
    stop = worker.handle_exit

    def handle_exit(signum: int, frame: Any) -> None:
        stop(signum, frame)
        gevent.spawn(drain)  # out of the signal handler, as gunicorn's own handle_quit does

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)


def worker_int(worker: Any) -> None:
    """gunicorn hook on ``SIGINT``/``SIGQUIT``: drain before the worker exits (it then waits 0.1 s)."""
    drain()

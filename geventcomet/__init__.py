"""geventcomet: a Comet server where every waiting client is one cheap gevent greenlet.

Public API: :func:`make_app` builds the WSGI application from a :class:`Config`;
:func:`serve` runs it on gevent's WSGI server with graceful shutdown. Importing
this package has no side effects (no monkey-patching; ``geventcomet.cli`` does that), and
imports neither gevent nor the server until one of these names is used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import CometApp, make_app
    from .config import Config

#: The one version source: the package metadata, ``--version`` and the JS client read it.
__version__ = "0.1.0"
__all__ = ["CometApp", "Config", "make_app", "serve", "__version__"]


def __getattr__(name: str) -> Any:
    """``CometApp``, ``make_app`` and ``Config`` are imported on first use, so that importing a
    subpackage that needs no server (``geventcomet.client``) does not import gevent."""
    if name in ("CometApp", "make_app"):
        from . import app
        return getattr(app, name)
    if name == "Config":
        from .config import Config
        return Config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT: one process (:mod:`geventcomet.server`), or with
    ``config.workers > 1`` a supervisor of that many (:mod:`geventcomet.supervisor`).

    If the program has not set up logging, the log goes to stderr at ``config.log_level``
    in ``config.log_format`` (so the "listening on" line is seen); otherwise its set-up is kept.
    """
    from .logs import ensure_logging
    ensure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from .supervisor import run_workers
        return run_workers(config)
    from .server import serve as serve_one
    return serve_one(config)

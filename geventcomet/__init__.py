"""geventcomet: a Comet server where every waiting client is one cheap gevent greenlet.

Public API: :func:`make_app` builds the WSGI application from a :class:`Config`;
:func:`serve` runs it on gevent's WSGI server with graceful shutdown. Importing
this package has no side effects (no monkey-patching; ``geventcomet.cli`` does that).
"""
from .app import CometApp, make_app
from .config import Config

#: The one version source: the package metadata, ``--version`` and the JS client read it.
__version__ = "0.1.0"
__all__ = ["CometApp", "Config", "make_app", "serve", "__version__"]


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT: one process (:mod:`geventcomet.server`), or with
    ``config.workers > 1`` a supervisor of that many (:mod:`geventcomet.supervisor`)."""
    if config.workers > 1:
        from .supervisor import run_workers
        return run_workers(config)
    from .server import serve as serve_one
    return serve_one(config)

"""geventcomet: a Comet server where every waiting client is one cheap gevent greenlet.

Public API: :func:`make_app` builds the WSGI application from a :class:`Config`;
:func:`serve` runs it on gevent's WSGI server with graceful shutdown. Importing
this package has no side effects (no monkey-patching; ``geventcomet.cli`` does that).
"""
from .app import CometApp, make_app
from .config import Config

__version__ = "0.1.0"
__all__ = ["CometApp", "Config", "make_app", "serve", "__version__"]


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT; see :mod:`geventcomet.server`."""
    from .server import serve as _serve
    return _serve(config)

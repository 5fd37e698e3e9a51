"""Routes for browser clients: the JS library, the EventSource stream and the demo (issue #6).

Being built; ``install_routes`` adds its routes to the app's route table.
"""
from __future__ import annotations


def install_routes(app) -> None:
    """Add the browser routes to ``app.routes``."""

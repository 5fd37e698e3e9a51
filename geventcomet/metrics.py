"""``GET /metrics``: the Prometheus text format (skeleton; being built)."""
from __future__ import annotations

from .access import Access
from .errors import NotFound
from .replies import Reply
from .service import CometService


class MetricsEndpoint:
    """Serves ``/metrics`` for one process (or, with workers, the whole server)."""

    def __init__(self, service: CometService, access: Access) -> None:
        self.service = service
        self.access = access

    def serve(self, environ: dict) -> Reply:
        """The exposition, read at scrape time from the counters the server keeps."""
        raise NotFound("/metrics is not served yet")

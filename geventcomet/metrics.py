"""``GET /metrics``: the Prometheus text format, read at scrape time from the counters the server keeps.

One process (``geventcomet serve``, a test server, a gunicorn worker) serves its own numbers,
read when the scrape comes (:func:`geventcomet.metrics_numbers.read_numbers`). A worker of
``--workers N`` serves the whole server's numbers instead: the sum its supervisor keeps of
every worker, live and retired, which the supervisor writes to a small file named in the
worker's environment (:mod:`geventcomet.metrics_workers`). Every worker reads the same file,
so a scrape gives the same numbers whichever worker answers, at most one report interval old.

``/metrics`` needs the admin token when one is configured (as ``/stats`` does); the
``--metrics-port`` listener (:mod:`geventcomet.metrics_port`) serves it on loopback without one.
The series are named in :mod:`geventcomet.metrics_families` and listed in docs/metrics.md.
"""
from __future__ import annotations

import os

from . import metrics_workers
from .access import Access
from .errors import Unavailable
from .metrics_families import CONTENT_TYPE, exposition
from .metrics_numbers import Numbers, read_numbers
from .replies import Reply
from .service import CometService

#: The service of the last endpoint built in this process: a worker's reporter reads it.
_process_service: list[CometService] = []


def process_numbers(*, probe_backend: bool = True) -> Numbers | None:
    """This process's numbers (None before its app is built)."""
    return read_numbers(_process_service[-1], probe_backend=probe_backend) if _process_service else None


class MetricsEndpoint:
    """Serves ``/metrics`` for one process (or, with workers, the whole server)."""

    def __init__(self, service: CometService, access: Access) -> None:
        self.service = service
        self.access = access
        #: Set in a worker of ``--workers N``: where the supervisor keeps the server's sum.
        self.merged_file = os.environ.get(metrics_workers.FILE_ENV) or None
        _process_service[:] = [service]

    def numbers(self) -> Numbers:
        """What a scrape shows now: the server's sum in a worker, else this process's."""
        if self.merged_file is None:
            return read_numbers(self.service)
        merged = metrics_workers.read_merged(self.merged_file)
        if merged is None:
            raise Unavailable("the supervisor has not gathered the workers' numbers yet; retry")
        return merged

    def exposition(self) -> bytes:
        """The Prometheus text format of :meth:`numbers` (also what ``--metrics-port`` serves)."""
        return exposition(self.numbers)

    def serve(self, environ: dict) -> Reply:
        """``GET /metrics``: the admin token is needed when one is configured (401/403)."""
        self.access.check_admin(environ)
        return (200, self.exposition(), CONTENT_TYPE, ())

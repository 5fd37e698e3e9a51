"""Bayeux 1.0 (CometD, Faye) over the service: ``/bayeux`` and every path under it.

Skeleton: the route is wired in :mod:`geventcomet.app`; the transport is being built.
"""
from __future__ import annotations

from ..access import Access
from ..errors import NotFound
from ..replies import Reply
from ..service import CometService


class BayeuxEndpoint:
    """Answers ``POST``/``GET`` on ``/bayeux`` and ``/bayeux/*``."""

    def __init__(self, service: CometService, access: Access) -> None:
        self.service = service
        self.access = access

    def handle(self, environ: dict) -> Reply:
        """One Bayeux request: a JSON array of messages in, a JSON array of replies out."""
        raise NotFound("Bayeux is not served yet")

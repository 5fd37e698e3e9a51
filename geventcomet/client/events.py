"""What a subscriber hands out: :class:`Event` and :class:`Gap`."""
from __future__ import annotations

from typing import Any, NamedTuple


class Event(NamedTuple):
    """One event: its channel, its id (consecutive per channel) and its data (decoded JSON).

    ``cursor`` is the subscriber's position just after this event.
    """

    channel: str
    id: int
    data: Any
    cursor: str | None = None


class Gap(NamedTuple):
    """The server could not give everything after ``cursor`` (``recovered: false``): the
    backlog no longer reached back that far, or history was lost (a new ``epoch``). Events
    that follow are still in order and never repeated; what fell in the gap is gone."""

    cursor: str | None
    epoch: str

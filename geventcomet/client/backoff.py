"""Retry timing, with no I/O: full-jitter exponential backoff, ``Retry-After``, a deadline.

Full jitter (a uniform draw between 0 and the exponential bound) spreads the clients a
restart disconnected at once, so they do not come back in one wave. A server's
``Retry-After`` is a floor: the wait is that many seconds plus a (small) jitter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``base`` seconds doubled per attempt up to ``cap``; the draw is uniform below that bound."""

    base: float = 0.05
    cap: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        bound = min(self.cap, self.base * (2 ** min(attempt, 30)))
        jitter = random.uniform(0, bound)
        if retry_after is None:
            return jitter
        return retry_after + min(jitter, max(self.base, retry_after / 2))


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds only; a date or junk reads as None)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        return None
    return float(value)

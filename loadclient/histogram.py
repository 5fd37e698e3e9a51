"""Latency histogram: log-spaced buckets, so it is small, cheap to add to and mergeable.

Keeping every sample would cost memory proportional to events received (millions in
a long run) and would have to be shipped between processes. Buckets 2 % wide give
percentiles within 2 %; the maximum is kept exactly, because "time until the last
client has it" is the maximum.
"""
from __future__ import annotations

import math

#: Bucket width: each bucket's upper bound is this factor times the previous one.
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
#: Samples below 10 µs all land in bucket 0 (loopback cannot resolve less).
FLOOR_S = 1e-5


class Histogram:
    """Counts of durations (seconds) in log-spaced buckets, plus the exact max."""

    __slots__ = ("buckets", "count", "max_s")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        index = 0 if seconds <= FLOOR_S else int(math.log(seconds / FLOOR_S) / _LOG_GROWTH) + 1
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: "Histogram") -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) in seconds: the upper bound of its bucket, capped at max."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(FLOOR_S * GROWTH ** index, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float]:
        """``{"p50", "p90", "p99", "max"}`` in milliseconds, rounded to 0.01 ms."""
        out = {f"p{p}": round(self.percentile(p) * 1000, 2) for p in (50, 90, 99)}
        out["max"] = round(self.max_s * 1000, 2)
        return out

    def to_dict(self) -> dict:
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "count": self.count,
                "max_s": self.max_s}

    @classmethod
    def from_dict(cls, data: dict) -> "Histogram":
        hist = cls()
        hist.buckets = {int(k): v for k, v in data["buckets"].items()}
        hist.count = data["count"]
        hist.max_s = data["max_s"]
        return hist

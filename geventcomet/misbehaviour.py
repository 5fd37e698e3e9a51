"""Client misbehaviour, counted by kind and logged at most once per kind per interval.

A hostile or broken client can repeat the same mistake thousands of times a
second (a slowloris army, a flood of malformed heads). A log line or traceback per
occurrence would turn that into a disk-filling attack of its own, so every such
event is *noted* here instead: the count goes to ``/stats`` (``misbehaviour``) and
the log gets one WARNING line per kind per :data:`LOG_INTERVAL_S`, saying how many
happened since the last line. Never a traceback: these are the client's faults.

The counters are per process, like the rest of ``/stats``.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("geventcomet.clients")

#: At most one log line per kind in this many seconds.
LOG_INTERVAL_S = 10.0


class MisbehaviourLog:
    """Counts per kind, and the rate-limited log line."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        #: kind -> occurrences since start.
        self.counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when, count then)

    def note(self, kind: str, detail: str = "") -> None:
        """Count one occurrence of ``kind``; log it unless this kind was logged recently.

        ``detail`` must never hold a secret (tokens, cursors of private channels).
        """
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self._clock()
        last = self._logged.get(kind)
        if last is not None and now - last[0] < self.interval_s:
            return
        since = count - (last[1] if last is not None else 0)
        self._logged[kind] = (now, count)
        log.warning("client misbehaviour %s: %d since the last report%s", kind, since,
                    f" (latest: {detail})" if detail else "")


#: The process's log; the server, the handler and the transports note here.
clients = MisbehaviourLog()


def note(kind: str, detail: str = "") -> None:
    """Shorthand for ``clients.note(kind, detail)``."""
    clients.note(kind, detail)

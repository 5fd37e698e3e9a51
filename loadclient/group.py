"""The fake clients of one process: ramp them up, remove some, finish them all.

A :class:`ClientGroup` owns one :class:`~loadclient.report.Report` that its
clients update, and knows when all the clients asked for are polling
(:attr:`ClientGroup.ready`). Worker processes (``--procs``) each run one group.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from .fakeclient import FakeClient
from .httpconn import Connection, bearer_header, split_url
from .report import Report

log = logging.getLogger(__name__)

#: At most this many clients connect and take their first cursor at once when the
#: ramp is "as fast as possible": more only overflows the server's listen queue,
#: and each SYN dropped there costs a 1 s retransmit.
CONNECT_CONCURRENCY = 200


def channels_for(index: int, channels: Sequence[str], per_client: int) -> tuple[str, ...]:
    """The channels client number ``index`` polls: ``per_client`` consecutive ones, round-robin."""
    count = len(channels)
    return tuple(channels[(index * per_client + j) % count] for j in range(min(per_client, count)))


class ClientGroup:
    """Fake clients against ``url`` on ``channels``; see the module docstring.

    :param first_index: number of this group's first client among all processes, so
        channels are spread the same way whatever the process count.
    :param source: local address each connection binds to (None: the kernel's choice).
    :param think_s: pause after each reply before the next poll.
    :param floor_for: ``channel -> sequence`` whose publish had begun (the notifier's),
        for clients that join while notifies are running; None means 0.
    """

    #: The fake client each ramp starts (the Bayeux mode's group starts Bayeux sessions).
    client_class: type[FakeClient] = FakeClient

    def __init__(self, url: str, channels: Sequence[str], *, channels_per_client: int = 1,
                 poll_timeout_s: float = 20.0, first_index: int = 0, source: str | None = None,
                 floor_for: Callable[[str], int] | None = None, think_s: float = 0.0,
                 token: str | None = None) -> None:
        self.host, self.port = split_url(url)
        self.channels = list(channels)
        self.channels_per_client = channels_per_client
        self.poll_timeout_s = poll_timeout_s
        #: pause after each reply before polling again (0: at once)
        self.think_s = think_s
        #: ``Authorization: Bearer`` header text sent with every poll ('' without a token)
        self.auth_header = bearer_header(token)
        self.source = source
        self.floor_for = floor_for or (lambda channel: 0)
        self.report = Report()
        self.clients: list[FakeClient] = []
        self.connect_slots = BoundedSemaphore(CONNECT_CONCURRENCY)
        #: Set once every client asked for has its first cursor (or has failed).
        self.ready = Event()
        #: Set when the notifier has published its end markers.
        self.finishing = Event()
        self._next_index = first_index
        self._started = 0
        self._ramps: list[gevent.Greenlet] = []
        self._t0 = time.monotonic()

    def add(self, count: int, rate: float = 0.0) -> gevent.Greenlet:
        """Start ``count`` clients, ``rate`` per second (0: as fast as the connect slots allow)."""
        self.report.clients += count
        self.ready.clear()
        ramp = gevent.spawn(self._ramp, count, rate)
        self._ramps.append(ramp)
        return ramp

    def _ramp(self, count: int, rate: float) -> None:
        start = time.monotonic()
        for i in range(count):
            if self.finishing.is_set():
                self.report.clients -= count - i
                self._check_ready()
                return
            if rate > 0:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)  # pacing the ramp
            channels = channels_for(self._next_index, self.channels, self.channels_per_client)
            self._next_index += 1
            client = self.client_class(self, Connection(self.host, self.port, self.source), channels)
            self.clients.append(client)
            client.greenlet = gevent.spawn(client.run)

    def client_started(self) -> None:
        self._started += 1
        if self._started == self.report.clients:
            self.report.ready_s = time.monotonic() - self._t0
        self._check_ready()

    def client_ready(self) -> None:
        self._check_ready()

    def _check_ready(self) -> None:
        if self._started >= self.report.clients:
            self.ready.set()

    def remove(self, count: int) -> int:
        """Stop the ``count`` newest live clients; their open requests count as abandoned."""
        removed = 0
        for client in reversed(self.clients):
            if removed == count:
                break
            if client.greenlet is not None and not client.greenlet.dead:
                client.removed = True
                client.greenlet.kill(block=True, timeout=5)
                removed += 1
        self.clients = [c for c in self.clients if not c.removed]
        return removed

    @property
    def live(self) -> int:
        return sum(1 for c in self.clients if c.greenlet is not None and not c.greenlet.dead)

    def finish(self, final_seqs: dict[str, int], timeout_s: float) -> Report:
        """After the end markers: let clients collect them, then count what each still owes.

        Clients still waiting after ``timeout_s`` are killed; their open request stays
        counted as unanswered.
        """
        self.finishing.set()
        for ramp in self._ramps:
            ramp.kill()
        greenlets = [c.greenlet for c in self.clients if c.greenlet is not None]
        gevent.joinall(greenlets, timeout=timeout_s)
        stuck = [g for g in greenlets if not g.dead]
        if stuck:
            log.warning("%d clients still waiting after %.1f s: stopping them", len(stuck), timeout_s)
            gevent.killall(stuck, timeout=5)
        for client in self.clients:
            if not client.failed:  # a failed client is reported as such, not as losses
                self.report.lost += client.owed(final_seqs)
        return self.report

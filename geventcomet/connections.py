"""The open connections' greenlets: plain greenlets, spawned, joined and killed at a stop.

gevent's ``StreamServer`` spawns each connection as a :class:`gevent.Greenlet` (through a
:class:`gevent.pool.Pool`). A Comet server parks one per waiting client, and a ``Greenlet``
costs more than the plain ``greenlet`` under it. Measured, one parked greenlet blocked on a
``Waiter``: RSS per greenlet over 20,000, ``gevent.spawn`` 7.44 KB and ``gevent.spawn_raw``
6.60 KB (``bench/RESULTS-perf.md``); by ``tracemalloc``, the object with its links and
arguments 840 against 496 bytes, and the saved C stack 2,256 against 1,904 bytes (Cython's
``Greenlet.run`` is on it, calling the function).

The server needs no more of a ``Greenlet`` than :class:`Connections` gives: the set of
live ones (for a graceful stop), a bounded wait until they are gone, and a kill. A plain
greenlet's uncaught exception goes to the hub, which logs it; the handler catches every
exception a client can cause, so none is expected there.
"""
from __future__ import annotations

from typing import Any, Callable

import gevent
from gevent import GreenletExit
from gevent.event import Event
from greenlet import greenlet

Handle = Callable[[Any, Any], None]


class Connections:
    """The connection greenlets of one server; see the module docstring."""

    def __init__(self) -> None:
        self.live: set[greenlet] = set()
        self._none_left = Event()
        self._none_left.set()

    def __len__(self) -> int:
        return len(self.live)

    def spawn(self, handle: Handle, close: Handle, sock: Any, address: Any) -> greenlet:
        """Run ``handle(sock, address)`` and then ``close(sock, address)`` in a new greenlet."""
        connection = gevent.spawn_raw(self._serve, handle, close, sock, address)
        self.live.add(connection)
        self._none_left.clear()
        return connection

    def _serve(self, handle: Handle, close: Handle, sock: Any, address: Any) -> None:
        # Called as the greenlet's own function: no star call in a Python frame, which in
        # CPython 3.11 re-enters the interpreter from C and saves ~512 more bytes of C stack
        # per parked greenlet.
        try:
            handle(sock, address)
        finally:
            try:
                close(sock, address)
            finally:
                self._forget(gevent.getcurrent())

    def _forget(self, connection: greenlet) -> None:
        self.live.discard(connection)
        if not self.live:
            self._none_left.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every connection has ended, at most ``timeout`` seconds; True if they have."""
        for connection in [c for c in self.live if c.dead]:  # killed before it ever ran
            self._forget(connection)
        return bool(self._none_left.wait(timeout))

    def kill(self, timeout: float | None = None) -> bool:
        """Raise ``GreenletExit`` in every connection, then :meth:`join` them."""
        for connection in list(self.live):
            gevent.kill(connection, GreenletExit)
        return self.join(timeout)

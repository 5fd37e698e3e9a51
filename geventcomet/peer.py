"""One client connection's socket, as the handler reads and writes it: deadlines, pipelined bytes.

:class:`Peer` is the connection's reader and writer on the lean path, the raw reader
(through :class:`PeerReader`) under the small ``io.BufferedReader`` the handler makes
when a request takes pywsgi's path (in place of ``sock.makefile``), and the object a
held request watches. It is a slotted plain object, not an ``io.RawIOBase``: every IO
object carries a ``__dict__``, and a parked client holds its Peer for the whole wait
(measured: ~350 bytes less per parked client, ``bench/RESULTS-perf.md``).

- **Read deadlines.** :meth:`Peer.arm` sets an absolute deadline for every read
  until :meth:`Peer.disarm`: the head (``header_timeout_s``), the body
  (``body_timeout_s`` from the end of the head), the keep-alive idle time. A read
  that would wait past it raises the armed exception; bytes already received are
  always served. A read first tries the (non-blocking) socket; only if nothing is
  there does it wait, on the connection's one read watcher and a timer for the
  time left. gevent's own ``recv`` with a socket timeout raised and caught
  ``EWOULDBLOCK`` and built a ``gevent.Timeout`` for every wait: ~5 % of the
  server's CPU in the long-poll cycle (py-spy, ``bench/RESULTS-perf.md``).
- **Pipelined bytes while held.** A held poll watches the socket to notice a FIN
  or RST at once. Bytes that arrive meanwhile (a pipelined request) are taken off
  the socket into a small pushback buffer, so the watch can stay on and a later FIN
  is still seen (libev's io watcher is level-triggered: unread bytes would wake it
  forever). The next request is read from the pushback first. Past
  :data:`MAX_PIPELINED_WHILE_HELD` bytes the client is dropped.
- **Write deadline.** :meth:`Peer.send_all` tries one non-blocking ``send`` (a
  reply usually fits in the kernel's buffer); only if the kernel did not take
  everything does it wait, at most ``write_timeout_s`` for the whole rest (gevent's
  ``sendall`` honours the socket timeout for the whole call, measured), then
  aborts the connection with RST so the kernel frees its queue too.
"""
from __future__ import annotations

import io
import socket
import struct
import time
from typing import Any

from gevent import get_hub
from gevent.hub import Waiter

from .misbehaviour import note

#: Bytes a held request may receive (a pipelined next request) before the client is dropped.
MAX_PIPELINED_WHILE_HELD = 8 * 1024


class HeaderTimeout(Exception):
    """The request head did not arrive within ``header_timeout_s``."""


class IdleTimeout(Exception):
    """A keep-alive connection sent nothing for ``keepalive_timeout_s``."""


class BodyTimeout(TimeoutError):
    """The request body did not arrive within ``body_timeout_s`` of its head.

    An ``OSError``, so that pywsgi's discard of an unread body takes it as a socket
    error (and the handler closes the connection) instead of a server fault.
    """


class SlowReader(TimeoutError):
    """A reply was not taken by the client within ``write_timeout_s``."""


class Peer:
    """The client socket as a raw reader with deadlines and pushback; see the module docstring."""

    __slots__ = ("sock", "address", "_raw", "_pending", "_deadline", "_expired", "_watcher", "broken")

    def __init__(self, sock: Any, address: Any = None) -> None:
        self.sock = sock
        self.address = address
        # gevent's socket would wait on EWOULDBLOCK; the held-request check must never wait.
        self._raw = getattr(sock, "_sock", sock)
        self._pending = bytearray()
        self._deadline: float | None = None
        self._expired: type[BaseException] = HeaderTimeout
        self._watcher: Any = None  # the read watcher, made on the first wait
        #: A read or write failed mid-request: the byte stream is out of step, close it.
        self.broken = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def arm(self, seconds: float, expired: type[BaseException]) -> None:
        """From now on, a read that would wait past ``seconds`` from now raises ``expired``."""
        self._deadline = time.monotonic() + seconds
        self._expired = expired

    def disarm(self) -> None:
        self._deadline = None

    def readinto(self, buffer: Any) -> int:
        pending = self._pending
        if pending:
            count = min(len(buffer), len(pending))
            buffer[:count] = pending[:count]
            del pending[:count]
            return count
        while True:
            try:
                return int(self._raw.recv_into(buffer))
            except BlockingIOError:
                self._wait_readable()

    def read_some(self, size: int) -> bytes:
        """What is there: the pushback if any, else one ``recv`` of at most ``size`` bytes
        (waiting under the armed deadline); ``b""`` when the client closed."""
        pending = self._pending
        if pending:
            self._pending = bytearray()
            return bytes(pending)
        while True:
            try:
                return bytes(self._raw.recv(size))
            except BlockingIOError:
                self._wait_readable()

    def read_watcher(self) -> Any:
        """The connection's read watcher (a libev io watcher, stopped): one per connection,
        for its reads and for a held request's watch for a hang-up."""
        if self._watcher is None:
            self._watcher = get_hub().loop.io(self.fileno(), 1)
        return self._watcher

    def _wait_readable(self) -> None:
        """Wait until the socket is readable; past the armed deadline, raise its exception."""
        deadline, timer = self._deadline, None
        loop = get_hub().loop
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.broken = True
                raise self._expired()
            timer = loop.timer(left)
        waiter = Waiter()
        watcher = self.read_watcher()
        watcher.start(waiter.switch, True)
        if timer is not None:
            timer.start(waiter.switch, False)
        try:
            readable = waiter.get()
        finally:
            watcher.stop()
            if timer is not None:
                timer.close()
        if not readable:
            self.broken = True
            raise self._expired()

    def unread(self, data: bytes) -> None:
        """Give ``data`` back: the next read returns it first."""
        self._pending[:0] = data

    def readable_while_held(self) -> bool:
        """Called when a held request's socket is readable: True if the client is gone.

        Pipelined bytes are kept for the next request (so the watch may stay on);
        a client that sends more than :data:`MAX_PIPELINED_WHILE_HELD` is gone too.
        """
        room = MAX_PIPELINED_WHILE_HELD + 1 - len(self._pending)
        try:
            data = self._raw.recv(room, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        self._pending += data
        if len(self._pending) > MAX_PIPELINED_WHILE_HELD:
            note("pipelined-while-held", f"{self.address}: over {MAX_PIPELINED_WHILE_HELD} bytes")
            self.broken = True
            return True
        return False

    def send_all(self, data: bytes | bytearray | memoryview, timeout_s: float) -> None:
        """Send all of ``data`` within ``timeout_s``, or drop the client (:class:`SlowReader`)."""
        sock = self.sock
        try:
            sent = sock.send(data, 0, 0.0)  # timeout 0: take what the kernel takes, never wait
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        sock.settimeout(timeout_s)
        try:
            sock.sendall(memoryview(data)[sent:])
        except TimeoutError:
            self.abort()
            note("slow-reader", f"{self.address}: a {len(data)}-byte reply not taken in {timeout_s} s")
            raise SlowReader(f"reply not taken within {timeout_s} s") from None
        finally:
            sock.settimeout(None)

    def abort(self) -> None:
        """Make the coming close a reset: the kernel drops what it still queues for this client."""
        self.broken = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def close(self) -> None:
        """The reader is done; the socket is the handler's to close."""
        self._pending = bytearray()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None


class PeerReader(io.RawIOBase):
    """A :class:`Peer` as the ``io.RawIOBase`` that ``io.BufferedReader`` reads (pywsgi's path)."""

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.peer.fileno()

    def readinto(self, buffer: Any) -> int:
        return self.peer.readinto(buffer)

    def close(self) -> None:
        super().close()
        self.peer.close()

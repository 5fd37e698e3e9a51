"""The handler's lean path: polls and notifies served without pywsgi's per-request machinery.

:class:`LeanRequests` is a mixin of :class:`geventcomet.handler.CometHandler`. Its
:meth:`~LeanRequests.lean_request` reads what the client sent in one ``recv`` (the
keep-alive wait and the head deadline are the same as pywsgi's path), and if
:func:`geventcomet.fasthead.parse_request` takes it whole, calls the app's
``respond()`` and writes the reply in one ``send``. Otherwise it gives the bytes back
to the connection's :class:`~geventcomet.peer.Peer` and answers :data:`PYWSGI_PATH`:
the handler then makes pywsgi's buffered reader and reads the same request the old way,
under the head deadline that was already running (a slow head gets no extra time).

Measured (``bench/RESULTS-perf.md``): a parked poll no longer holds pywsgi's 1 KiB
buffered reader (1,224 bytes by ``tracemalloc``) nor pywsgi's per-request attributes,
and a poll or notify skips pywsgi's line reader, environ and ``start_response``.
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import gevent

from .errors import ClientGone
from .fasthead import lean_environ, parse_request
from .peer import HeaderTimeout, IdleTimeout, Peer
from .replies import http_date, status_line_bytes

#: :meth:`LeanRequests.lean_request`'s answer "take pywsgi's path with what was read".
PYWSGI_PATH = object()
#: One lean read takes at most this much: a whole head and a notify's body, usually
#: (anything longer takes pywsgi's path).
LEAN_READ_BYTES = 8 * 1024


class ReplyHead(NamedTuple):
    """A reply's head up to its Content-Length, and what its headers say of the connection."""

    start: bytes  # status line, Content-Type, Cache-Control and the reply's own headers
    closes: bool  # the headers hold "Connection: close"
    names_connection: bool  # the headers hold a Connection header


#: (status, content type, headers) -> :class:`ReplyHead`: a server sends a few kinds of reply
#: (a poll's, a notify's, ...), so each head is encoded once; emptied when full.
_REPLY_HEADS: dict[tuple[int, str, tuple[tuple[str, str], ...]], ReplyHead] = {}
REPLY_HEADS_MAX = 256


def reply_head(status: int, content_type: str, headers: tuple[tuple[str, str], ...]) -> ReplyHead:
    """The encoded head of a lean reply (the Content-Length and Date follow it)."""
    key = (status, content_type, headers)
    head = _REPLY_HEADS.get(key)
    if head is None:
        lines = [status_line_bytes(status), b"Content-Type: ", content_type.encode(),
                 b"\r\nCache-Control: no-store\r\n"]
        for name, value in headers:
            lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head = ReplyHead(b"".join(lines), ("Connection", "close") in headers,
                         any(name == "Connection" for name, _ in headers))
        if len(_REPLY_HEADS) >= REPLY_HEADS_MAX:
            _REPLY_HEADS.clear()
        _REPLY_HEADS[key] = head
    return head


class LeanRequests:
    """Mixin for the handler: see the module docstring."""

    # Provided by the handler (pywsgi's WSGIHandler and CometHandler).
    server: Any
    peer: Peer
    client_address: Any
    close_connection: bool
    _requests_served: int
    _head_deadline: float

    def _set_reading(self, reading: bool) -> None:
        raise NotImplementedError

    def lean_request(self) -> object:
        """Serve one request; True (keep the connection), None (close it) or :data:`PYWSGI_PATH`."""
        server, peer = self.server, self.peer
        data = b""
        if self._requests_served:  # between keep-alive requests: wait quietly
            if server.closed:
                return None
            data = self._wait_for_bytes()
            if not data:
                return None
        self._requests_served += 1
        self._set_reading(True)
        self._head_deadline = time.monotonic() + server.limits.header_timeout_s
        peer.arm(server.limits.header_timeout_s, HeaderTimeout)
        if not data:
            try:
                data = peer.read_some(LEAN_READ_BYTES)
            except HeaderTimeout:
                return PYWSGI_PATH  # its read finds the deadline passed and answers 408
            except OSError:
                return None
            if not data:
                return None
        request = parse_request(data, server.limits.max_header_bytes)
        if request is None:
            peer.unread(data)
            return PYWSGI_PATH
        self._head_deadline = 0.0
        peer.disarm()
        self._set_reading(False)
        if request.rest:
            peer.unread(request.rest)  # pipelined: the next request starts there
        self.close_connection = request.close
        environ = lean_environ(request, peer, self._close_after_reply)
        del data, request  # a held poll keeps this frame: not the raw bytes nor the parsed head
        self._write_reply(environ)
        return None if self.close_connection else True

    def _wait_for_bytes(self) -> bytes:
        idle, me = self.server.idle_connections, gevent.getcurrent()
        idle.add(me)  # a graceful stop closes these at once
        self.peer.arm(self.server.limits.keepalive_timeout_s, IdleTimeout)
        try:
            return self.peer.read_some(LEAN_READ_BYTES)
        except (IdleTimeout, OSError):
            return b""
        finally:
            self.peer.disarm()
            idle.discard(me)

    def _close_after_reply(self) -> None:
        # The app refused the body unread; it was read already, but close as pywsgi's path does.
        self.close_connection = True

    def _write_reply(self, environ: dict[str, Any]) -> None:
        application = self.server.application
        try:
            status, body, content_type, headers = application.respond(environ)
        except ClientGone:
            self.close_connection = True
            return
        head = reply_head(status, content_type, headers)
        if head.closes:
            self.close_connection = True
        say_close = b"Connection: close\r\n" if self.close_connection and not head.names_connection else b""
        reply = b"".join((head.start, b"Content-Length: %d\r\nDate: " % len(body), http_date(), b"\r\n",
                          say_close, b"\r\n", body))  # say_close: RFC 9112 §9.6
        try:
            self.peer.send_all(reply, self.server.limits.write_timeout_s)
        except OSError:
            self.close_connection = True
            return
        if application.hub.waking:
            # Run from the hub's fan-out loop: let it send the next waiter's reply before
            # this one goes back to reading its next request (~10 us per waiter).
            gevent.sleep(0)

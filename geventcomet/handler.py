"""gevent.pywsgi's request handler, with the limits and speed a Comet server needs.

What plain pywsgi lacks (measured against gevent's pywsgi): it has no timeouts at
all (a slowloris holds a greenlet forever), buffers ~6 MB of headers, accepts ambiguous
framing (Content-Length with Transfer-Encoding: a request hidden in a body runs),
does not put the socket in the environ (so a hung-up client cannot be noticed),
and writes headers and body in two sends. This handler adds:

- RFC 9112 head rules (:mod:`geventcomet.http_rules`): anything ambiguous gets a
  400 JSON error and the connection is closed;
- deadlines (:class:`~geventcomet.peer.Peer`): the head within ``header_timeout_s``
  of its first byte, the body within ``body_timeout_s`` of the head (408), each
  reply taken by the client within ``write_timeout_s`` (else dropped), and a
  silent close of keep-alive connections idle longer than their timeout;
- a total head size limit checked while reading (431), parsed without
  ``email.feedparser``, the largest single cost of pywsgi per request;
- ``TCP_NODELAY`` and one send for head and body: written in two sends, a keep-alive
  reply's body waits for the ACK of its head (Nagle's algorithm meets the client's
  delayed ACK), ~40 ms per reply on Linux;
- a small read buffer per connection (a parked client holds it for its whole wait);
- ``environ['geventcomet.socket']``: the connection's Peer, which a held request
  watches for a hang-up (pipelined bytes are kept for the next request), and
  ``environ['geventcomet.abandon_body']`` so a refused body is never read;
- a lean path for ``GET /register``, ``POST /notify`` and ``POST /bayeux[/*]`` over
  HTTP/1.1 (nearly all the traffic): one ``recv`` of the whole request, parsed on the bytes by
  :mod:`geventcomet.fasthead` (the same :mod:`~geventcomet.http_rules`), the app's
  ``respond()`` (what its WSGI ``__call__`` calls too) called with a small environ and
  its reply written directly: no pywsgi line reader, environ, ``start_response`` or
  result iteration. A connection gets pywsgi's buffered reader (1 KiB, held by a parked
  request for its whole wait) only when a request takes pywsgi's path: anything the
  lean parser does not take (another route or method, HTTP/1.0, a head split over
  reads, a fault to answer) is handed to pywsgi with the bytes already read, under the
  deadline already running. An application without ``respond()`` (wrapped in
  middleware, or in ``wsgiref.validate``), or an access log, gets every request through WSGI;
- after a reply sent while the hub wakes a fan-out (``Hub.waking``), one yield, so
  the hub's loop sends the next waiter's reply before this request goes back to
  pywsgi's loop (~10 us per waiter, after the last send).

Client faults (bad heads, timeouts, slow readers, hang-ups mid-body) are noted in
:mod:`geventcomet.misbehaviour`, never logged as tracebacks.
"""
from __future__ import annotations

import io
import socket
import time
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler

from .auth import masked_request_line
from .errors import ClientGone
from .http_input import Headers, HeadersTooLarge, RequestBody
from .http_rules import HeadError, check_head, parse_request_line
from .lean import PYWSGI_PATH, LeanRequests
from .metrics_record import count_refusal
from .misbehaviour import note
from .peer import BodyTimeout, HeaderTimeout, IdleTimeout, Peer, PeerReader, SlowReader
from .replies import error_reply, http_date

#: Read buffer per connection. A request head is a few hundred bytes; pywsgi's
#: default of 8 KiB would be held by every parked client for its whole wait.
RFILE_BUFFER_BYTES = 1024


RESPONSE_408 = error_reply(408, "request headers did not arrive in time")
RESPONSE_431 = error_reply(431, "request headers are too large")
RESPONSE_414 = error_reply(414, "the request line is too long")
RESPONSE_400 = error_reply(400, "malformed HTTP request")


class CometHandler(LeanRequests, WSGIHandler):
    """pywsgi handler with deadlines, head rules and limits, disconnect hooks and single-write replies."""

    def __init__(self, sock, address, server, rfile=None) -> None:  # noqa: ARG002 (pywsgi's signature)
        self._reading = False
        self.socket = sock
        self.client_address = address
        self.server = server
        self.peer = Peer(sock, address)
        #: None while every request took the lean path (pywsgi's reader is made on demand).
        self.rfile: Any = None
        self._head_deadline = 0.0  # a head's deadline, kept when the lean path hands it on
        self._lean = not server.access_log_enabled and hasattr(server.application, "respond")
        if not self._lean:
            self.rfile = io.BufferedReader(PeerReader(self.peer), RFILE_BUFFER_BYTES)
        self._requests_served = 0
        if isinstance(address, tuple):  # TCP, not a Unix socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self):
        self.server.connections += 1
        try:
            super().handle()
        finally:
            self.server.connections -= 1
            self._set_reading(False)

    def _set_reading(self, reading: bool) -> None:
        """Count this connection in ``reading_requests`` while a request head or body is read."""
        if reading != self._reading:
            self._reading = reading
            self.server.reading_requests += 1 if reading else -1

    def read_requestline(self):
        if self._head_deadline:  # the lean path read the start of this head: same deadline
            self.peer.arm(self._head_deadline - time.monotonic(), HeaderTimeout)
            self._head_deadline = 0.0
            return super().read_requestline()
        if self._requests_served:  # between keep-alive requests: wait quietly
            if self.server.closed or not self._wait_for_next_request():
                return ""
        self._requests_served += 1
        self._set_reading(True)
        self.peer.arm(self.server.limits.header_timeout_s, HeaderTimeout)
        return super().read_requestline()

    def _wait_for_next_request(self) -> bool:
        idle, me = self.server.idle_connections, gevent.getcurrent()
        idle.add(me)  # a graceful stop closes these at once
        self.peer.arm(self.server.limits.keepalive_timeout_s, IdleTimeout)
        try:
            return bool(self.rfile.peek(1))
        except (IdleTimeout, OSError):
            return False
        finally:
            self.peer.disarm()
            idle.discard(me)

    def read_request(self, raw_requestline):
        """Parse the head by RFC 9112 (``http_rules``); ambiguous framing raises HeadError (400)."""
        self.requestline = raw_requestline.rstrip("\r\n")
        line = parse_request_line(raw_requestline.encode("latin-1"))
        self.command, self.path, self.request_version = line
        self.headers = Headers(self.rfile, self.server.limits.max_header_bytes)
        framing = check_head(line, self.headers.pairs)
        self.content_length = framing.content_length
        self.close_connection = framing.close
        if framing.content_length or framing.chunked:  # the body gets its own deadline
            self.peer.arm(self.server.limits.body_timeout_s, BodyTimeout)
        else:
            self.peer.disarm()
            self._set_reading(False)
        return True

    def handle_one_request(self):
        if self.rfile is None:
            outcome = self.lean_request()
            if outcome is not PYWSGI_PATH:
                return outcome
            self.rfile = io.BufferedReader(PeerReader(self.peer), RFILE_BUFFER_BYTES)
        try:
            result = super().handle_one_request()
        except HeaderTimeout:  # raised while reading the request line
            note("head-timeout", f"{self.client_address}: no whole request line in time")
            result = ("408", RESPONSE_408)
        finally:
            self.peer.disarm()
            self._set_reading(False)
        if isinstance(result, tuple):  # a refusal: send it here, where a gone client is no fault
            status, reply = result
            count_refusal(int(status))
            if status == "414":
                note("head-too-large", f"{self.client_address}: request line too long")
                reply = RESPONSE_414
            self.status = status
            try:
                self.peer.send_all(reply, self.server.limits.write_timeout_s)
            except OSError:
                pass
            return None
        if self.peer.broken:  # a body read failed or timed out: the stream is out of step
            return None
        return result

    def log_request(self):
        if self.server.access_log_enabled:  # pywsgi formats the line even for its no-op log
            super().log_request()

    def format_request(self):
        # The access log never shows a token, a (signed) client id or a cursor.
        line, self.requestline = self.requestline, masked_request_line(self.requestline or "")
        try:
            return super().format_request()
        finally:
            self.requestline = line

    def _handle_client_error(self, ex):
        who = self.client_address
        if isinstance(ex, HeaderTimeout):
            note("head-timeout", f"{who}: no whole head in time")
            return ("408", RESPONSE_408)
        if isinstance(ex, HeadersTooLarge):
            note("head-too-large", f"{who}: over {self.server.limits.max_header_bytes} bytes or too many lines")
            return ("431", RESPONSE_431)
        if isinstance(ex, HeadError):
            note("bad-head", f"{who}: {ex.message}")
            return ("400", error_reply(400, ex.message))
        if isinstance(ex, OSError):  # reset or gone while sending its head: nobody to answer
            return None
        note("bad-head", f"{who}: {str(ex)[:100]}")
        return ("400", RESPONSE_400)

    def get_environ(self):
        env = super().get_environ()
        env["geventcomet.socket"] = self.peer
        env["geventcomet.abandon_body"] = self.abandon_body
        if env["wsgi.input"] is self.wsgi_input:
            env["wsgi.input"] = RequestBody(self.wsgi_input, self._body_failed,
                                            self.server.limits.body_timeout_s, self.client_address)
        return env

    def _body_failed(self) -> None:
        self.abandon_body()  # nothing left to discard
        self.peer.broken = True

    def abandon_body(self) -> None:
        """Do not read (or discard) the request body; close the connection after the reply."""
        self.close_connection = True
        self.wsgi_input.position = self.wsgi_input.content_length or 0
        self.wsgi_input.chunked_input = False

    def handle_error(self, t, v, tb):
        # The client left while held, reset, or did not take its reply in time (already
        # noted): nothing to write, and no traceback, since it is no fault of the server's.
        # GreenletExit: killed by a stop that could not wait any longer; no reply, so the
        # client retries (not a 500 it would trust).
        if isinstance(v, (ClientGone, SlowReader, BodyTimeout, ConnectionError, gevent.GreenletExit)):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def finalize_headers(self):
        if self.provided_date is None:  # pywsgi formats the date anew for every reply
            self.provided_date = True
            self.response_headers.append((b"Date", http_date()))
        if self.close_connection and all(name.lower() != b"connection" for name, _ in self.response_headers):
            self.response_headers.append((b"Connection", b"close"))  # say so (RFC 9112 §9.6)
        super().finalize_headers()

    def _sendall(self, data):
        # One non-blocking send() first (gevent's sendall asks the kernel for SO_SNDBUF on
        # every call, and a reply nearly always fits); a deadline only if the kernel is full.
        try:
            self.peer.send_all(data, self.server.limits.write_timeout_s)
        except OSError as ex:
            self.status = "socket error: %s" % ex
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data):
        # One sendall for head and body: two small writes on a keep-alive connection
        # meet Nagle and the client's delayed ACK (~40 ms per reply).
        self.headers_sent = True
        self.finalize_headers()
        head = [b"HTTP/1.1 ", self.status, b"\r\n"]
        for header, value in self.response_headers:
            head += (header, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if self.response_use_chunked:
            self._sendall(b"".join(head))
            self._write(data)
        else:
            head.append(data)
            self._sendall(b"".join(head))

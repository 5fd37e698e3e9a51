"""gevent.pywsgi's request handler, with the limits and speed a Comet server needs.

What plain pywsgi lacks (measured in PITFALLS §2): it has no timeouts at all (a
slowloris holds a greenlet forever), buffers ~6 MB of headers, does not put the
socket in the environ (so a hung-up client cannot be noticed), and writes headers
and body in two sends (with Nagle, ~40 ms per keep-alive reply). This handler adds:

- one deadline from the first byte of a request to the end of its headers (408),
  and a silent close of keep-alive connections idle longer than their timeout;
- a total head size limit checked while reading (431), parsed without
  ``email.feedparser``, the largest single cost of pywsgi per request;
- ``TCP_NODELAY`` and one ``sendall`` for head and body;
- a small read buffer per connection (a parked client holds it for its whole wait);
- ``environ['geventcomet.socket']`` for disconnect detection, and
  ``environ['geventcomet.abandon_body']`` so a refused body is never read;
- a fast path for ``GET /register`` (most of the traffic): the app's ``respond()``
  is called with a small environ and its reply written directly, skipping pywsgi's
  environ, ``start_response`` and result iteration (~20 % of a poll's CPU).
"""
from __future__ import annotations

import logging
import socket
import time

import gevent
from gevent.pywsgi import WSGIHandler, format_date_time

from .app import status_line
from .errors import ClientGone

log = logging.getLogger(__name__)

#: Read buffer per connection. A request head is a few hundred bytes; pywsgi's
#: default of 8 KiB would be held by every parked client for its whole wait.
RFILE_BUFFER_BYTES = 1024
#: At most this many header lines (pywsgi/http.client allow 100).
MAX_HEADER_LINES = 100


def _error_bytes(status: str, message: str) -> bytes:
    body = ('{"error": "%s"}' % message).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


RESPONSE_408 = _error_bytes("408 Request Timeout", "request headers did not arrive in time")
RESPONSE_431 = _error_bytes("431 Request Header Fields Too Large", "request headers are too large")
RESPONSE_400 = _error_bytes("400 Bad Request", "malformed HTTP request")


_date_cache: dict[int, bytes] = {}  # {second: formatted}, one entry


def http_date() -> bytes:
    """The Date header value, formatted once per second instead of once per reply."""
    now = int(time.time())
    value = _date_cache.get(now)
    if value is None:
        _date_cache.clear()
        value = _date_cache[now] = format_date_time(now)
    return value


_STATUS_LINES: dict[int, bytes] = {}  # {200: b"HTTP/1.1 200 OK\r\n", ...}


def status_line_bytes(status: int) -> bytes:
    """``200`` -> ``b"HTTP/1.1 200 OK\\r\\n"``, built once per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 " + status_line(status).encode() + b"\r\n"
    return line


class HeaderTimeout(Exception):
    """The request head did not arrive within ``header_timeout_s``."""


class _IdleTimeout(Exception):
    """A keep-alive connection sent nothing for ``keepalive_timeout_s``."""


class HeadersTooLarge(ValueError):
    pass


class Headers:
    """Just the part of pywsgi's header-object interface that pywsgi uses."""

    __slots__ = ("_lines", "_map", "status")

    def __init__(self, rfile, max_bytes: int) -> None:
        self._lines: list[str] = []
        self._map: dict[str, str] = {}
        self.status = ""
        total = 0
        while True:
            line = rfile.readline(max_bytes - total + 1)
            total += len(line)
            if total > max_bytes or len(self._lines) > MAX_HEADER_LINES:
                raise HeadersTooLarge()
            if line in (b"\r\n", b"\n"):
                return
            if not line.endswith(b"\n"):
                raise ValueError("request head ended early")
            text = line.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t"):
                raise ValueError("obsolete header line folding")
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError("malformed header line")
            key, value = name.lower(), value.strip()
            if key == "content-length" and self._map.get(key, value) != value:
                raise ValueError("conflicting Content-Length headers")
            self._map.setdefault(key, value)
            self._lines.append(f"{name}: {value}\r\n")

    def items(self):
        """(lower-cased name, value) pairs, the first of each name."""
        return self._map.items()

    def get(self, name: str, default=None):
        return self._map.get(name.lower(), default)

    getheader = get

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self._map.pop(key, None)
        self._lines = [line for line in self._lines if line.split(":", 1)[0].lower() != key]

    @property
    def headers(self) -> list[str]:
        return self._lines

    @property
    def typeheader(self):
        return self._map.get("content-type")


class CometHandler(WSGIHandler):
    """pywsgi handler with deadlines, head limits, disconnect hooks and single-write replies."""

    def __init__(self, sock, address, server, rfile=None) -> None:  # noqa: ARG002 (pywsgi's signature)
        self._fast = False
        self.socket = sock
        self.client_address = address
        self.server = server
        self.rfile = sock.makefile("rb", RFILE_BUFFER_BYTES)
        self._requests_served = 0
        # Made per request and dropped before the request parks: a parked client then
        # holds no timer of its own but its hold timeout (~600 bytes less per waiter).
        self._deadline: gevent.Timeout | None = None
        if isinstance(address, tuple):  # TCP, not a Unix socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read_requestline(self):
        if self._requests_served:  # between keep-alive requests: wait quietly
            if self.server.closed or not self._wait_for_next_request():
                return ""
        self._requests_served += 1
        self._deadline = gevent.Timeout.start_new(self.server.limits.header_timeout_s, HeaderTimeout)
        return super().read_requestline()

    def _wait_for_next_request(self) -> bool:
        idle, me = self.server.idle_connections, gevent.getcurrent()
        idle.add(me)  # a graceful stop closes these at once
        deadline = gevent.Timeout.start_new(self.server.limits.keepalive_timeout_s, _IdleTimeout)
        try:
            return bool(self.rfile.peek(1))
        except _IdleTimeout:
            return False
        finally:
            deadline.close()
            idle.discard(me)

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def MessageClass(self, rfile, *_args):  # noqa: N802 (pywsgi's name)
        return Headers(rfile, self.server.limits.max_header_bytes)

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        except HeaderTimeout:  # raised while reading the request line
            return ("408", RESPONSE_408)
        finally:
            self._cancel_deadline()

    def log_request(self):
        if self.server.access_log_enabled:  # pywsgi formats the line even for its no-op log
            super().log_request()

    def _handle_client_error(self, ex):
        if isinstance(ex, HeaderTimeout):
            return ("408", RESPONSE_408)
        if isinstance(ex, HeadersTooLarge):
            return ("431", RESPONSE_431)
        log.debug("bad request from %s: %s", self.client_address, ex)
        return ("400", RESPONSE_400)

    def get_environ(self):
        if self._fast_route():
            return self._fast_environ()
        env = super().get_environ()
        env["geventcomet.socket"] = self.socket
        env["geventcomet.abandon_body"] = self.abandon_body
        return env

    # -- the fast path: GET /register without pywsgi's WSGI machinery -------------
    #
    # A poll is most of the traffic, and pywsgi's environ, start_response and
    # result iteration were ~20 % of a poll's CPU (bench/RESULTS.md, 2026-11-21).
    # For GET /register over HTTP/1.1 the app's respond() gets a small environ and
    # its reply is written here with one send(); everything else is plain WSGI.

    def _fast_route(self) -> bool:
        self._fast = (self.command == "GET" and self.request_version == "HTTP/1.1"
                      and self.path.partition("?")[0] == "/register" and not self.content_length
                      and self.headers.get("transfer-encoding") is None
                      and not self.server.access_log_enabled)
        return self._fast

    def _fast_environ(self) -> dict:
        _, _, query = self.path.partition("?")
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/register", "QUERY_STRING": query,
               "SERVER_PROTOCOL": "HTTP/1.1", "geventcomet.socket": self.socket}
        for name, value in self.headers.items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        return env

    def handle_one_response(self):
        if not self._fast:
            return super().handle_one_response()
        self._fast = False
        self.status = b""
        self.code = 0
        self.response_length = 0
        try:
            status, body, content_type, headers = self.server.app.respond(self.environ)
        except ClientGone:
            self.close_connection = True
            return None
        head = [status_line_bytes(status), b"Content-Type: ", content_type.encode(),
                b"\r\nContent-Length: ", b"%d" % len(body), b"\r\nCache-Control: no-store\r\nDate: ",
                http_date(), b"\r\n"]
        for name, value in headers:
            if name == "Connection" and value == "close":
                self.close_connection = True
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head += (b"\r\n", body)
        self.code = status
        try:
            self._sendall(b"".join(head))
        except OSError:
            self.close_connection = True
            return None
        if self.environ.get("geventcomet.woken"):
            # Woken by a publish, so most likely one of many in the hub's fan-out loop:
            # let it send the next waiter's reply before this one goes back to reading
            # its next request (~10 us of pywsgi's loop per waiter, after the last send).
            gevent.sleep(0)
        return None

    def abandon_body(self) -> None:
        """Do not read (or discard) the request body; close the connection after the reply."""
        self.close_connection = True
        self.wsgi_input.position = self.wsgi_input.content_length or 0
        self.wsgi_input.chunked_input = False

    def handle_error(self, t, v, tb):
        if isinstance(v, ClientGone):  # the client left while held: nothing to write
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def finalize_headers(self):
        if self.provided_date is None:  # pywsgi formats the date anew for every reply
            self.provided_date = True
            self.response_headers.append((b"Date", http_date()))
        super().finalize_headers()

    def _sendall(self, data):
        # gevent's sendall asks the kernel for SO_SNDBUF on every call; a reply this small
        # nearly always leaves in one send(), so try that first.
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = "socket error: %s" % ex
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data):
        # One sendall for head and body: two small writes on a keep-alive
        # connection meet Nagle and delayed ACK (PITFALLS §6).
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

"""The blocking flavour's HTTP: keep-alive connections on the standard library's ``http.client``.

Measured (CPython 3.11, loopback, ``python bench/bench_client.py layers``): one request costs
the client about 120 µs of CPU through ``http.client``, 500 µs through ``httpx.Client``; a
publish is one round trip, so that difference bounds the publishes/s of one connection.
Only the ``socket`` and ``ssl`` modules are used: a gevent-monkey-patched program gets
cooperative sockets without this module knowing of gevent. TLS: ``ssl``'s default context.

``http.client`` sends a request's head and body in two ``send()`` calls; :class:`_Sending`
sends them in one (one syscall, one packet, no Nagle/delayed-ACK interplay).

A :class:`Pool` hands each request an idle connection (or a new one) and takes it back
after the whole reply was read, so one thread reuses one connection and threads or
greenlets sharing a publisher each get their own. A kept connection the server closed
meanwhile (its keep-alive timeout, a restart) fails on first use: a request that fails
that way on a reused connection is sent again at once on a fresh one, once (safe: every
publish carries its Idempotency-Key, a poll is a read). Other failures raise
:class:`TransportError` (``ConnectError``, ``ReadTimeout``, ``ReadError``) for the retry policy;
a certificate that does not verify raises :class:`CometClientError` at once.
"""
from __future__ import annotations

import http.client
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from .errors import CometClientError

#: Idle connections a pool keeps (more are closed after their request).
MAX_IDLE = 8
#: A reused connection failing with one of these was (probably) closed by the server while idle.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

#: What an HTTP header value may not hold: controls (a CR or LF would inject headers) and
#: characters outside latin-1 (``http.client`` encodes values as latin-1).
BAD_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")

_DEFAULT_CONTEXT: list[ssl.SSLContext] = []


def default_ssl_context() -> ssl.SSLContext:
    """One default TLS context per process (building one loads the CA bundle: milliseconds)."""
    if not _DEFAULT_CONTEXT:
        _DEFAULT_CONTEXT.append(ssl.create_default_context())
    return _DEFAULT_CONTEXT[0]


class TransportError(CometClientError):
    """The request got no reply: the connection failed, was closed, or timed out."""


class ConnectError(TransportError):
    """No connection could be made."""


class ReadTimeout(TransportError):
    """The reply did not come within the timeout."""


class ReadError(TransportError):
    """The connection broke (or the reply was not HTTP) after the request was sent."""


class ClientClosed(CometClientError):
    """The publisher or subscriber was closed (by another thread, perhaps) before this request."""


class Reply(NamedTuple):
    """A whole reply: ``headers.get`` is case-insensitive."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


class _Sending:
    """Sends a request's head and body in one ``send()``."""

    _buffer: list[bytes]

    def _send_output(self, message_body: bytes | None = None, encode_chunked: bool = False) -> None:
        # Pool sends bytes or nothing: no file or iterable bodies, no chunked encoding.
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(head + (message_body or b""))  # type: ignore[attr-defined]


class _HTTP(_Sending, http.client.HTTPConnection):
    pass


class _HTTPS(_Sending, http.client.HTTPSConnection):
    pass


class Stream:
    """A reply read as it comes (SSE): :meth:`lines` until the server ends it, then :meth:`close`."""

    def __init__(self, pool: Pool, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.pool, self.conn, self.response = pool, conn, response

    def lines(self) -> Iterator[str]:
        """Each line without its line end; ends (or raises :class:`TransportError`) with the stream."""
        try:
            for raw in iter(self.response.readline, b""):
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except socket.timeout as exc:
            raise ReadTimeout(f"no data for {self.conn.timeout} s") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: closed meanwhile
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.pool.discard(self.conn)


class Pool:
    """Keep-alive connections to one server (``url``: scheme, host, port and an optional path
    prefix). ``timeout_s`` bounds connecting and, unless a request gives its own, each read."""

    def __init__(self, url: str, timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https, self.host, self.port = parts.scheme == "https", parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.closed = False
        self._idle: list[http.client.HTTPConnection] = []
        self._open: set[http.client.HTTPConnection] = set()

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str],
                params: list[tuple[str, Any]] | None = None, timeout_s: float | None = None) -> Reply:
        """Send one request and read its whole reply."""
        conn, response = self._exchange(method, path, body, headers, params, timeout_s)
        try:
            reply = Reply(response.status, response.headers, response.read())
        except socket.timeout as exc:
            self.discard(conn)
            raise ReadTimeout(f"no reply within {timeout_s or self.timeout_s} s") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.discard(conn)
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc
        self._release(conn, response)
        return reply

    def stream(self, path: str, *, headers: dict[str, str], params: list[tuple[str, Any]] | None = None,
               timeout_s: float | None = None) -> Stream | Reply:
        """``GET path``: a :class:`Stream` if the server answered 200, else the whole :class:`Reply`."""
        conn, response = self._exchange("GET", path, None, headers, params, timeout_s)
        if response.status == 200:
            return Stream(self, conn, response)
        try:
            return Reply(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.discard(conn)

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                  params: list[tuple[str, Any]] | None,
                  timeout_s: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        for name, value in headers.items():  # the caller's mistake: refused before sending, not retried
            if BAD_HEADER_VALUE.search(value):
                raise CometClientError(f"the {name} header holds a character HTTP cannot carry")
        while True:
            conn, reused = self._acquire()
            timeout = timeout_s or self.timeout_s
            try:
                if conn.sock is None:
                    self._connect(conn)
                if conn.sock.gettimeout() != timeout:
                    conn.sock.settimeout(timeout)
                conn.request(method, target, body=body, headers=headers)
                return conn, conn.getresponse()
            except TransportError:
                self.discard(conn)
                raise
            except STALE as exc:
                self.discard(conn)
                if reused and not self.closed:
                    continue  # closed by the server while idle: once more, on a new connection
                raise ReadError(f"{type(exc).__name__}: {exc}") from exc
            except socket.timeout as exc:
                self.discard(conn)
                raise ReadTimeout(f"no reply within {timeout} s") from exc
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
                self.discard(conn)  # AttributeError, ValueError: the pool was closed meanwhile
                raise ReadError(f"{type(exc).__name__}: {exc}") from exc

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:  # retrying will not make the certificate valid
            raise CometClientError(f"TLS: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        if self.closed:
            raise ClientClosed("the client is closed")
        try:
            return self._idle.pop(), True
        except IndexError:
            pass
        conn: http.client.HTTPConnection
        if self.https:
            conn = _HTTPS(self.host, self.port, timeout=self.timeout_s,
                          context=self.ssl_context or default_ssl_context())
        else:
            conn = _HTTP(self.host, self.port, timeout=self.timeout_s)
        self._open.add(conn)
        return conn, False

    def _release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if self.closed or response.will_close or conn.sock is None or len(self._idle) >= MAX_IDLE:
            self.discard(conn)
        else:
            self._idle.append(conn)

    def discard(self, conn: http.client.HTTPConnection) -> None:
        """Close ``conn`` (only the thread using it may: ``http.client`` is not thread-safe)."""
        self._open.discard(conn)
        conn.close()

    def close(self) -> None:
        """Close the idle connections and shut down those in use by other threads: their
        requests end at once (``shutdown`` wakes a blocked read; closing under it would
        race with the reader), and those threads close them."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)
        for conn in list(self._open):
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

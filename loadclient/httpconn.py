"""A light HTTP/1.1 keep-alive client on one raw gevent socket.

Why not ``requests``: a fake client must cost little, in memory (thousands are held
at once) and in CPU (the load client shares two cores with the server it measures).
One :class:`Connection` is one socket plus a byte buffer; a request is one
``sendall`` and a reply is read with ``recv`` until its ``Content-Length`` is in.

Only what geventcomet (and servers speaking its protocol) answer is supported:
``Content-Length`` bodies or a body ended by the server closing the connection.
"""
from __future__ import annotations

import socket as _stdsocket
import struct
import sys
import time

from gevent import socket

#: Linux: let connect() pick the source port, so a bound source address does not
#: use up its port range at bind() time (each address then has ~28k ports per server).
IP_BIND_ADDRESS_NO_PORT = getattr(_stdsocket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Bytes asked of each recv(): a poll reply is a few hundred; recv() allocates this much first.
RECV_BYTES = 16384
#: Linux's SO_TIMESTAMPNS (Python does not name it): the kernel stamps each segment as it
#: arrives, and recvmsg() hands the stamp over as ancillary data (SCM_TIMESTAMPNS, the same number).
SO_TIMESTAMPNS = 35 if sys.platform == "linux" else None
_TIMESPEC = struct.Struct("@qq")


class HTTPError(Exception):
    """A transport or framing failure; ``kind`` names it for the error counters."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Reply:
    """One HTTP response: ``status`` (int), raw ``body`` bytes, and :attr:`headers` on demand."""

    __slots__ = ("status", "head", "body", "arrived", "stamped", "_headers")

    def __init__(self, status: int, head: bytes, body: bytes, arrived: float, stamped: bool = False) -> None:
        self.status = status
        self.head = head
        self.body = body
        #: wall-clock time the reply reached this host's socket: when ``stamped``, the kernel's
        #: receive stamp on the first read's bytes (for TCP, on the newest segment that read
        #: took), else the read time (Linux stamps only once timestamping is on, which it
        #: turns on a moment after the first socket asks for it)
        self.arrived = arrived
        self.stamped = stamped
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased header names -> values (parsed on first use: most replies never need it)."""
        if self._headers is None:
            self._headers = {}
            for line in self.head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                self._headers[name.strip().lower()] = value.strip()
        return self._headers


class Connection:
    """A keep-alive connection to ``host:port``, reopened on demand after a close.

    :param source: local address to bind before connecting (e.g. ``127.0.0.2``), or None.
    :param timeout_s: bound on connect and on each wait for reply bytes.
    """

    __slots__ = ("host", "port", "source", "timeout_s", "sock", "_buf", "_host_header")

    def __init__(self, host: str, port: int, source: str | None = None, timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self._buf = b""
        self._host_header = f"{host}:{port}"

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            if SO_TIMESTAMPNS is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.settimeout(self.timeout_s)
            sock.connect((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise HTTPError("connect", str(exc)) from None
        self.sock = sock
        self._buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, target: str, body: bytes = b"",
                headers: str = "", timeout_s: float | None = None) -> Reply:
        """Send one request and read its reply; ``headers`` is pre-formatted ``Name: v\\r\\n`` text.

        Raises :class:`HTTPError` on any failure, after closing the socket.
        """
        if self.sock is None:
            self.open()
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n" if body or method == "POST" else
                f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n{headers}\r\n")
        sock = self.sock
        data = head.encode("latin-1") + body
        try:
            sock.settimeout(timeout_s or self.timeout_s)
            # One send() is enough for a request this small; gevent's sendall() would
            # also ask the kernel for SO_SNDBUF on every call.
            sent = sock.send(data)
            if sent < len(data):
                sock.sendall(data[sent:])
            return self._read_reply(sock)
        except HTTPError:
            self.close()
            raise
        except socket.timeout:
            self.close()
            raise HTTPError("timeout", "no reply in time") from None
        except OSError as exc:
            self.close()
            raise HTTPError("reset", str(exc)) from None

    def read_reply(self) -> Reply:
        """Read the next reply on the open connection (one sent with :meth:`send`)."""
        if self.sock is None:
            raise HTTPError("closed", "no connection")
        return self._read_reply(self.sock)

    def send(self, data: bytes) -> None:
        """Send raw request bytes on the connection (opening it first if needed)."""
        if self.sock is None:
            self.open()
        sock = self.sock
        assert sock is not None  # open() set it, or raised
        sock.sendall(data)

    def _read_reply(self, sock) -> Reply:
        buf = self._buf
        arrived, stamped = (time.time() if buf else 0.0), False  # pipelined: came with the previous reply
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > 65536:
                raise HTTPError("bad_reply", "reply head too large")
            if arrived:
                chunk = sock.recv(RECV_BYTES)
            else:
                chunk, arrived, stamped = self._recv_stamped(sock)
            if not chunk:
                raise HTTPError("closed" if not buf else "bad_reply", "connection closed before a reply")
            buf += chunk
        head = buf[:end]
        # Fast path on the bytes: status, Content-Length, Connection: close are all we need.
        if head[:7] != b"HTTP/1." or not head[9:12].isdigit():
            raise HTTPError("bad_reply", repr(head[:80]))
        status = int(head[9:12])
        lower = head.lower()
        if b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
            raise HTTPError("bad_reply", "chunked replies are not supported")
        close = b"\r\nconnection: close" in lower or head[5:8] == b"1.0"
        rest = buf[end + 4:]
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:  # the body ends when the server closes
            while True:
                chunk = sock.recv(RECV_BYTES)
                if not chunk:
                    break
                rest += chunk
            self.close()
            self._buf = b""
            return Reply(status, head, rest, arrived, stamped)
        stop = lower.find(b"\r\n", at + 2)
        need = int(lower[at + 17:stop if stop >= 0 else len(lower)])
        while len(rest) < need:
            chunk = sock.recv(max(RECV_BYTES, need - len(rest)))
            if not chunk:
                raise HTTPError("bad_reply", "connection closed inside a body")
            rest += chunk
        self._buf = rest[need:]
        if close:
            self.close()
        return Reply(status, head, rest[:need], arrived, stamped)

    @staticmethod
    def _recv_stamped(sock) -> tuple[bytes, float, bool]:
        """recv() plus when the bytes arrived: the kernel's stamp (True), or now (False)."""
        if SO_TIMESTAMPNS is None:
            return sock.recv(RECV_BYTES), time.time(), False
        chunk, ancillary, _, _ = sock.recvmsg(RECV_BYTES, 64)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                return chunk, seconds + nanoseconds * 1e-9, True
        return chunk, time.time(), False


def split_url(url: str) -> tuple[str, int]:
    """``http://host:port[/]`` -> (host, port). Only plain http is spoken."""
    if not url.startswith("http://"):
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    hostport = url[len("http://"):].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host:
        return hostport, 80
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port in {url!r} must be a number from 1 to 65535")
    return host, int(port)


def bearer_header(token: str | None) -> str:
    """``Authorization: Bearer TOKEN`` as pre-formatted header text, or '' without a token."""
    if not token:
        return ""
    if any(c in token for c in "\r\n"):
        raise ValueError("a token cannot contain a line break")
    return f"Authorization: Bearer {token}\r\n"

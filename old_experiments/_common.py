"""Pieces the experiments share. No gevent and no monkey-patching: the thread-based
servers import this in a process where threads must stay real OS threads.

Every server here announces where it listens the way geventcomet does, over the
readiness pipe of :mod:`geventcomet.ready` (standard library only; importing
geventcomet patches nothing), so :class:`Child` starts any of them, geventcomet
included, and learns its port without reading its log.
"""
from __future__ import annotations

import argparse
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from geventcomet import ready

log = logging.getLogger("old_experiments")

#: Linux clock ticks per second, for the CPU times in /proc/PID/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def add_server_args(parser: argparse.ArgumentParser, duration: float) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--duration", type=float, default=duration,
                        help="stop by itself after this many seconds (default %(default)s); "
                             "SIGINT/SIGTERM stop it sooner")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


#: Seconds between progress lines while a comparison runs.
PROGRESS_EVERY_S = 5.0


def progress(text: str) -> None:
    """One line on stderr while an experiment runs (its table goes to stdout at the end)."""
    print(text, file=sys.stderr, flush=True)


def announce_listening(host: str, port: int, what: str) -> None:
    """Log that this server listens, and announce it to the parent that asked (:mod:`geventcomet.ready`)."""
    log.info("%s listening on http://%s:%d/", what, host, port)
    ready.announce(ready.take_fd(), host, port)


#: The signals that stop a server.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def block_stop_signals() -> None:
    """Block SIGINT/SIGTERM in this thread and every thread it starts from now on.

    Call it in the main thread before starting any other: the kernel hands a process
    signal to any thread not blocking it, and a Python handler only runs once the main
    thread wakes, which it may not do until its wait times out. Blocked everywhere, the
    signal stays pending until :func:`wait_for_stop` takes it.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def wait_for_stop(duration: float) -> None:
    """Block until ``duration`` passes or SIGINT/SIGTERM arrives (after :func:`block_stop_signals`)."""
    block_stop_signals()
    signal.sigtimedwait(STOP_SIGNALS, duration)


class PooledHTTPServer(http.server.HTTPServer):
    """An HTTP server whose requests run on a bounded pool of real threads, as ASP.NET's did.

    Requests beyond ``workers`` wait in the pool's queue. A handler may set ``parked``
    to keep its socket open after it returns: someone else will answer it later.
    """

    allow_reuse_address = True
    #: A ramp of hundreds of clients connects faster than one accept loop drains the
    #: default listen queue of 5; a full queue would hide what the pool itself does.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler_class, workers: int) -> None:
        super().__init__(address, handler_class)
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="worker")
        #: Set at stop: blocked handlers return early so the pool's threads can end.
        self.stopping = threading.Event()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN; loopback needs no DNS.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:
        handler = None
        try:
            handler = self.RequestHandlerClass(request, client_address, self)
        except Exception:
            self.handle_error(request, client_address)
        if not getattr(handler, "parked", False):
            self.shutdown_request(request)

    def run(self, duration: float, what: str, on_stop=None) -> None:
        """Serve from a background thread until ``duration`` or a signal, then stop.

        ``on_stop`` (if given) runs once ``stopping`` is set, to wake blocked handlers.
        """
        block_stop_signals()  # before the accept thread starts (its pool threads inherit the mask)
        announce_listening(*self.server_address[:2], what)
        accept = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        accept.start()
        wait_for_stop(duration)
        self.stopping.set()
        if on_stop is not None:
            on_stop()
        self.shutdown()
        self.server_close()
        self.pool.shutdown(wait=True, cancel_futures=True)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 with ``Connection: close``, access log at DEBUG only."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def send_body(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def os_threads(pid: int) -> int:
    """How many OS threads a live process has (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class Child:
    """One of the experiment servers run as its own process; ``url`` once it listens.

    It announces its address over a readiness pipe; a child that exits first fails at
    once. Its stderr is drained by a thread (a greenlet when the caller is
    monkey-patched) so the child never blocks on a full pipe; ``lines`` keeps what it logged.
    """

    def __init__(self, argv: list[str], ready_timeout: float = 20) -> None:
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        pipe = ready.ReadyPipe()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env={**child_env(), **pipe.child_env()},
                                         pass_fds=pipe.pass_fds)
        except BaseException:
            pipe.close()
            raise
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        try:
            announced = pipe.wait(ready_timeout)
        except (TimeoutError, ValueError):
            announced = None
        if announced is None:
            self.kill()
            self._reader.join(5)
            raise RuntimeError(f"{argv} did not start:\n" + "".join(self.lines[-20:]))
        self.url = announced.url

    def _drain(self) -> None:
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_lines(self, text: str, count: int = 1, timeout: float = 10) -> None:
        """Block until ``count`` logged lines contain ``text``; raise TimeoutError after ``timeout`` s."""
        def seen() -> bool:
            return sum(text in line for line in self.lines) >= count or not self._reader.is_alive()

        with self._new_line:
            if not self._new_line.wait_for(seen, timeout) or not self._reader.is_alive():
                raise TimeoutError(f"{count} lines with {text!r} not seen:\n" + "".join(self.lines[-20:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait for it to exit (kill after ``timeout``); returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.0f s; killing it", self.pid, timeout)
                return self.kill()
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> int:
        self.proc.kill()
        return self.proc.wait(10)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table, one column per mode or measure, aligned for a terminal or README."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def python_module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


def child_env() -> dict[str, str]:
    """The environment for ``python -m`` children: this checkout first on the path, so
    they import the same old_experiments, loadclient and geventcomet whatever the cwd."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def open_get(host: str, port: int, path: str, *, close: bool = False):
    """GET ``path`` on a new gevent socket; return ``(sock, reply)`` with the reply's head read.

    The body is then read line by line as it trickles in (``reply.readline()``); the
    caller closes ``sock``. gevent is imported here, not at the top: the thread servers
    in this package must run unpatched.
    """
    import http.client

    import gevent.socket

    sock = gevent.socket.socket()
    try:
        sock.connect((host, port))
        extra = "Connection: close\r\n" if close else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        reply = http.client.HTTPResponse(sock)
        reply.begin()
    except BaseException:
        sock.close()
        raise
    return sock, reply

"""A geventcomet server in a child process, and what the benchmarks read from it.

The server announces the port it picked over a readiness pipe (:mod:`geventcomet.ready`).
It logs its start-up at INFO and nothing per request, so INFO costs the benchmark nothing.
:class:`AiohttpPeerProcess` is the same interface over ``bench/aiohttp_peer.py`` (the peer
``bench/side_by_side.py`` compares with), which announces its port as ``PORT <n>`` on stdout.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from subprocess import DEVNULL, PIPE

import gevent
from gevent import subprocess

from geventcomet.ready import ReadyPipe
from loadclient.httpconn import Connection, HTTPError

_TICKS = os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """``python -m geventcomet serve --port 0 [args]``; ``url`` once it listens."""

    def __init__(self, *args: str, ready_timeout_s: float = 20.0) -> None:
        pipe = ReadyPipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "geventcomet", "serve", "--port", "0",
                                          "--log-level", "INFO", *args],
                                         stdout=DEVNULL, stderr=PIPE, text=True,
                                         env={**os.environ, **pipe.child_env()}, pass_fds=pipe.pass_fds)
        except BaseException:
            pipe.close()
            raise
        self.log: list[str] = []
        self._reader = gevent.spawn(self._drain)
        try:
            announced = pipe.wait(ready_timeout_s)
        except (TimeoutError, ValueError):
            announced = None
        if announced is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.url = announced.url
        self._stats_conn = Connection(announced.host, announced.port, timeout_s=30)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if len(self.log) < 1000:
                self.log.append(line)

    def stats(self) -> dict:
        """The server's ``GET /stats`` (one retry: the server may have closed an idle keep-alive)."""
        try:
            return json.loads(self._stats_conn.request("GET", "/stats").body)
        except HTTPError:
            return json.loads(self._stats_conn.request("GET", "/stats").body)

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used (from /proc/PID/stat)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def stop(self) -> None:
        self._stats_conn_close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)

    def _stats_conn_close(self) -> None:
        conn = getattr(self, "_stats_conn", None)
        if conn is not None:
            conn.close()


class AiohttpPeerProcess(ServerProcess):
    """``python bench/aiohttp_peer.py --port 0``: ``url``, ``stats()``, ``cpu_s()``, ``stop()``."""

    def __init__(self, ready_timeout_s: float = 20.0) -> None:  # noqa: D107 (no super: no ready pipe)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aiohttp_peer.py")
        self.proc = subprocess.Popen([sys.executable, script, "--port", "0"], stdout=PIPE, stderr=PIPE, text=True)
        self.log: list[str] = []
        self._reader = gevent.spawn(self._drain)
        port = None
        with gevent.Timeout(ready_timeout_s, False):
            line = self.proc.stdout.readline()
            if line.startswith("PORT "):
                port = int(line.split()[1])
        if port is None:
            self.stop()
            raise RuntimeError("aiohttp peer did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{port}"
        self._stats_conn = Connection("127.0.0.1", port, timeout_s=30)

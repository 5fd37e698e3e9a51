"""A geventcomet server in a child process, and what the benchmarks read from it.

The server logs its start-up at INFO (the "listening on" line gives the port it
picked); it logs nothing per request at INFO, so INFO costs the benchmark nothing.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from subprocess import DEVNULL, PIPE

import gevent
from gevent import subprocess
from gevent.event import Event

from loadclient.httpconn import Connection, HTTPError

_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)/")
_TICKS = os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """``python -m geventcomet serve --port 0 [args]``; ``url`` once it listens."""

    def __init__(self, *args: str, ready_timeout_s: float = 20.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "geventcomet", "serve", "--port", "0",
                                      "--log-level", "INFO", *args],
                                     stdout=DEVNULL, stderr=PIPE, text=True)
        self.url = ""
        self.log: list[str] = []
        self._ready = Event()
        self._reader = gevent.spawn(self._drain)
        if not self._ready.wait(ready_timeout_s) or not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        host, port = self.url[len("http://"):].split(":")
        self._stats_conn = Connection(host, int(port), timeout_s=30)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if len(self.log) < 1000:
                self.log.append(line)
            match = _LISTENING.search(line)
            if match and not self.url:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                self._ready.set()
        self._ready.set()

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

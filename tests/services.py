"""Real services for tests: a private redis-server on a free loopback port."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import gevent


def free_port() -> int:
    """A port that was free a moment ago (for services that cannot report the one they bound)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different ports that were free a moment ago. Probed all at once: one probe
    after another may be given the same port again (a Sentinel group once got one port for two
    of its sentinels, and the second could not listen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class RedisServer:
    """redis-server bound to 127.0.0.1 on its own port and directory; can be stopped and restarted."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> None:
        """Start and return once redis-server logs that it accepts connections."""
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no", "--logfile", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with gevent.Timeout(timeout, AssertionError(f"redis-server did not start on {self.port}")):
            for line in self.proc.stdout:
                if "Ready to accept connections" in line:
                    break
            else:
                raise AssertionError("redis-server exited at start")
        gevent.spawn(self._drain, self.proc)

    @staticmethod
    def _drain(proc: subprocess.Popen) -> None:
        for _ in proc.stdout:  # keep its log pipe from filling up
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port; with no persistence, all data is gone."""
        self.stop()
        self.start()

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            conn.recv(16)

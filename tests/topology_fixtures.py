"""A deployed topology for tests and bench/topology.py: Sentinel-managed Redis, geventcomet nodes, nginx.

- :class:`SentinelGroup`: a master, a replica and three sentinels (``redis-server``,
  ``redis-sentinel``) on free loopback ports in a tmp dir, with a short
  ``down-after-milliseconds`` and ``failover-timeout`` so that a failover takes a few
  seconds. Waits go on what Sentinel reports (polled with a bound), never on a sleep.
- :class:`Nginx`: Debian's nginx as a round-robin load balancer (no sticky sessions) in
  front of the nodes, ``daemon off``, every path in the tmp dir.
- :class:`Node`: one ``geventcomet serve --workers N`` process (:class:`tests.helpers.ServerProcess`).

Ports of redis and nginx come from :func:`tests.services.free_port` (they cannot report a
port they bound); the nodes bind port 0 and announce theirs.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import redis

from .helpers import ServerProcess
from .services import free_port, free_ports

SERVICE = "gcmaster"
#: Sentinel's settings: a master unreachable this long is down; a failover gives up after this.
DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS = 1000, 4000


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """``condition()``'s first truthy value, asked every ``interval`` s for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        gevent.sleep(interval)  # polling a condition with a deadline, not a synchronising sleep
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


class SentinelGroup:
    """A master, ``replicas`` replicas and three sentinels watching them as :data:`SERVICE`."""

    def __init__(self, workdir: Path, replicas: int = 1, min_replicas_to_write: int = 0) -> None:
        self.workdir = workdir
        #: Redis's own min-replicas-to-write on every server (see docs/topology.md).
        self.min_replicas_to_write = min_replicas_to_write
        ports = free_ports(1 + replicas + 3)
        self.redis_ports, self.sentinel_ports = ports[:1 + replicas], ports[1 + replicas:]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 20) -> None:
        binary, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
        assert binary and sentinel, "redis-server and redis-sentinel are needed"
        master = self.redis_ports[0]
        for port in self.redis_ports:
            self.start_redis(port, None if port == master else master)
        for port in self.redis_ports[1:]:
            wait_for(lambda p=port: self.client(p).info("replication").get("master_link_status") == "up",
                     timeout, f"replica {port} in sync")
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n")
            self.procs[port] = _spawn([sentinel, str(conf)], self.workdir / f"sentinel-{port}.log")
        wait_for(self.settled, timeout, "three sentinels that know each other and every replica")

    def start_redis(self, port: int, replica_of: int | None) -> None:
        args = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(port),
                "--dir", str(self.workdir), "--dbfilename", f"dump-{port}.rdb", "--save", "",
                "--appendonly", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        if self.min_replicas_to_write:
            args += ["--min-replicas-to-write", str(self.min_replicas_to_write), "--min-replicas-max-lag", "10"]
        self.procs[port] = _spawn(args, self.workdir / f"redis-{port}.log")
        wait_for(lambda: self.client(port).ping(), 10, f"redis-server on {port}")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def sentinel_state(self, port: int) -> dict:
        return self.client(port).sentinel_master(SERVICE)

    def settled(self) -> bool:
        """Every sentinel agrees on the master and knows the others and every replica."""
        masters, replicas = set(), len(self.redis_ports) - 1
        for port in self.sentinel_ports:
            state = self.sentinel_state(port)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < replicas or state.get("is_odown"):
                return False
            masters.add(state["port"])
        return len(masters) == 1

    def master_port(self) -> int:
        return int(self.sentinel_state(self.sentinel_ports[0])["port"])

    def wait_master_changed(self, old: int, timeout: float = 30) -> int:
        """The new master's port, once every sentinel reports one other than ``old`` and it is a master."""
        def changed() -> int | None:
            ports = {int(self.sentinel_state(port)["port"]) for port in self.sentinel_ports}
            if len(ports) == 1 and old not in ports:
                new = ports.pop()
                if self.client(new).info("replication")["role"] == "master":
                    return new
            return None
        return wait_for(changed, timeout, f"Sentinel to report a master other than {old}")

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; the new master's port once the sentinels report it."""
        old = self.master_port()
        self.client(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)
        return self.wait_master_changed(old)

    def kill_master(self) -> tuple[int, int]:
        """kill -9 of the master; (old, new) ports once a replica is promoted. The old one is
        started again as a replica (Sentinel reconfigures it)."""
        old = self.master_port()
        self.procs[old].kill()
        self.procs[old].wait(10)
        new = self.wait_master_changed(old)
        self.start_redis(old, new)
        return old, new

    def wait_replicas_in_sync(self, timeout: float = 30) -> None:
        master = self.master_port()
        wait_for(lambda: self.client(master).info("replication").get("connected_slaves", 0)
                 >= len(self.redis_ports) - 1, timeout, "replicas connected to the master")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Node:
    """One ``geventcomet serve`` (``--workers N``) on the shared backend; can be restarted on its port."""

    def __init__(self, backend: str, workers: int = 2, extra: tuple[str, ...] = (), env: dict | None = None):
        self.backend, self.workers, self.extra, self.env = backend, workers, extra, env
        self.port = 0
        self.proc: ServerProcess | None = None

    def start(self) -> None:
        args = ["--backend", self.backend, "--workers", str(self.workers), *self.extra]
        if self.port:
            args += ["--port", str(self.port)]  # the later --port wins over ServerProcess's --port 0
        self.proc = ServerProcess(*args, env=self.env)
        assert self.proc.ready is not None, "node did not start:\n" + "".join(self.proc.log)
        self.port = int(self.proc.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        assert self.proc is not None and self.proc.ready is not None
        return list(self.proc.ready.workers)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.proc.send_signal(signum)

    def kill_worker(self) -> int:
        """kill -9 of the node's first worker; its pid."""
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Nginx:
    """``/usr/sbin/nginx`` round-robin over ``upstreams`` (host:port), listening on a free port."""

    def __init__(self, workdir: Path, upstreams: list[str], workers: int = 1) -> None:
        self.workdir, self.upstreams, self.workers = workdir, upstreams, workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "nginx-access.log"

    def config(self) -> str:
        servers = "".join(f"        server {upstream} max_fails=0;\n" for upstream in self.upstreams)
        tmp = self.workdir / "nginx-tmp"
        return NGINX_CONF.format(pid=self.workdir / "nginx.pid", error=self.workdir / "nginx-error.log",
                                 access=self.access_log, tmp=tmp, servers=servers, port=self.port,
                                 workers=self.workers, reuseport=" reuseport" if self.workers > 1 else "")

    def start(self) -> None:
        (self.workdir / "nginx-tmp").mkdir(exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        self.proc = _spawn(["/usr/sbin/nginx", "-p", str(self.workdir), "-c", str(conf)],
                           self.workdir / "nginx-stdout.log")
        wait_for(self._answers, 10, f"nginx on {self.port}")

    def _answers(self) -> bool:
        import socket
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("nginx exited: " + (self.workdir / "nginx-stdout.log").read_text())
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def status_counts(self) -> dict[int, int]:
        """How many requests nginx answered with each status (its access log)."""
        counts: dict[int, int] = {}
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                status = int(line.split()[0])
                counts[status] = counts.get(status, 0) + 1
        return counts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


#: The documented block (docs/topology.md), with tmp paths. Long polls need a read timeout
#: past the poll timeout; no buffering, so a reply leaves at once. A request whose node
#: fails (refused, reset, timed out) before it answers goes to the next node, POST /notify
#: too (non_idempotent: safe only because notifiers send an Idempotency-Key). A 503 is NOT
#: retried by nginx: when Redis is down every node says 503, and counting those as failures
#: marked every node down ("no live upstreams", 502s, measured); the client retries instead.
NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {pid};
error_log {error} warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    log_format status '$status $request_method $upstream_addr $upstream_status';
    access_log {access} status;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream comet {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port}{reuseport};
        location / {{
            proxy_pass http://comet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 75s;
            proxy_connect_timeout 5s;
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""

"""The deployed topology in one object, and the faults of the chaos run, each followed by its recovery.

:class:`Topology` is Sentinel-managed Redis (a master, a replica, three sentinels), three
``geventcomet serve --workers 2`` nodes on it and nginx round-robin in front
(:mod:`tests.topology_fixtures`). :func:`run_faults` applies the faults in turn while
clients (:mod:`tests.topology_clients`) poll and notify through nginx, and after each one
waits (bounded) until a notify acknowledged after it reached every subscriber of its
channel; it reports, per fault, how long that took and the worst gap between answered
polls of any client.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

from .topology_clients import Notifier, Subscriber, channel_of
from .topology_fixtures import Nginx, Node, SentinelGroup, wait_for


class Topology:
    def __init__(self, workdir: Path, nodes: int = 3, workers: int = 2, extra: tuple[str, ...] = (),
                 nginx_workers: int = 1, min_replicas: int = 0) -> None:
        self.redis = SentinelGroup(workdir, min_replicas_to_write=min_replicas)
        if min_replicas:
            extra = (*extra, "--redis-min-replicas", str(min_replicas), "--redis-replica-timeout", "1")
        self.nodes: list[Node] = []
        self.workdir, self.count, self.workers, self.extra = workdir, nodes, workers, extra
        self.nginx_workers = nginx_workers
        self.nginx: Nginx | None = None

    def start(self) -> None:
        self.redis.start()
        for _ in range(self.count):
            node = Node(self.redis.url, self.workers, self.extra)
            node.start()
            self.nodes.append(node)
        self.nginx = Nginx(self.workdir, [f"127.0.0.1:{node.port}" for node in self.nodes], self.nginx_workers)
        self.nginx.start()

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for index, node in enumerate(self.nodes, 1):
            node.stop()
            if node.proc is not None:  # the last start's log, for a post-mortem
                (self.workdir / f"node-{index}.log").write_text("".join(node.proc.log))
        self.redis.stop()


def kill_worker(topology: Topology) -> str:
    pid = topology.nodes[0].kill_worker()
    return f"kill -9 of worker {pid} of node 1"


def drain_and_restart(topology: Topology) -> str:
    node = topology.nodes[1]
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    code = node.proc.proc.wait(30)
    node.start()
    return f"SIGTERM of node 2 (exit {code}), started again on its port"


def rolling_restart(topology: Topology) -> str:
    node = topology.nodes[2]
    assert node.proc is not None
    since = len(node.proc.log)
    node.signal(signal.SIGHUP)
    node.proc.wait_log("restart done", timeout=60, since=since)
    return "SIGHUP of node 3 (rolling restart) done"


def stall_worker(topology: Topology) -> str:
    """SIGSTOP of a worker of node 2 (started afresh by drain_and_restart: its pids are current);
    its supervisor kills it after --worker-stall-timeout (10 s) and its clients move on."""
    node = topology.nodes[1]
    pid = node.worker_pids()[0]
    assert node.proc is not None
    since = len(node.proc.log)
    os.kill(pid, signal.SIGSTOP)
    node.proc.wait_log(rf"worker pid {pid} has not answered", timeout=60, since=since)
    return f"SIGSTOP of worker {pid} of node 2, killed by its supervisor"


def sentinel_failover(topology: Topology) -> str:
    topology.redis.wait_replicas_in_sync()
    new = topology.redis.failover()
    return f"SENTINEL FAILOVER: master now on {new}"


def kill_master(topology: Topology) -> str:
    topology.redis.wait_replicas_in_sync()
    old, new = topology.redis.kill_master()
    return f"kill -9 of the master {old}: master now on {new}"


SHORT_FAULTS: list[Callable[[Topology], str]] = [kill_worker, drain_and_restart, rolling_restart, sentinel_failover]
LONG_FAULTS = [kill_worker, drain_and_restart, rolling_restart, stall_worker, sentinel_failover, kill_master]


def delivered_after(subscribers: list[Subscriber], notifier: Notifier, since: float) -> bool:
    """For each channel, the first notify acknowledged after ``since`` reached all its subscribers."""
    first: dict[str, int] = {}
    for n, at in notifier.acked.items():
        channel = channel_of(n, notifier.channels)
        if at > since and (channel not in first or n < first[channel]):
            first[channel] = n
    if len(first) < notifier.channels:
        return False
    return all(first[s.channel] in s.got or s.unrecovered for s in subscribers)


def run_faults(topology: Topology, faults: list[Callable[[Topology], str]], subscribers: list[Subscriber],
               notifier: Notifier, recover_s: float = 60) -> list[dict]:
    """Each fault, then the wait for delivery to resume; one report line per fault."""
    report = []
    for fault in faults:
        started = time.monotonic()
        what = fault(topology)
        done = time.monotonic()
        wait_for(lambda: delivered_after(subscribers, notifier, done), recover_s, f"delivery after: {what}",
                 interval=0.1)
        recovered = time.monotonic()
        report.append({"fault": what, "started": started, "recovered": recovered, "fault_s": round(done - started, 2),
                       "delivery_resumed_s": round(recovered - done, 2),
                       "worst_reconnect_gap_s": round(max(s.worst_gap(started, recovered) for s in subscribers), 2)})
    return report

"""Three nodes behind real nginx on Sentinel-managed Redis, through worker kills, drains, restarts, a failover.

The short version of bench/topology.py: 300 clients long-poll (one in ten on SSE) through
nginx (round robin, no sticky sessions) while notifies go through it at a steady rate with Idempotency-Keys;
meanwhile, in turn, a node's worker is killed (-9), a node is drained (SIGTERM) and
started again, a node is restarted worker by worker (SIGHUP) and Redis fails over
(SENTINEL FAILOVER). Every acknowledged notify must reach every client of its channel
after its first poll, in order, without a duplicate in a reply, unless the client was told
``recovered: false``; with ``--redis-min-replicas 1`` never that either. No poll may take
more than its timeout plus POLL_OVERRUN_BOUND_S.
"""
import shutil

import gevent
import pytest
from gevent.event import Event

from geventcomet.backends import BACKENDS

from .conftest import require_binary
from .topology_chaos import SHORT_FAULTS, Topology, run_faults
from .topology_clients import Notifier, caught_up, make_subscriber, verdict
from .topology_fixtures import wait_for

CLIENTS, CHANNELS, RATE = 300, 10, 10
#: A poll answered later than its timeout plus this is a failure (docs/topology.md): a
#: node dying mid-poll costs nginx's connect retry to the next node and Sentinel's failover.
POLL_OVERRUN_BOUND_S = 15

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif("redis+sentinel" not in BACKENDS,
                       reason="needs the redis+sentinel scheme (h18-redis.patch to backends/__init__.py)"),
    pytest.mark.skipif(not shutil.which("/usr/sbin/nginx") and not shutil.which("nginx"), reason="no nginx"),
]


@pytest.fixture
def topology(tmp_path, request):
    require_binary("redis-sentinel")
    deployed = Topology(tmp_path, min_replicas=request.param)
    try:
        deployed.start()
        yield deployed
    finally:
        deployed.stop()


@pytest.mark.parametrize("topology", [1], indirect=True, ids=["min-replicas-1"])
def test_nothing_acknowledged_is_lost_through_the_faults(topology):
    stop, subscribers = Event(), [make_subscriber(topology.url, i, CHANNELS) for i in range(CLIENTS)]
    notifier = Notifier(topology.url, CHANNELS, RATE)
    polls = [gevent.spawn(sub.run, stop) for sub in subscribers]
    wait_for(lambda: all(sub.started_at for sub in subscribers), 30, "every client's first poll")
    notify_stop = Event()
    notifying = gevent.spawn(notifier.run, notify_stop)
    try:
        report = run_faults(topology, SHORT_FAULTS, subscribers, notifier)
    finally:
        notify_stop.set()
        notifying.join(timeout=70)
    wait_for(lambda: caught_up(subscribers, notifier), 30, "every client to catch up")
    stop.set()
    gevent.killall(polls, timeout=10)
    result = verdict(subscribers, notifier)
    print(report, result)
    assert notifying.exception is None
    assert result["acked"] >= 40  # the faults take ~30 s; the 300 clients share this process
    assert result["lost"] == 0 and result["silently_lost"] == 0, result
    assert result["recovered_false"] == 0, result  # --redis-min-replicas 1
    assert result["sse_clients"] == CLIENTS // 10
    assert result["out_of_order_or_repeated"] == 0 and result["duplicates_in_a_reply"] == 0, result
    assert result["worst_poll_overrun_s"] < POLL_OVERRUN_BOUND_S, result

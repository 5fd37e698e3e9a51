"""A steady stream into one Subscriber across failures: a SQLite server restarted, Redis
restarted (its data lost: a new epoch), a worker killed under ``--workers 3``. Each event
arrives once, in order; events are missing only behind a Gap the server announced.
(The 10,000-event version of each is ``bench/bench_client.py --chaos``.)"""
import os
import signal

import pytest

from geventcomet.client import Backoff, Gap, Publisher, Subscriber

from .client_fixtures import Collector, FaultProxy, SteadyPublisher
from .helpers import ServerProcess
from .test_client_subscriber import first_cursor

#: A short run; ``bench/bench_client.py chaos`` sets the variable (10,000 events).
COUNT = int(os.environ.get("GEVENTCOMET_CHAOS_COUNT", "450"))
#: The stream runs at a few hundred events/s on a loaded machine: time in proportion.
TIMEOUT_S = 120 + COUNT // 20
FAST = Backoff(0.01, 0.3)


def check_stream(items, count, gaps_allowed):
    """Every published ``n`` (0..count-1) once, in order, except behind an announced gap."""
    last, previous, gaps = None, -1, 0
    for item in items:
        if isinstance(item, Gap):
            gaps += 1
            last = "gap"
            continue
        n = item.data
        if last == "gap":
            assert n > previous, f"{n} came again after a gap"
        elif last is None:
            assert n == 0, f"the first event is {n}"
        else:
            assert n == last + 1, f"{n} follows {last} without a gap"
        last = previous = n
    assert last == count - 1, f"the stream ended at {last}"
    assert gaps <= gaps_allowed, f"{gaps} gaps"
    return gaps


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def stream(url, publish_url):
    """A subscriber on ``url`` of ``news`` from its start, and a publisher."""
    subscriber = Subscriber(url, "news", cursor=first_cursor(url, "news"), poll_timeout_s=10, backoff=FAST)
    collector = Collector(subscriber)
    publisher = Publisher(publish_url, backoff=FAST, retry_for_s=60)
    return collector, publisher


@pytest.mark.timeout(TIMEOUT_S)
def test_a_sqlite_server_restart(tmp_path):
    database = f"sqlite:///{tmp_path}/steady.db"
    first = ServerProcess("--backend", database, "--test-hooks")
    proxy = FaultProxy(("127.0.0.1", port_of(first.url)), every=10**9)
    second = None
    try:
        collector, publisher = stream(proxy.url, proxy.url)
        steady = SteadyPublisher(publisher, "news", COUNT, rate=400)
        steady.wait_published(COUNT // 3)
        assert first.terminate() == 0
        second = ServerProcess("--backend", database)
        proxy.upstream = ("127.0.0.1", port_of(second.url))
        steady.join(TIMEOUT_S)
        collector.wait_for(COUNT, TIMEOUT_S)
        collector.stop()
        publisher.close()
    finally:
        proxy.close()
        first.stop()
        if second is not None:
            second.stop()
    assert steady.ids == list(range(1, COUNT + 1))  # each publish stored once
    assert check_stream(collector.items, COUNT, gaps_allowed=0) == 0


@pytest.mark.timeout(TIMEOUT_S)
def test_a_redis_restart(redis_server, redis_url):
    server = ServerProcess("--backend", redis_url)
    try:
        collector, publisher = stream(server.url, server.url)
        steady = SteadyPublisher(publisher, "news", COUNT, rate=400)
        steady.wait_published(COUNT // 3)
        redis_server.restart()  # no persistence: every event and the epoch are gone
        steady.join(TIMEOUT_S)
        collector.wait_for(1)
        wait_for_value(collector, COUNT - 1, TIMEOUT_S)
        collector.stop()
        publisher.close()
    finally:
        server.stop()
    check_stream(collector.items, COUNT, gaps_allowed=1)  # the server said where history was lost


@pytest.mark.timeout(TIMEOUT_S)
def test_a_worker_killed_under_three_workers(redis_url):
    server = ServerProcess("--workers", "3", "--backend", redis_url, ready_timeout=40)
    try:
        assert server.ready is not None and len(server.ready.workers) == 3
        collector, publisher = stream(server.url, server.url)
        steady = SteadyPublisher(publisher, "news", COUNT, rate=400)
        steady.wait_published(COUNT // 3)
        os.kill(int(server.ready.workers[0]), signal.SIGKILL)
        steady.wait_published(2 * COUNT // 3)
        os.kill(int(server.ready.workers[1]), signal.SIGKILL)
        steady.join(TIMEOUT_S)
        wait_for_value(collector, COUNT - 1, TIMEOUT_S)
        collector.stop()
        publisher.close()
    finally:
        server.stop()
    assert sorted(steady.ids) == steady.ids and len(set(steady.ids)) == COUNT  # each stored once
    assert check_stream(collector.items, COUNT, gaps_allowed=0) == 0


def wait_for_value(collector, value, timeout=60):
    import gevent
    with gevent.Timeout(timeout, AssertionError(f"{value} never arrived")):
        while not collector.events or collector.events[-1].data != value:
            collector.wait_for(len(collector.events) + 1, timeout)

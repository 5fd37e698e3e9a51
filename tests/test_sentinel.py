"""Redis behind Sentinel: the URL, following a failover, the fence against lost writes, --redis-min-replicas.

A real master, replica and three sentinels (tests/topology_fixtures.py) per test; the
failovers are real (``SENTINEL FAILOVER``, kill -9 of the master) and every wait is on
what Sentinel reports.
"""
import logging
import os
import signal

import gevent
import pytest
import requests

from geventcomet import Config
from geventcomet.backends import BACKENDS
from geventcomet.backends.redis import RedisBackend
from geventcomet.backends.redis_sentinel import parse_sentinel_url
from geventcomet.errors import BackendError

from .conftest import require_binary
from .helpers import Comet
from .services import free_port
from .topology_fixtures import SentinelGroup, wait_for

PATCHED = "redis+sentinel" in BACKENDS  # /work/notes/h18-redis.patch applied
needs_patch = pytest.mark.skipif(not PATCHED, reason="needs the redis+sentinel scheme and WAIT wiring "
                                                     "(h18-redis.patch to redis.py/redis_scripts.py)")


@pytest.fixture
def sentinels(tmp_path):
    require_binary("redis-sentinel")
    group = SentinelGroup(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def sentinel_server(start_server, sentinels):
    def start(**overrides):
        config = Config(backend=sentinels.url, **overrides)
        return start_server(backend=RedisBackend(config), **overrides)
    return start


def notify_acked(url: str, channel: str, data, key: str, deadline_s: float = 30) -> dict:
    """Notify with an Idempotency-Key, retrying 503s and cut connections until acknowledged."""
    http = requests.Session()
    with gevent.Timeout(deadline_s, AssertionError(f"notify {key} never acknowledged")):
        while True:
            try:
                reply = http.post(url + "/notify", json={"channel": channel, "data": data},
                                  headers={"Idempotency-Key": key}, timeout=10)
            except requests.RequestException:
                gevent.sleep(0.05)  # pacing a retry: nothing to wait on while Redis fails over
                continue
            if reply.status_code == 200:
                return reply.json()
            assert reply.status_code == 503, reply.text
            gevent.sleep(0.05)


def poll(comet: Comet, channel: str, cursor: str | None, client: str | None) -> dict:
    """One poll that retries 503s (Redis failing over) with the same cursor (none: a short first poll)."""
    params = {"timeout": 2 if cursor else 0.1}
    if cursor:
        params.update(since=cursor, client=client)
    with gevent.Timeout(30, AssertionError("no poll answered 200")):
        while True:
            reply = comet.http.get(comet.url + "/register", params={**params, "channel": channel}, timeout=15)
            if reply.status_code == 200:
                return reply.json()
            assert reply.status_code == 503, reply.text
            gevent.sleep(0.05)  # pacing a retry


@pytest.mark.parametrize("url, expected", [
    ("redis+sentinel://127.0.0.1:26379/mymaster/0", ([("127.0.0.1", 26379)], "mymaster", 0, None, None)),
    ("redis+sentinel://a:1,b:2,[::1]:3/svc/4", ([("a", 1), ("b", 2), ("::1", 3)], "svc", 4, None, None)),
    ("redis+sentinel://:pw@h:1/svc", ([("h", 1)], "svc", 0, None, "pw")),
    ("redis+sentinel://u:p%40w@h:1/svc/2", ([("h", 1)], "svc", 2, "u", "p@w")),
])
def test_sentinel_urls(url, expected):
    assert tuple(parse_sentinel_url(url)) == expected


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://h:1", "SERVICE_NAME"), ("redis+sentinel://h/svc/0", "HOST:PORT"),
    ("redis+sentinel://h:x/svc/0", "HOST:PORT"), ("redis+sentinel://h:1/svc/zero", "number"),
    ("redis+sentinel://h:99999/svc", "HOST:PORT"), ("redis+sentinel://h:1/a/1/extra", "SERVICE_NAME"),
])
def test_bad_sentinel_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_sentinel_url(url)


def test_unreachable_sentinels_are_a_clear_start_up_error():
    port = free_port()
    with pytest.raises(BackendError) as refused:
        RedisBackend(Config(backend=f"redis+sentinel://:secret@127.0.0.1:{port}/svc/0"))
    assert str(refused.value) == (f"cannot reach Redis at redis+sentinel://:***@127.0.0.1:{port}/svc/0: "
                                  f"no Sentinel at 127.0.0.1:{port} answered with a master for 'svc'")


def test_a_failover_is_followed_and_logged_once(sentinel_server, sentinels, caplog):
    caplog.set_level(logging.INFO, logger="geventcomet.backends.redis_sentinel")
    server = sentinel_server()
    comet = Comet(server.url)
    first = poll(comet, "news", None, None)
    notify_acked(server.url, "news", "before", "k1")
    got = poll(comet, "news", first["cursor"], first["client"])
    assert [e["data"] for e in got["events"]] == ["before"]
    sentinels.wait_replicas_in_sync()
    old = sentinels.master_port()
    new = sentinels.failover()
    notify_acked(server.url, "news", "after", "k2")
    again = poll(comet, "news", got["cursor"], got["client"])
    assert [e["data"] for e in again["events"]] == ["after"] and again["recovered"] is True
    assert again["epoch"] == got["epoch"]  # nothing was lost: the new master kept the epoch
    switches = [r.getMessage() for r in caplog.records if "switched" in r.getMessage()]
    assert switches == [f"Redis master of gcmaster switched 127.0.0.1:{old} -> 127.0.0.1:{new} (Sentinel); "
                        "checking it has every event this process heard of"]


def test_writes_lost_in_a_failover_are_never_a_quiet_skip(sentinel_server, sentinels):
    """The replica misses two acknowledged events (stopped, its link cut), then the master dies."""
    server = sentinel_server()
    comet = Comet(server.url)
    start = poll(comet, "news", None, None)
    notify_acked(server.url, "news", 1, "k1")
    sentinels.wait_replicas_in_sync()
    replica = next(p for p in sentinels.redis_ports if p != sentinels.master_port())
    seen = poll(comet, "news", start["cursor"], start["client"])
    os.kill(sentinels.procs[replica].pid, signal.SIGSTOP)
    try:  # the master drops its link to the stopped replica: nothing more reaches it
        sentinels.client(sentinels.master_port()).client_kill_filter(_type="replica")
        for n in (2, 3):  # acknowledged by the master alone
            notify_acked(server.url, "news", n, f"k{n}")
        ahead = poll(comet, "news", seen["cursor"], seen["client"])
        assert [e["data"] for e in ahead["events"]] == [2, 3]
        master = sentinels.master_port()
        sentinels.procs[master].kill()
        sentinels.procs[master].wait(10)
    finally:
        os.kill(sentinels.procs[replica].pid, signal.SIGCONT)
    assert sentinels.wait_master_changed(master) == replica
    for n in (4, 5, 6):  # ids 2 and 3 again on the new master, were it not for the fence
        notify_acked(server.url, "news", n, f"k{n}")
    resumed = poll(comet, "news", ahead["cursor"], ahead["client"])
    assert resumed["recovered"] is False, resumed
    assert resumed["epoch"] != ahead["epoch"]
    assert [e["data"] for e in resumed["events"]] == [1, 4, 5, 6]  # what the new master has, ids fresh


@needs_patch
def test_min_replicas_acknowledges_only_replicated_notifies(sentinel_server, sentinels):
    server = sentinel_server(redis_min_replicas=1, redis_replica_timeout_s=0.3)
    comet = Comet(server.url)
    start = poll(comet, "news", None, None)
    notify_acked(server.url, "news", 1, "k1")
    replica = next(p for p in sentinels.redis_ports if p != sentinels.master_port())
    os.kill(sentinels.procs[replica].pid, signal.SIGSTOP)
    try:
        refused = comet.http.post(server.url + "/notify", json={"channel": "news", "data": 2},
                                  headers={"Idempotency-Key": "k2"}, timeout=10)
        assert refused.status_code == 503, refused.text
        assert "replicas" in refused.json()["error"]
    finally:
        os.kill(sentinels.procs[replica].pid, signal.SIGCONT)
    notify_acked(server.url, "news", 2, "k2")  # the retry: the replica has caught up
    got = poll(comet, "news", start["cursor"], start["client"])
    assert [e["data"] for e in got["events"]] == [1, 2]


@needs_patch
def test_min_replicas_loses_nothing_when_the_master_is_killed(sentinel_server, sentinels):
    server = sentinel_server(redis_min_replicas=1, redis_replica_timeout_s=0.5)
    comet = Comet(server.url)
    start = poll(comet, "news", None, None)
    for n in range(1, 21):
        notify_acked(server.url, "news", n, f"k{n}")
    seen = poll(comet, "news", start["cursor"], start["client"])
    old, new = sentinels.kill_master()
    for n in range(21, 26):
        notify_acked(server.url, "news", n, f"k{n}")
    wait_for(lambda: sentinels.master_port() == new, 10, "the master to stay put")
    resumed = poll(comet, "news", seen["cursor"], seen["client"])
    assert resumed["recovered"] is True and resumed["epoch"] == seen["epoch"]
    assert [e["data"] for e in resumed["events"]] == list(range(21, 26))

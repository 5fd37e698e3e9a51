"""Redis: no silent loss across a redis-server restart, idempotent retries, one listener per process.

Everything runs against the session's private redis-server (tests/services.py),
which really is stopped and started again; servers are real, on loopback ports.
"""
import json
import re
import subprocess
import sys
import time

import gevent
import pytest
import redis
import requests
from gevent.event import Event

from geventcomet import Config, clientid
from geventcomet.backends import EMPTY_PAGE, open_backend
from geventcomet.backends import redis_scripts as scripts
from geventcomet.errors import BackendError

from .helpers import Changes, Comet
from .services import free_port


@pytest.fixture
def redis_servers(start_server, redis_url):
    """Factory: in-process servers sharing the test's Redis, as separate workers would."""

    def start(**overrides):
        backend = open_backend(Config(backend=redis_url, **overrides))
        return start_server(backend=backend, **overrides)

    return start


def poll_forever(url, channel, log, stop, changes=None):
    """A client polling with its cursor; records every reply's events, epoch and recovered flag."""
    http, cursor, client = requests.Session(), None, None
    while not stop.is_set():
        params = {"channel": channel, "timeout": 1}
        if cursor:
            params["since"], params["client"] = cursor, client  # the id the server minted
        try:
            reply = http.get(url + "/register", params=params, timeout=10)
        except requests.RequestException:
            stop.wait(0.05)  # pace the retries while Redis restarts; return at once when stopped
            continue
        if reply.status_code != 200:  # 503 while Redis is down: poll again with the same cursor
            stop.wait(0.05)
            continue
        body = reply.json()
        log.append(body)
        cursor, client = body["cursor"], body["client"]
        if changes is not None:
            changes.changed()


def notify_with_retries(url, channel, n, acked):
    """Notify ``n`` with an Idempotency-Key, retrying 503s and dropped connections until acknowledged."""
    http = requests.Session()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            reply = http.post(url + "/notify", json={"channel": channel, "data": n},
                              headers={"Idempotency-Key": f"n-{n}"}, timeout=10)
        except requests.RequestException:
            gevent.sleep(0.05)  # pacing a retry, not waiting for something: no event to wait on
            continue
        if reply.status_code == 200:
            acked.append((n, time.monotonic()))
            return
        assert reply.status_code == 503 and reply.headers.get("Retry-After"), reply.text
        gevent.sleep(0.05)  # likewise (Retry-After is in whole seconds; this test cannot wait that long)
    raise AssertionError(f"notify {n} never acknowledged")


def test_restart_of_redis_during_notifies_loses_nothing_silently(redis_servers, redis_server):
    reader, writer = redis_servers(), redis_servers()  # two "workers" on one Redis
    replies, acked, stop, changes = [], [], Event(), Changes()
    poller = gevent.spawn(poll_forever, reader.url, "news", replies, stop, changes)
    reader.wait_waiting(1)
    restarted_at = None
    for n in range(300):
        notify_with_retries(writer.url, "news", n, acked)
        if n == 150:
            redis_server.restart()  # every key is gone: a new epoch, ids start again
            restarted_at = time.monotonic()
    changes.wait_until(lambda: any(e["data"] == 299 for r in replies for e in r["events"]), 10,
                       "the poller never caught up")
    stop.set()
    poller.join(timeout=5)

    delivered = {e["data"] for r in replies for e in r["events"]}
    epochs = [r["epoch"] for r in replies]
    assert len(set(epochs)) == 2, "the restart must show up as a new epoch"
    first_new = epochs.index(epochs[-1])
    assert replies[first_new]["recovered"] is False  # the loss is reported, not skipped
    for n, at in acked:
        if at > restarted_at:
            assert n in delivered, f"event {n} was acknowledged after the restart and never delivered"
    lost = {n for n, at in acked if at <= restarted_at} - delivered
    assert all(n > 100 for n in lost)  # only what Redis held when it died, and that was reported
    assert set(range(152, 300)) <= delivered
    for epoch in set(epochs):  # within an epoch: ids contiguous, no duplicates
        got = [e["id"] for r in replies if r["epoch"] == epoch for e in r["events"]]
        assert got == list(range(got[0], got[0] + len(got)))


def test_a_retry_after_a_dropped_connection_stores_one_event(redis_url):
    backend = open_backend(Config(backend=redis_url))
    backend.start(lambda channel: 0, lambda: 0)
    try:
        assert backend.publish("news", '"warm-up"') == 1
        admin = redis.Redis.from_url(redis_url)
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # the pooled connection dies
        try:
            first = backend.publish("news", '"once"', "key-1")
        except BackendError:
            first = None  # not acknowledged (redis-py did not retry it behind our back)
        second = backend.publish("news", '"once"', "key-1")  # the caller's retry, same key
        assert first in (None, second) and second == 2
        assert backend.publish("news", '"once"', "key-1") == 2
        read = backend.read("news", 1, backend.epoch)
        assert [json.loads(e)["data"] for e in read.events] == ["once"]
    finally:
        backend.close()


def test_notify_answers_503_while_redis_is_down_and_works_after(redis_servers, redis_server):
    server = redis_servers()
    comet = Comet(server.url)
    assert comet.notify("news", 1)["id"] == 1
    redis_server.stop()
    try:
        reply = requests.post(server.url + "/notify", json={"channel": "news", "data": 2}, timeout=10)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
        assert "Redis" in reply.json()["error"]
    finally:
        redis_server.start()
    # redis-server is up again (start() waits for it). The writer's pooled connection
    # died with it: the first publish may still fail on it (never retried behind the
    # caller's back), and the pool opens a new connection for the next.
    reply = requests.post(server.url + "/notify", json={"channel": "news", "data": 3}, timeout=10)
    if reply.status_code == 503:
        reply = requests.post(server.url + "/notify", json={"channel": "news", "data": 3}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == 1  # a new epoch: Redis lost everything


def test_a_notify_on_one_process_wakes_waiters_on_another(redis_servers):
    a, b = redis_servers(), redis_servers()
    polls = [gevent.spawn(Comet(a.url).register, "news", timeout=10) for _ in range(20)]
    a.wait_waiting(20)
    assert Comet(b.url).notify("news", {"x": 1})["id"] == 1
    for poll in polls:
        assert poll.get(timeout=5)["events"] == [{"channel": "news", "id": 1, "data": {"x": 1}}]


def test_targeted_client_notify_crosses_processes(redis_servers):
    a, b = redis_servers(), redis_servers()
    alice = Comet(a.url).register("news", timeout=0)["client"]  # minted by a
    poll = gevent.spawn(Comet(a.url).register, "news", client=alice, timeout=10)
    a.wait_waiting(1)
    assert Comet(b.url).notify(client=alice, data="hi")["id"] == 1
    assert poll.get(timeout=5)["events"] == [{"channel": "@" + alice, "id": 1, "data": "hi"}]
    Comet(b.url).notify(client="nobody", data="x", expect=404)


def test_one_pubsub_connection_per_process_whatever_the_waiters(redis_servers, redis_url):
    server = redis_servers()
    polls = [gevent.spawn(Comet(server.url).register, f"ch{i}", timeout=10) for i in range(50)]
    server.wait_waiting(50)
    clients = redis.Redis.from_url(redis_url).client_list()
    assert sum(1 for c in clients if int(c.get("sub", 0)) > 0) == 1
    assert len(clients) <= 1 + 2 * 16 + 1  # bounded pools, not one connection per waiter
    gevent.killall(polls, timeout=5)


def test_unreachable_redis_is_a_clear_startup_error():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BackendError, match="cannot reach Redis"):
        open_backend(Config(backend=url))
    proc = subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--port", "0", "--backend", url],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot start: cannot reach Redis at redis://127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_mass_repoll_after_a_fanout_gets_no_503_from_a_tiny_pool(redis_url, start_server, monkeypatch):
    """300 clients on 2 pooled connections that give up after 10 ms: only a real outage may 503.

    Every poll's registration is due for a refresh (as after a long ramp), and all 300
    re-poll in the same instant after one notify, as after a fan-out.
    """
    from geventcomet.backends import redis as redis_backend
    from geventcomet.backends import redis_pools
    monkeypatch.setattr(redis_backend, "POOL_CONNECTIONS", 2)  # the number of flushers follows it
    monkeypatch.setattr(redis_pools, "POOL_CONNECTIONS", 2)
    monkeypatch.setattr(redis_pools, "POOL_TIMEOUT_S", 0.01)
    backend = open_backend(Config(backend=redis_url))
    backend._registrations.refresh_s = 0  # every poll refreshes its registration
    server = start_server(backend=backend)
    statuses, received, go, first_replies, answered = [], [], Event(), Event(), [0]

    def client(i):
        http = requests.Session()
        params = {"channel": "news", "client": clientid.mint(backend.client_secret()), "timeout": 0}
        go.wait()
        first = http.get(server.url + "/register", params=params, timeout=30)
        statuses.append(first.status_code)
        answered[0] += 1
        if answered[0] == 300:
            first_replies.set()
        if first.status_code != 200:
            return
        held = http.get(server.url + "/register", timeout=30,
                        params={**params, "timeout": 20, "since": first.json()["cursor"]})
        statuses.append(held.status_code)
        if held.status_code != 200:
            return
        received.extend(held.json()["events"])
        again = http.get(server.url + "/register", params={**params, "since": held.json()["cursor"]}, timeout=30)
        statuses.append(again.status_code)

    clients = [gevent.spawn(client, i) for i in range(300)]
    go.set()  # all first polls at once: 300 new registrations and reads
    # A poll is parked before its first read, so `waiting` counts first polls still reading
    # (timeout 0 or not): only once all are answered does 300 waiting mean 300 held polls.
    assert first_replies.wait(timeout=30)
    server.wait_waiting(300, timeout=30)
    assert Comet(server.url).notify("news", "all")["id"] == 1
    gevent.joinall(clients, timeout=30, raise_error=True)
    outcome = {"statuses": {s: statuses.count(s) for s in set(statuses)},
               "clients still running": sum(not c.dead for c in clients)}
    assert len(received) == 300, outcome
    assert statuses.count(200) == 900, outcome


def test_each_script_is_given_exactly_the_keys_and_arguments_it_reads():
    """Each ``*_args`` builds its script's layout; a slot added to one and not the other fails here."""
    settings = scripts.StreamSettings.of(Config(), "origin")
    calls = {  # script -> (its call, whether it reads a variable number of ARGV)
        "PUBLISH": (scripts.publish_args(settings, "c", b"p", b"s", "k", ""), False),
        "READ": (scripts.read_args("c", 1, "e", EMPTY_PAGE, "cand", 1000, ""), False),
        "REGISTER": (scripts.register_args(3, {"a": 1.0}), True),
        "EXPIRE": (scripts.expire_args(1.0, 10), False),
        "SWEEP": (scripts.sweep_args(["x"]), True),
    }
    for name, ((keys, args), variable) in calls.items():
        text = getattr(scripts, name)
        assert max(int(n) for n in re.findall(r"KEYS\[(\d+)\]", text)) == len(keys), name
        highest = max(int(n) for n in re.findall(r"ARGV\[(\d+)\]", text))
        assert highest <= len(args) if variable else highest == len(args), name


@pytest.mark.parametrize("batch", [False, True])
def test_a_retried_notify_is_readable_at_once_even_before_its_wake_up_arrives(redis_servers, monkeypatch, batch):
    """A notify stored by one try (its reply lost, or a WAIT that fell short) and acknowledged on
    its retry: the retry's process may not have heard the wake-up yet, and its tail then said
    "nothing new" (1 run in 12 of the Sentinel min-replicas test). The retry drops the tail."""
    first, second = redis_servers(), redis_servers()
    comet = Comet(second.url)
    start = comet.register("retried", timeout=0)  # the channel's tail in the second process begins here
    tails = second.app.backend._tails
    apply = tails.apply
    # The first try's wake-up has not reached the second process yet (pub/sub is only a hint).
    monkeypatch.setattr(tails, "apply", lambda channel, seq, encoded, own: own and apply(channel, seq, encoded, own))
    key = {"Idempotency-Key": "once"}
    body = {"events": [{"channel": "retried", "data": 1}]} if batch else {"channel": "retried", "data": 1}
    for server in (first, second):  # the first try, then the retry (acknowledged)
        reply = requests.post(server.url + "/notify", json=body, headers=key, timeout=10).json()
        assert (reply["events"][0] if batch else reply)["id"] == 1
    got = comet.register("retried", since=start["cursor"], client=start["client"], timeout=0)
    assert [event["data"] for event in got["events"]] == [1]

"""Issue 11, general defences: registrations, Idempotency-Keys and backlog bytes are bounded.

Past ``max_clients_total`` a new client gets 503 (a refresh still works); past
``max_idempotency_keys`` a notify with a new key gets 503 (a retry of a remembered key
still answers its id); past ``max_backlog_bytes`` the oldest events of the least recently
published channels are trimmed and their readers told ``recovered: false``. Each 503
names its bound and flag, nothing stored is lost, and expiry (a driven clock, never a
sleep) frees room. Over HTTP against real servers, then as a contract on the backends.
"""
import json

import gevent
import pytest

from geventcomet import Config, clientid, protocol
from geventcomet.backends.memory import MemoryBackend
from geventcomet.backends.redis import RedisBackend
from geventcomet.backends.sqlite import SQLiteBackend
from geventcomet.errors import BackendError, ClientLimitReached, IdempotencyKeyLimitReached, LimitReached

from .helpers import Clock, Comet

SETTINGS = dict(client_ttl_s=200, timeout_s=2, max_timeout_s=5, idempotency_ttl_s=60)
KINDS = {"memory": MemoryBackend, "sqlite": SQLiteBackend, "redis": RedisBackend}


@pytest.fixture
def open_backend(request, tmp_path):
    """Factory: ``open_backend(kind, clock, **config)``; a sqlite file is the same per test."""
    opened = []

    def open_(kind: str, clock: Clock, **overrides):
        if kind == "memory":
            url = "memory"
        elif kind == "sqlite":
            url = f"sqlite://{tmp_path}/bounds.db"
        else:
            url = request.getfixturevalue("redis_url")
        backend = KINDS[kind](Config(backend=url, **SETTINGS, **overrides), clock=clock)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.close()  # closing twice (after a server stopped it) is harmless


def refused(reply, flag: str, limit: int) -> str:
    """Assert a 503 whose strict JSON error names the bound; return the message."""
    assert reply.status_code == 503, (reply.status_code, reply.text)
    message = json.loads(reply.content, parse_constant=lambda name: pytest.fail(f"served {name}"))["error"]
    assert flag in message and f"at most {limit}" in message, message
    assert reply.headers.get("Retry-After") == "10"  # a bound, freed as state ages out: not a failure
    assert not message.startswith("backend unavailable")
    return message


# -- over HTTP ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_new_client_past_the_bound_gets_503_and_expiry_frees_room(kind, open_backend, start_server):
    clock = Clock()
    server = start_server(backend=open_backend(kind, clock, max_clients_total=2), **SETTINGS)
    comet = Comet(server.url)
    a, b, c = (clientid.mint(server.app.backend.client_secret()) for _ in range(3))  # ids as the server mints them
    start = comet.register(client=a, timeout=0)
    comet.register(client=b, timeout=0)
    assert comet.notify(client=a, data="kept")["id"] == 1
    for params in ({"client": c, "timeout": 0}, {"channel": "public", "timeout": 0}):  # named, or a fresh id
        reply = comet.http.get(server.url + "/register", params=params, timeout=10)
        refused(reply, "--max-clients-total", 2)
    # the clients already held carry on: refreshed, notified, their events intact
    again = comet.register(client=a, since=start["cursor"], timeout=0)
    assert [e["data"] for e in again["events"]] == ["kept"] and again["recovered"] is True
    assert comet.notify(client=b, data="also")["id"] == 1
    assert comet.notify("public", "news")["id"] == 1
    assert comet.stats()["clients"] == 2
    clock.now += 300  # both go quiet past the TTL
    assert sorted(server.app.backend.expire_idle()) == sorted([a, b])
    assert comet.register(client=c, timeout=0)["client"] == c
    assert comet.stats()["clients"] == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_new_idempotency_key_past_the_bound_gets_503_and_a_retry_still_answers(kind, open_backend,
                                                                                 start_server):
    clock = Clock()
    server = start_server(backend=open_backend(kind, clock, max_idempotency_keys=2), **SETTINGS)
    comet = Comet(server.url)

    def notify(channel, data, key=None):
        return comet.http.post(server.url + "/notify", json={"channel": channel, "data": data},
                               headers={"Idempotency-Key": key} if key else {}, timeout=10)

    assert notify("n", 1, "K1").json()["id"] == 1
    assert notify("n", 2, "K2").json()["id"] == 2
    refused(notify("n", 3, "K3"), "--max-idempotency-keys", 2)
    refused(notify("m", 3, "K1"), "--max-idempotency-keys", 2)  # keys are per channel: new on m
    assert notify("n", "retry", "K1").json()["id"] == 1  # remembered: answered, not stored again
    assert notify("n", 4).json()["id"] == 3  # without a key, notifies carry on
    events = comet.register("n", since=0, timeout=0)["events"]
    assert [e["data"] for e in events] == [1, 2, 4]
    assert comet.stats()["idempotency_keys"] == 2
    if kind == "redis":
        return  # Redis ages keys on its own clock (PX); the count is covered above
    clock.now += 61  # K1 and K2 age out
    assert notify("n", 5, "K3").json()["id"] == 4
    assert comet.stats()["idempotency_keys"] == 1


def event_size(channel: str, data: object) -> int:
    return len(protocol.encode_event(channel, 1, json.dumps(data)))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_past_the_backlog_budget_the_least_recently_published_channel_is_trimmed_and_told(
        kind, open_backend, start_server):
    pad = "x" * 1000
    budget = 3 * event_size("old", pad) + 10  # three events fit, a fourth does not
    clock = Clock()
    server = start_server(backend=open_backend(kind, clock, max_backlog_bytes=budget), **SETTINGS)
    comet = Comet(server.url)
    behind = comet.register("old", "mid", timeout=0)["cursor"]  # a client at the start of both
    comet.notify("old", pad)
    comet.notify("old", pad)
    comet.notify("mid", pad)
    assert comet.stats()["backlog_events"] == 3
    comet.notify("new", pad)  # over budget: old#1 goes first
    reply = comet.register("old", since=0, timeout=0)
    assert reply["recovered"] is False and [e["id"] for e in reply["events"]] == [2]
    comet.notify("new", pad)  # old#2 goes next
    reply = comet.register("old", "mid", since=behind, timeout=0)
    assert reply["recovered"] is False  # honest, never a silent skip
    assert [(e["channel"], e["id"]) for e in reply["events"]] == [("mid", 1)]
    assert [e["id"] for e in comet.register("new", since=0, timeout=0)["events"]] == [1, 2]
    stats = comet.stats()
    assert stats["backlog_bytes"] <= budget and stats["backlog_events"] == 3
    # One event larger than the whole budget is still stored and readable: only it stays.
    huge = "y" * (budget + 100)
    assert comet.notify("big", huge)["id"] == 1
    reply = comet.register("big", since=0, timeout=0)
    assert [e["data"] for e in reply["events"]] == [huge] and reply["recovered"] is True
    assert comet.stats()["backlog_events"] == 1
    assert comet.notify("old", "after")["id"] == 3  # the trimmed channel keeps its ids


def test_sqlite_trims_the_file_too_and_a_lower_budget_applies_at_load(open_backend, start_server, tmp_path):
    pad = "x" * 1000
    clock = Clock()
    server = start_server(backend=open_backend("sqlite", clock, max_backlog_bytes=2 * event_size("a", pad) + 10),
                          **SETTINGS)
    comet = Comet(server.url)
    for channel in ("a", "b", "c"):
        clock.now += 1  # the load orders channels by last publish
        comet.notify(channel, pad)
    server.stop()  # the deletion of a#1 commits before the file closes
    reopened = open_backend("sqlite", clock)  # the default budget: nothing to trim
    assert reopened.read("a", 0, reopened.epoch).recovered is False
    assert [len(reopened.read(c, 0, reopened.epoch).events) for c in "bc"] == [1, 1]
    reopened.close()
    lower = open_backend("sqlite", clock, max_backlog_bytes=event_size("a", pad))
    assert lower.counts()["backlog_events"] == 1
    assert lower.read("b", 0, lower.epoch).recovered is False
    assert lower.read("c", 0, lower.epoch).events


# -- the contract, on the backends themselves ---------------------------------

def started(backend):
    backend.start(lambda channel: 0, lambda: 0)
    return backend


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_contract_registrations_are_bounded_and_refreshes_are_not(kind, open_backend):
    clock = Clock()
    backend = started(open_backend(kind, clock, max_clients_total=3))
    for client in ("a", "b", "c"):
        backend.register(client)
    with pytest.raises(ClientLimitReached) as refusal:
        backend.register("d")
    assert isinstance(refusal.value, LimitReached) and isinstance(refusal.value, BackendError)
    assert "--max-clients-total" in str(refusal.value)
    backend.register("a")  # a refresh
    assert not backend.is_registered("d") and backend.is_registered("a")
    assert backend.counts()["clients"] == 3
    clock.now += 300
    assert sorted(backend.expire_idle()) == ["a", "b", "c"]
    for client in ("d", "e", "f"):
        backend.register(client)
    assert backend.counts()["clients"] == 3


def test_contract_redis_counts_one_batch_of_new_clients_against_the_bound(open_backend):
    """Registrations queued together go to Redis as one script call: the bound still holds."""
    backend = started(open_backend("redis", Clock(), max_clients_total=5))
    jobs = [gevent.spawn(backend.register, f"c{i}") for i in range(8)]
    gevent.joinall(jobs, timeout=10, raise_error=False)
    assert sum(job.successful() for job in jobs) == 5
    assert all(isinstance(job.exception, ClientLimitReached) for job in jobs if not job.successful())
    assert backend.counts()["clients"] == 5


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_contract_idempotency_keys_are_bounded_and_retries_answer(kind, open_backend):
    clock = Clock()
    backend = started(open_backend(kind, clock, max_idempotency_keys=2))
    assert [backend.publish("ch", '"v"', key) for key in ("k1", "k2")] == [1, 2]
    with pytest.raises(IdempotencyKeyLimitReached):
        backend.publish("ch", '"v"', "k3")
    assert backend.publish("ch", '"v"', "k2") == 2
    assert backend.publish("ch", '"v"') == 3
    assert len(backend.read("ch", 0, backend.epoch).events) == 3
    assert backend.counts()["idempotency_keys"] == 2


def test_contract_sqlite_counts_keys_still_committing(open_backend):
    """Two notifies with new keys at once, room for one: the one committing counts."""
    backend = started(open_backend("sqlite", Clock(), max_idempotency_keys=1))
    jobs = [gevent.spawn(backend.publish, "ch", '"v"', key) for key in ("k1", "k2")]
    gevent.joinall(jobs, timeout=10, raise_error=False)
    assert [job.value for job in jobs] == [1, None]
    assert isinstance(jobs[1].exception, IdempotencyKeyLimitReached)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_contract_the_backlog_budget_trims_the_least_recently_published_first(kind, open_backend):
    """Channels emptied by the budget move out of the way; the newest events stay."""
    size = event_size("c00", "v")
    backend = started(open_backend(kind, Clock(), max_backlog_bytes=10 * size))
    for i in range(10):
        backend.publish(f"c{i:02d}", '"v"')
    backend.publish("c00", '"v"')  # c00 moves to the new end: c01, the least recent, pays
    assert backend.read("c01", 0, backend.epoch).recovered is False
    assert len(backend.read("c00", 0, backend.epoch).events) == 2
    for i in range(10, 40):
        backend.publish(f"c{i:02d}", '"v"')
    counts = backend.counts()
    assert counts["backlog_bytes"] <= 10 * size and counts["backlog_events"] == 10
    assert [len(backend.read(f"c{i:02d}", 0, backend.epoch).events) for i in range(30, 40)] == [1] * 10
    assert all(backend.read(f"c{i:02d}", 0, backend.epoch).recovered is False for i in range(30))

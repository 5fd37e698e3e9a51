"""One contract, three backends: memory, sqlite and redis pass the same tests.

The recovery table is centrifuge's ``clientRecoverTests`` (PITFALLS §1.2): history
size, age, publications and the client's position in; events and ``recovered`` out.
Redis runs against the session's private redis-server, SQLite on a temporary file.
"""
import json

import gevent
import pytest

from geventcomet import Config
from geventcomet.backends import open_backend

from .helpers import Changes

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def make_backend(request, tmp_path):
    """Factory: ``make_backend(**config)`` opens the parametrised backend, started, closed after."""
    opened = []

    def make(**overrides):
        if request.param == "memory":
            url = "memory"
        elif request.param == "sqlite":
            url = f"sqlite://{tmp_path}/contract.db"
        else:
            url = request.getfixturevalue("redis_url")
        backend = open_backend(Config(backend=url, **overrides))
        woken, changes = [], Changes()
        backend.start(lambda channel: woken.append(channel) or changes.changed() or 0, lambda: 0)
        backend.woken, backend.woken_changes = woken, changes
        opened.append(backend)
        return backend

    make.kind = request.param
    yield make
    for backend in opened:
        backend.close()


def ids(read):
    return [json.loads(e)["id"] for e in read.events]


def publish_n(backend, channel, n):
    return [backend.publish(channel, json.dumps({"n": i})) for i in range(n)]


# -- centrifuge's recovery table ---------------------------------------------

def test_empty_stream(make_backend):
    backend = make_backend()
    read = backend.read("news", None, None)
    assert (read.events, read.last_seq, read.recovered, read.epoch) == ([], 0, True, backend.epoch)
    read = backend.read("news", 0, backend.epoch)
    assert (read.events, read.last_seq, read.recovered) == ([], 0, True)


def test_from_position(make_backend):
    backend = make_backend()
    assert publish_n(backend, "news", 10) == list(range(1, 11))
    read = backend.read("news", 8, backend.epoch)
    assert (ids(read), read.last_seq, read.recovered) == ([9, 10], 10, True)


def test_from_position_that_already_gone(make_backend):
    backend = make_backend(backlog=10)
    publish_n(backend, "news", 20)
    read = backend.read("news", 8, backend.epoch)
    assert (ids(read), read.last_seq, read.recovered) == (list(range(11, 21)), 20, False)
    read = backend.read("news", 10, backend.epoch)  # exactly at the edge: nothing missing
    assert (ids(read), read.recovered) == (list(range(11, 21)), True)


def test_from_position_that_not_exist_yet(make_backend):
    backend = make_backend()
    publish_n(backend, "news", 10)
    read = backend.read("news", 108, backend.epoch)
    assert (ids(read), read.last_seq, read.recovered) == ([], 10, False)


def test_same_position_no_pubs_expected(make_backend):
    backend = make_backend()
    publish_n(backend, "news", 10)
    read = backend.read("news", 10, backend.epoch)
    assert (ids(read), read.last_seq, read.recovered) == ([], 10, True)


def test_new_subscriber_starts_now(make_backend):
    backend = make_backend()
    publish_n(backend, "news", 3)
    read = backend.read("news", None, None)
    assert (ids(read), read.last_seq, read.recovered) == ([], 3, True)


def test_from_position_in_expired_stream(make_backend):
    backend = make_backend(backlog_age_s=0.4)
    publish_n(backend, "news", 10)
    assert ids(backend.read("news", 8, backend.epoch)) == [9, 10]
    gevent.sleep(0.7)  # the history's age limit passing is the thing under test
    read = backend.read("news", 8, backend.epoch)
    assert (ids(read), read.last_seq, read.recovered) == ([], 10, False)
    assert backend.publish("news", "1") == 11  # ids continue after the history expired
    read = backend.read("news", 10, backend.epoch)
    assert (ids(read), read.recovered) == ([11], True)


# -- epochs, ids, idempotency ------------------------------------------------

def test_epoch_mismatch_gives_everything_retained_and_not_recovered(make_backend):
    backend = make_backend()
    publish_n(backend, "news", 3)
    read = backend.read("news", 2, "deadbeef")
    assert (ids(read), read.last_seq, read.recovered, read.epoch) == ([1, 2, 3], 3, False, backend.epoch)
    assert backend.epoch.isalnum() and len(backend.epoch) <= 32


def test_events_are_encoded_once_with_channel_id_and_data(make_backend):
    backend = make_backend()
    backend.publish("news", json.dumps({"text": "héllo", "n": [1, 2]}))
    read = backend.read("news", 0, None)
    expected = {"channel": "news", "id": 1, "data": {"text": "héllo", "n": [1, 2]}}
    assert [json.loads(e) for e in read.events] == [expected]


def test_ids_increase_by_one_under_concurrent_publishers(make_backend):
    backend = make_backend()
    jobs = [gevent.spawn(publish_n, backend, "news", 10) for _ in range(20)]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    assert sorted(s for job in jobs for s in job.value) == list(range(1, 201))
    read = backend.read("news", 0, backend.epoch)
    assert ids(read) == list(range(1, 201)) and read.recovered


def test_channels_are_independent(make_backend):
    backend = make_backend()
    assert backend.publish("a", "1") == 1 and backend.publish("b", "2") == 1 and backend.publish("a", "3") == 2
    assert ids(backend.read("a", 0, None)) == [1, 2] and ids(backend.read("b", 0, None)) == [1]


def test_idempotent_publish_stores_one_event(make_backend):
    backend = make_backend()
    first = backend.publish("news", '"once"', "key-1")
    again = backend.publish("news", '"once"', "key-1")
    assert first == again == 1
    assert backend.publish("news", '"other"', "key-2") == 2
    assert ids(backend.read("news", 0, None)) == [1, 2]


def test_concurrent_idempotent_retries_store_one_event(make_backend):
    backend = make_backend()
    jobs = [gevent.spawn(backend.publish, "news", '"x"', "same-key") for _ in range(10)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert {job.value for job in jobs} == {1}
    assert ids(backend.read("news", 0, None)) == [1]


def test_publish_wakes_the_channel(make_backend):
    backend = make_backend()
    backend.publish("news", "1")
    backend.woken_changes.wait_until(lambda: "news" in backend.woken, 5, "news was never woken")


# -- registrations -----------------------------------------------------------

def test_registration_lifecycle_and_expiry(make_backend):
    backend = make_backend(timeout_s=0.1, max_timeout_s=0.2, client_ttl_s=0.5)
    backend.register("alice")
    backend.register("bob")
    assert backend.is_registered("alice") and not backend.is_registered("carol")
    assert backend.counts()["clients"] == 2
    assert backend.publish("@alice", '"private"') == 1
    assert ids(backend.read("@alice", 0, None)) == [1]
    assert "@alice" not in backend.channel_names(10)
    gevent.sleep(0.3)
    backend.register("bob")  # bob polls again: his idle clock restarts
    gevent.sleep(0.35)  # alice is now idle longer than the TTL, bob is not
    assert not backend.is_registered("alice") and backend.is_registered("bob")
    assert sorted(backend.expire_idle()) == ["alice"]
    assert backend.counts()["clients"] == 1
    read = backend.read("@alice", None, None)
    # The private channel went with it; its ids are not reused (see test_backend_reuse.py).
    assert read.events == [] and read.last_seq == 2


def test_counts_and_channel_names(make_backend):
    backend = make_backend()
    for name in ("a", "b", "c"):
        backend.publish(name, "1")
    assert backend.counts()["channels"] == 3
    assert sorted(backend.channel_names(10)) == ["a", "b", "c"]
    assert len(backend.channel_names(2)) == 2

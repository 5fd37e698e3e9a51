"""One contract, three backends: memory, sqlite and redis pass the same tests.

The recovery table is centrifuge's ``clientRecoverTests`` (its ``broker_memory_test.go``): history
size, age, publications and the client's position in; events and ``recovered`` out.
Redis runs against the session's private redis-server, SQLite on a temporary file.
"""
import json

import gevent
import pytest

from geventcomet import Config
from geventcomet.backends import open_backend
from geventcomet.backends.memory import MemoryBackend
from geventcomet.backends.redis import RedisBackend
from geventcomet.backends.sqlite import SQLiteBackend
from geventcomet.errors import BackendError

from .helpers import Changes, Clock

BACKENDS = ["memory", "sqlite", "redis"]
CLASSES = {"memory": MemoryBackend, "sqlite": SQLiteBackend, "redis": RedisBackend}


@pytest.fixture(params=BACKENDS)
def make_backend(request, tmp_path):
    """Factory: ``make_backend(clock=None, **config)`` opens the parametrised backend, started,
    closed after. ``backend.waiting[channel] = n`` pretends n requests wait on a channel."""
    opened = []

    def make(clock=None, **overrides):
        if request.param == "memory":
            url = "memory"
        elif request.param == "sqlite":
            url = f"sqlite://{tmp_path}/contract.db"
        else:
            url = request.getfixturevalue("redis_url")
        config = Config(backend=url, **overrides)
        backend = open_backend(config) if clock is None else CLASSES[request.param](config, clock=clock)
        woken, changes, waiting = [], Changes(), {}
        backend.start(lambda channel: woken.append(channel) or changes.changed() or 0, lambda: 0,
                      lambda channel: waiting.get(channel, 0))
        backend.woken, backend.woken_changes, backend.waiting = woken, changes, waiting
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
    clock = Clock()
    backend = make_backend(clock=clock, backlog_age_s=0.4)
    publish_n(backend, "news", 10)
    assert ids(backend.read("news", 8, backend.epoch)) == [9, 10]
    clock.now += 0.7  # the history's age limit passing is the thing under test
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
    clock = Clock()
    backend = make_backend(clock=clock, timeout_s=0.1, max_timeout_s=0.2, client_ttl_s=0.5)
    backend.register("alice")
    backend.register("bob")
    assert backend.is_registered("alice") and not backend.is_registered("carol")
    assert backend.counts()["clients"] == 2
    assert backend.publish("@alice", '"private"') == 1
    assert ids(backend.read("@alice", 0, None)) == [1]
    assert "@alice" not in backend.channel_names(10)
    clock.now += 0.3
    backend.register("bob")  # bob polls again: his idle clock restarts
    clock.now += 0.35  # alice is now idle longer than the TTL, bob is not
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


def test_a_healthy_backend_says_so(make_backend):
    backend = make_backend()
    backend.publish("news", "1")
    assert backend.health() is None


# -- idempotency keys are per channel (issue 11, items 2 and 3) -----------------

def test_an_idempotency_key_is_scoped_to_its_channel(make_backend):
    backend = make_backend()
    assert backend.publish("A", '"a"', "K") == 1
    assert backend.publish("B", '"b"', "K") == 1  # another channel: another publish
    assert backend.publish("A", '"a"', "K") == 1  # the retry on A is stored once
    assert ids(backend.read("A", 0, None)) == [1] and ids(backend.read("B", 0, None)) == [1]


def test_channels_and_keys_with_colons_never_collide(make_backend):
    backend = make_backend()
    assert backend.publish("X:b", '"first"', "c") == 1
    assert backend.publish("X", '"second"', "b:c") == 1  # gc:i:X:b:c was both, once
    assert [json.loads(e)["data"] for e in backend.read("X", 0, None).events] == ["second"]


# -- ids are never reused when a channel is dropped and created again (item 4) --

def test_a_recreated_private_channel_never_reuses_ids(make_backend):
    clock = Clock()
    backend = make_backend(clock=clock, client_ttl_s=200)
    backend.register("c")
    assert [backend.publish("@c", json.dumps(i)) for i in (1, 2)] == [1, 2]
    assert backend.read("@c", 0, backend.epoch).last_seq == 2  # a client's cursor: ...@c~2
    clock.now += 300  # the client goes quiet past its TTL
    assert backend.expire_idle() == ["c"]
    backend.register("c")
    again = [backend.publish("@c", json.dumps(i)) for i in (3, 4, 5)]
    assert again[0] > 2 and again == list(range(again[0], again[0] + 3))
    read = backend.read("@c", 2, backend.epoch)  # the old cursor: told, never skipped
    assert (ids(read), read.recovered) == (again, False)
    read = backend.read("@c", again[-1], backend.epoch)
    assert (ids(read), read.recovered) == ([], True)


def test_a_subscriber_to_an_absent_channel_gets_its_first_events(make_backend):
    clock = Clock()
    backend = make_backend(clock=clock, client_ttl_s=200)
    backend.register("gone")
    backend.publish("@gone", '"x"')
    clock.now += 300
    backend.expire_idle()  # D is now above 0
    start = backend.read("@new", None, None)
    assert (start.events, start.recovered) == ([], True)
    seq = backend.publish("@new", '"hello"')
    read = backend.read("@new", start.last_seq, backend.epoch)
    assert (ids(read), read.recovered) == ([seq], True)


def age_out_streams(make_backend, backend, *channels):
    """Redis ages a stream out with its own clock (PEXPIRE); do what that expiry does."""
    if make_backend.kind == "redis":
        import redis
        client = redis.Redis.from_url(backend._config.backend)
        client.delete(*[f"gc:s:{c}" for c in channels])
        client.close()


def test_an_aged_out_channel_nobody_waits_on_is_dropped_without_reusing_ids(make_backend):
    clock = Clock()
    backend = make_backend(clock=clock, backlog_age_s=60)
    publish_n(backend, "old", 2)
    publish_n(backend, "watched", 1)
    clock.now += 120  # their whole backlog is now too old
    age_out_streams(make_backend, backend, "old", "watched")
    publish_n(backend, "fresh", 1)
    backend.waiting["watched"] = 1
    backend.expire_idle()
    assert backend.counts()["channels"] == 2  # watched and fresh stay
    assert sorted(backend.channel_names(10)) == ["fresh", "watched"]
    read = backend.read("old", 2, backend.epoch)  # a cursor from its old life
    assert (ids(read), read.recovered) == ([], False)
    seq = backend.publish("old", '"new life"')
    assert seq > 2
    assert backend.read("old", 2, backend.epoch).recovered is False
    assert backend.publish("watched", '"x"') == 2  # kept: its ids simply continue


# -- the bound on channels (item 11) -------------------------------------------

@pytest.mark.parametrize("make_backend", ["memory", "sqlite"], indirect=True)  # Redis: its maxmemory
def test_a_publish_past_the_channel_bound_is_refused(make_backend):
    from geventcomet.errors import ChannelLimitReached
    clock = Clock()
    backend = make_backend(clock=clock, max_channels_total=3, backlog_age_s=60)
    for name in ("a", "b", "c"):
        backend.publish(name, "1")
    with pytest.raises(ChannelLimitReached, match="at most 3"):
        backend.publish("d", "1")
    assert backend.publish("a", "2") == 2  # existing channels carry on
    assert backend.counts()["channels"] == 3 and ids(backend.read("d", 0, None)) == []
    clock.now += 120
    backend.expire_idle()  # all three aged out: room again
    assert backend.publish("d", "1") == 1 + 2 + 1  # D is 2 (a's last): d starts at D + 2
    assert backend.counts()["channels"] == 1


# -- paging (item 7) -----------------------------------------------------------

def read_pages(backend, channels, positions, epoch):
    """Poll as a client would until nothing is left; return the events and the pages' sizes."""
    from geventcomet.longpoll import read_all
    got, pages = [], []
    while True:
        result = read_all(backend, channels, positions, epoch)
        if not result.events:
            return got, pages
        assert result.recovered
        pages.append((len(result.events), sum(map(len, result.events))))
        got += [(json.loads(e)["channel"], json.loads(e)["id"]) for e in result.events]
        positions, epoch = result.positions, result.epoch


def test_a_long_backlog_is_read_in_pages(make_backend):
    backend = make_backend(max_reply_bytes=200_000)
    payload = json.dumps("x" * 40_000)
    for _ in range(50):
        backend.publish("big", payload)
    publish_n(backend, "small", 3)
    readers = [backend]
    if make_backend.kind == "redis":  # a second process has no tail: pages come from the script
        readers.append(make_backend(max_reply_bytes=200_000))
    for reader in readers:
        got, pages = read_pages(reader, ("big", "small"), {"big": 0, "small": 0}, backend.epoch)
        # Every event exactly once, in order within its channel (a page may mix channels).
        assert [i for c, i in got if c == "big"] == list(range(1, 51))
        assert [i for c, i in got if c == "small"] == [1, 2, 3] and len(got) == 53
        assert len(pages) >= 10 and all(size <= 200_000 for _, size in pages)


def test_a_page_holds_at_least_one_event_and_at_most_max_reply_events(make_backend):
    backend = make_backend(max_reply_bytes=1000, max_reply_events=3)
    backend.publish("big", json.dumps("y" * 5000))  # larger than a page: sent alone
    publish_n(backend, "news", 7)
    readers = [backend] + ([make_backend(max_reply_bytes=1000, max_reply_events=3)]
                           if make_backend.kind == "redis" else [])
    for reader in readers:
        got, pages = read_pages(reader, ("big", "news"), {"big": 0, "news": 0}, None)
        assert got == [("big", 1)] + [("news", i) for i in range(1, 8)]
        assert [n for n, _ in pages] == [1, 3, 3, 1]  # the big one alone: it fills its page


# -- batch publishing (POST /notify with "events") ------------------------------

def test_batch_keeps_order_and_gives_each_channel_consecutive_ids(make_backend):
    backend = make_backend()
    publish_n(backend, "a", 2)
    batch = [("a", '"a3"'), ("b", '"b1"'), ("a", '"a4"'), ("b", '"b2"'), ("a", '"a5"')]
    assert backend.publish_many(batch) == [3, 1, 4, 2, 5]
    read = backend.read("a", 2, backend.epoch)
    assert [json.loads(e)["data"] for e in read.events] == ["a3", "a4", "a5"]
    assert (ids(read), read.recovered) == ([3, 4, 5], True)
    assert ids(backend.read("b", 0, backend.epoch)) == [1, 2]
    backend.woken_changes.wait_until(lambda: {"a", "b"} <= set(backend.woken), 5, "both channels woken")
    assert backend.publish("a", "6") == 6  # a single publish continues after the batch


def test_batch_idempotency_key_covers_the_whole_batch(make_backend):
    backend = make_backend()
    batch = [("a", "1"), ("b", "2"), ("a", "3")]
    first = backend.publish_many(batch, "key-1")
    assert backend.publish_many(batch, "key-1") == first == [1, 1, 2]  # the retry stores nothing
    assert ids(backend.read("a", 0, backend.epoch)) == [1, 2]
    assert backend.publish("a", "4", "key-1") == 3  # a single notify's key is not the batch's
    assert backend.publish_many(batch, "key-2") == [4, 2, 5]


@pytest.mark.parametrize("refusal", ["too many keys", "unencodable data"])
def test_batch_is_all_or_nothing(make_backend, refusal):
    backend = make_backend(max_idempotency_keys=3)
    backend.publish("a", '"before"')
    if refusal == "too many keys":  # four keys where three are allowed: refused before any write
        batch, key = [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")], "k"
    else:  # the third event cannot be stored (a lone surrogate)
        batch, key = [("a", "1"), ("b", "2"), ("a", '"\ud800"')], None
    with pytest.raises(BackendError):
        backend.publish_many(batch, key)
    assert ids(backend.read("a", 0, backend.epoch)) == [1]
    assert backend.read("b", None, None).last_seq == 0
    assert backend.publish_many([("a", "5"), ("b", "6")]) == [2, 1]  # the backend carries on


@pytest.mark.parametrize("make_backend", ["memory", "sqlite"], indirect=True)  # Redis has no such bound
def test_batch_over_the_channel_bound_stores_nothing(make_backend):
    backend = make_backend(max_channels_total=2)
    backend.publish("a", "1")
    with pytest.raises(BackendError):
        backend.publish_many([("a", "2"), ("b", "3"), ("c", "4")])
    assert ids(backend.read("a", 0, backend.epoch)) == [1]
    assert backend.publish_many([("a", "2"), ("b", "3")]) == [2, 1]


# -- opening a backend: what a user may get wrong (#14) ------------------------------------

def test_a_clean_stop_leaves_no_sqlite_lock_file_and_a_running_one_keeps_others_out(tmp_path):
    url = f"sqlite://{tmp_path}/c.db"
    first = open_backend(Config(backend=url))
    assert (tmp_path / "c.db.lock").exists()
    with pytest.raises(BackendError, match="in use by another"):
        open_backend(Config(backend=url))
    first.close()
    assert not (tmp_path / "c.db.lock").exists()
    again = open_backend(Config(backend=url))  # the next start takes the lock again
    again.close()
    assert not (tmp_path / "c.db.lock").exists()


def test_a_lock_file_deleted_under_a_waiting_opener_is_not_taken_for_the_lock(tmp_path):
    """An opener that opened PATH.lock just before the holder deleted it must not believe it
    holds the lock: the path now names another file (or none)."""
    import fcntl
    import os

    from geventcomet.backends.sqlite_store import release_file_lock, take_file_lock
    path = str(tmp_path / "d.db")
    held = take_file_lock(path)
    stale = os.open(path + ".lock", os.O_RDWR)  # opened before the release
    release_file_lock(path, held)
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file's lock: worth nothing now
    fresh = take_file_lock(path)  # a new file at the path, locked: the stale holder does not hold it
    assert os.path.exists(path + ".lock")
    assert os.fstat(fresh).st_ino != os.fstat(stale).st_ino
    os.close(stale)
    release_file_lock(path, fresh)


@pytest.mark.parametrize("url", ["sqlite://rel.db", "sqlite://rel.db?synchronous=normal"])
def test_a_sqlite_url_with_two_slashes_is_refused_saying_what_to_write(url):
    from geventcomet.backends import backend_class
    with pytest.raises(ValueError) as refused:
        backend_class(url)
    message = str(refused.value)
    assert "names a host" in message and "sqlite:///" in message and "\n" not in message


def test_a_backend_whose_package_is_missing_names_the_extra_to_install():
    from .client_fixtures import run_python
    result = run_python("""
        import json, sys
        sys.modules["redis"] = None  # as if the redis extra were not installed
        from geventcomet.backends import backend_class
        try:
            backend_class("redis://127.0.0.1:6379/0")
        except ValueError as exc:
            print(json.dumps({"error": str(exc)}))
    """)
    assert "pip install 'geventcomet[redis]'" in result["error"], result

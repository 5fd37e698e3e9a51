"""The SQLite writer never dies (issue 11 item 1), and an old file still opens (item 3).

A lone surrogate in one notify used to raise outside any try in the committer loop:
the committer died and every later notify hung. Each test below breaks the writer
one way, then proves that later notifies over HTTP answer 200 and are on disk.
"""
import json
import sqlite3
import time

import gevent
import pytest

from geventcomet import Config
from geventcomet.backends import sqlite as sqlite_backend
from geventcomet.backends.sqlite import SQLiteBackend
from geventcomet.errors import BackendError

from .helpers import Comet


def stored_data(url: str, channel: str) -> list:
    """The data of every event of ``channel`` in the file, read by a fresh backend."""
    backend = SQLiteBackend(Config(backend=url))
    try:
        return [json.loads(e)["data"] for e in backend.read(channel, 0, None).events]
    finally:
        backend.close()


def test_a_lone_surrogate_fails_alone_and_the_rest_of_its_batch_commits(tmp_path, start_server):
    url = f"sqlite://{tmp_path}/w.db"
    backend = SQLiteBackend(Config(backend=url))
    server = start_server(backend=backend)
    comet = Comet(server.url)
    assert comet.notify("s", "before")["id"] == 1
    bad = gevent.spawn(backend.publish, "s", '"\ud800"')
    good = gevent.spawn(backend.publish, "s", '"beside"')  # most likely in the same batch
    gevent.joinall([bad, good], timeout=10)
    assert isinstance(bad.exception, BackendError) and good.value == 2
    assert [comet.notify("s", i)["id"] for i in range(3)] == [3, 4, 5]
    assert backend.health() is None  # one bad notify is not a sick writer
    server.stop()
    assert stored_data(url, "s") == ["before", "beside", 0, 1, 2]


def test_a_failing_batch_answers_503_shows_in_health_and_the_writer_carries_on(tmp_path, start_server,
                                                                                monkeypatch):
    url = f"sqlite://{tmp_path}/f.db"
    backend = SQLiteBackend(Config(backend=url))
    server = start_server(backend=backend)
    comet = Comet(server.url)
    broken = [True]
    real_write = sqlite_backend.write_batch

    def failing_write(*args):
        if broken[0]:
            raise RuntimeError("injected failure")
        return real_write(*args)

    monkeypatch.setattr(sqlite_backend, "write_batch", failing_write)
    reply = comet.http.post(server.url + "/notify", json={"channel": "s", "data": "refused"}, timeout=10)
    assert reply.status_code == 503 and "sqlite" in reply.json()["error"]
    assert "failed" in (backend.health() or "")
    broken[0] = False
    assert [comet.notify("s", i)["id"] for i in range(3)] == [1, 2, 3]  # nothing hangs, ids go on
    assert backend.health() is None
    server.stop()
    assert stored_data(url, "s") == [0, 1, 2]


def test_a_killed_committer_is_replaced_and_nothing_waits_for_it(tmp_path, start_server):
    url = f"sqlite://{tmp_path}/k.db"
    backend = SQLiteBackend(Config(backend=url))
    server = start_server(backend=backend)
    comet = Comet(server.url)
    comet.notify("s", "before")
    backend._committer.kill()  # the worst case: the greenlet is gone (the loop itself never lets go)
    assert comet.notify("s", "after")["id"] == 2
    server.stop()
    assert stored_data(url, "s") == ["before", "after"]


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE channels (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    channel TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, encoded BLOB NOT NULL,
    PRIMARY KEY (channel, seq)) WITHOUT ROWID;
CREATE INDEX events_at ON events (at);
CREATE TABLE clients (id TEXT PRIMARY KEY, seen REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY, channel TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX idempotency_at ON idempotency (at);
"""


def test_a_file_of_the_first_schema_opens_with_keys_scoped_per_channel(tmp_path):
    path = tmp_path / "old.db"
    now = time.time()
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('epoch', 'abcd1234')")
    conn.execute("INSERT INTO channels VALUES ('A', 1)")
    conn.execute("INSERT INTO events VALUES ('A', 1, ?, ?)", (now, b'{"channel":"A","id":1,"data":"a"}'))
    conn.execute("INSERT INTO idempotency VALUES ('K', 'A', 1, ?)", (now,))
    conn.commit()
    conn.close()
    backend = SQLiteBackend(Config(backend=f"sqlite://{path}"))
    backend.start(lambda channel: 0, lambda: 0)
    try:
        assert backend.epoch == "abcd1234"
        assert backend.publish("A", '"a"', "K") == 1  # the old key is still remembered
        assert backend.publish("B", '"b"', "K") == 1  # and now scoped to its channel
        assert backend.publish("A", '"a2"') == 2
    finally:
        backend.close()
    conn = sqlite3.connect(path)
    primary_key = sorted((row[5], row[1]) for row in conn.execute("PRAGMA table_info(idempotency)") if row[5])
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(idempotency)")}
    conn.close()
    assert [name for _, name in primary_key] == ["channel", "key"] and "idempotency_at" in indexes


@pytest.mark.parametrize("kill", [False, True], ids=["close", "kill"])
def test_a_dropped_channel_stays_dropped_and_d_survives_a_restart(tmp_path, kill):
    """D is in the file: after a restart a re-created channel still does not reuse ids."""
    url = f"sqlite://{tmp_path}/d.db"
    now = [time.time()]
    config = Config(backend=url, backlog_age_s=60)
    backend = SQLiteBackend(config, clock=lambda: now[0])
    backend.start(lambda channel: 0, lambda: 0)
    assert [backend.publish("old", str(i)) for i in range(3)] == [1, 2, 3]
    now[0] += 120
    backend.expire_idle()
    assert backend.counts()["channels"] == 0
    if not kill:
        backend.close()
    else:  # what kill -9 leaves: the committed file, no clean close
        backend._closing = True
        backend._release()
    again = SQLiteBackend(config, clock=lambda: now[0])
    again.start(lambda channel: 0, lambda: 0)
    try:
        assert again.counts()["channels"] == 0
        assert again.read("old", 3, again.epoch).recovered is False
        assert again.publish("old", '"new"') == 5  # D = 3, so the new life starts at D + 2
    finally:
        again.close()

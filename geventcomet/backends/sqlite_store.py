"""The SQLite file of the SQLite backend: schema, migration, loading, and one batch's transaction.

Everything here runs on the backend's one database thread (sqlite3 calls are C calls
that gevent cannot make cooperative), except the small op classes the committer queues.

Schema changes are migrated in place when an older file is opened: the
``idempotency`` table's key was once global (``key`` alone); it is now scoped per
channel (``PRIMARY KEY (channel, key)``), as the Redis backend always had it.
``meta`` holds the epoch, ``dropped`` (D, see :mod:`geventcomet.backends`) and the
secret that signs client ids when none is configured (written once, like the epoch).
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
from typing import NamedTuple
from urllib.parse import parse_qs

from ..config import Config
from ..errors import BackendError
from .channels import ChannelTable, Stored
from .sqlite_ops import BatchOp, PublishOp

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    channel TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, encoded BLOB NOT NULL,
    PRIMARY KEY (channel, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, seen REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    channel TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (channel, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency (at);
"""

#: From the first schema (key alone was the primary key) to keys scoped per channel.
MIGRATE_IDEMPOTENCY = """
CREATE TABLE idempotency_v2 (
    channel TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (channel, key)) WITHOUT ROWID;
INSERT OR REPLACE INTO idempotency_v2 (channel, key, seq, at) SELECT channel, key, seq, at FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_v2 RENAME TO idempotency;
CREATE INDEX idempotency_at ON idempotency (at);
"""

RAISE_DROPPED = ("INSERT INTO meta (key, value) VALUES ('dropped', ?) ON CONFLICT (key) DO UPDATE "
                 "SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))")


def parse_url(url: str) -> tuple[str, str]:
    """``sqlite:///abs/path.db`` (the path after ``sqlite://``), optional ``?synchronous=full|normal``.

    ``sqlite://rel.db`` is refused: in a URL, what follows two slashes is a host."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    path, _, query = rest.partition("?")
    if path and not path.startswith("/"):
        raise ValueError(f"{url.split('?')[0]!r} names a host, not a file: write sqlite:// and an absolute path, "
                         f"as in sqlite://{os.path.abspath(path)} (three slashes in all)")
    if not path or path.endswith("/"):
        raise ValueError(f"sqlite backend needs a file: sqlite:///path/to/file.db, not {url!r}")
    sync = parse_qs(query).get("synchronous", ["full"])[0].lower()
    if sync not in ("full", "normal", "extra"):
        raise ValueError(f"sqlite synchronous must be full, normal or extra, not {sync!r}")
    return path, sync.upper()


class Opened(NamedTuple):
    """An open database: the connection, the epoch, D and the client-id secret kept in ``meta``."""

    conn: sqlite3.Connection
    epoch: str
    dropped: int
    client_secret: str


def open_database(path: str, synchronous: str, busy_timeout_ms: int) -> Opened:
    """Open (creating or migrating) the file; the secret is written once, like the epoch."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise BackendError(f"sqlite database {path!r} cannot use WAL mode")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        if _idempotency_is_global(conn):
            for statement in MIGRATE_IDEMPOTENCY.split(";"):
                if statement.strip():
                    conn.execute(statement)
        meta = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('epoch', 'dropped', 'client_secret')").fetchall())
        for key, fresh in (("epoch", secrets.token_hex(4)), ("client_secret", secrets.token_urlsafe(32))):
            if key not in meta:
                meta[key] = fresh
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, fresh))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        raise BackendError(f"cannot open sqlite database {path!r}: {exc}") from None
    return Opened(conn, meta["epoch"], int(meta.get("dropped") or 0), meta["client_secret"])


def _idempotency_is_global(conn: sqlite3.Connection) -> bool:
    """True for a file of the first schema, where ``key`` alone was the primary key."""
    pk = {row[1]: row[5] for row in conn.execute("PRAGMA table_info(idempotency)")}
    return pk.get("channel") == 0


def load(conn: sqlite3.Connection, config: Config, now: float, table: ChannelTable,
         clients: dict[str, float], keys: dict[tuple[str, str], tuple[float, int]]) -> None:
    """Fill the in-memory state from the file (before the backend is shared with any greenlet)."""
    histories: dict[str, list[Stored]] = {}
    for channel, seq, at, encoded in conn.execute(
            "SELECT channel, seq, at, encoded FROM events WHERE at >= ? ORDER BY channel, seq",
            (now - config.backlog_age_s,)):
        histories.setdefault(channel, []).append(Stored(seq, at, bytes(encoded)))
    rows = [(histories.get(name, []), name, last_seq)
            for name, last_seq in conn.execute("SELECT name, last_seq FROM channels")]
    rows.sort(key=lambda row: row[0][-1].at if row[0] else 0.0)  # least recently published first
    for history, name, last_seq in rows:
        table.load(name, last_seq, history)
    for client, seen in conn.execute("SELECT id, seen FROM clients WHERE seen >= ? ORDER BY seen",
                                     (now - config.client_ttl_s,)):
        clients[client] = seen
    for channel, key, seq, at in conn.execute(
            "SELECT channel, key, seq, at FROM idempotency WHERE at >= ? ORDER BY at",
            (now - config.idempotency_ttl_s,)):
        keys[(channel, key)] = (at, seq)


def write_batch(conn: sqlite3.Connection | None, ops: list, refreshes: dict[str, float],
                backlog: int) -> BackendError | None:
    """One transaction for the batch. Returns the error (nothing raised for a database
    error, so the thread pool does not print a traceback for a locked database)."""
    if conn is None:
        return BackendError("the sqlite database is closed")
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op in ops:
            if isinstance(op, (PublishOp, BatchOp)):
                for part in op.publishes:
                    _write_publish(conn, part, backlog)
            else:
                for statement, rows in op.statements:
                    conn.executemany(statement, rows)
                _write_drops(conn, op.drops)
        if refreshes:
            conn.executemany("INSERT INTO clients (id, seen) VALUES (?, ?) ON CONFLICT (id) "
                             "DO UPDATE SET seen = max(seen, excluded.seen)", refreshes.items())
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return BackendError(f"sqlite write failed: {exc}")
    except BaseException:
        if conn.in_transaction:  # a bug: leave the connection usable for the next batch
            conn.execute("ROLLBACK")
        raise
    return None


def _write_publish(conn: sqlite3.Connection, op: PublishOp, backlog: int) -> None:
    conn.execute("INSERT INTO channels (name, last_seq) VALUES (?, ?) ON CONFLICT (name) "
                 "DO UPDATE SET last_seq = excluded.last_seq", (op.channel, op.seq))
    conn.execute("INSERT INTO events (channel, seq, at, encoded) VALUES (?, ?, ?, ?)",
                 (op.channel, op.seq, op.at, op.encoded))
    if op.seq > backlog:
        conn.execute("DELETE FROM events WHERE channel = ? AND seq <= ?", (op.channel, op.seq - backlog))
    if op.key is not None:
        conn.execute("INSERT OR REPLACE INTO idempotency (channel, key, seq, at) VALUES (?, ?, ?, ?)",
                     (op.channel, op.key, op.seq, op.at))


def _write_drops(conn: sqlite3.Connection, drops: list[tuple[str, int]]) -> None:
    if not drops:
        return
    conn.executemany("DELETE FROM events WHERE channel = ? AND seq <= ?", drops)
    conn.executemany("DELETE FROM channels WHERE name = ? AND last_seq = ?", drops)
    conn.execute(RAISE_DROPPED, (max(last for _, last in drops),))


def take_file_lock(path: str) -> int:
    """An exclusive ``flock`` on ``PATH.lock``, so that one process serves one file (its fd).

    :func:`release_file_lock` deletes the lock file while still holding the lock; a process
    that opened it just before then holds a file no longer at that path, so after locking,
    the path must still name the file locked (else it tries again with the new one)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BackendError(f"cannot open sqlite database {path!r}: directory {directory!r} does not exist")
    for _ in range(100):  # each round is a release racing us: bounded, in practice one or two
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BackendError(
                f"sqlite database {path!r} is in use by another geventcomet process; the sqlite "
                "backend serves one process (its wake-ups do not cross processes): use redis:// for "
                "several workers") from None
        if _same_file(fd, path + ".lock"):
            return fd
        os.close(fd)
    raise BackendError(f"could not lock {path!r}.lock: it kept being replaced")


def _same_file(fd: int, path: str) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def release_file_lock(path: str, fd: int) -> None:
    """Delete ``PATH.lock`` (a clean stop leaves no lock file), then let the lock go."""
    try:
        if _same_file(fd, path + ".lock"):
            os.unlink(path + ".lock")
    except OSError:  # a read-only directory: the file stays, as before
        pass
    os.close(fd)

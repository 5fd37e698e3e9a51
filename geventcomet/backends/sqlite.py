"""The SQLite backend: the memory backend's state, written ahead to one SQLite file.

How this works
--------------
It is a :class:`~.memory.MemoryBackend` (histories, seq
counters, registrations, idempotency keys in memory), so a poll reads memory and never
waits for the disk. Every change is first committed to SQLite, and only then
applied to memory, woken, and acknowledged: a notify answered 2xx is on disk.

- **Off the hub.** sqlite3 calls are C calls that gevent cannot patch; a busy
  database would freeze every client (PITFALLS §2.8). All of them run on ONE
  dedicated native thread (a one-thread :class:`gevent.threadpool.ThreadPool`),
  and a greenlet waits for the result while the loop keeps serving others.
- **Group commit.** One committer greenlet takes every change queued since its
  last commit and writes them in one transaction. Under load, one fsync covers
  many notifies.
- **Durability policy.** WAL journal with ``synchronous=FULL`` by default: every
  commit is fsynced before the notify is answered, so acknowledged events survive
  ``kill -9`` and power loss. ``sqlite:///path?synchronous=normal`` fsyncs only at
  checkpoints: still safe against a process crash or ``kill -9``, not against
  power loss.
- **Ids are never reused.** ``channels.last_seq`` is kept when a channel's events
  are trimmed; the epoch is written once, when the file is created.
- **One process per file.** Wake-ups do not cross processes, so a second server
  on the same file is refused (an exclusive ``flock`` on ``PATH.lock``). Use
  Redis for several workers.
- **Registrations** never make a poll wait for the disk (another process may hold
  the lock): a new one is committed at once in the background, a refresh (every
  poll) rides on the next commit, at least once a second. So ``kill -9`` may lose
  a registration less than a commit old, or up to a second of a client's idle clock.
"""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import time
from urllib.parse import parse_qs

import gevent
from gevent.event import AsyncResult, Event
from gevent.threadpool import ThreadPool

from .. import protocol
from ..config import Config
from ..errors import BackendError
from .memory import Channel, MemoryBackend, Stored

log = logging.getLogger(__name__)

#: How long a writer waits for another process's lock before the notify answers 503.
BUSY_TIMEOUT_MS = 5000
#: Registration refreshes are written at least this often (seconds).
REFRESH_FLUSH_S = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    channel TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, encoded BLOB NOT NULL,
    PRIMARY KEY (channel, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, seen REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, channel TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency (at);
"""


class _Publish:
    """A queued notify; the committer fills in ``seq`` and ``encoded``."""

    __slots__ = ("channel", "data_json", "key", "at", "seq", "encoded", "done")

    def __init__(self, channel: str, data_json: str, key: str | None, at: float) -> None:
        self.channel, self.data_json, self.key, self.at = channel, data_json, key, at
        self.seq = 0
        self.encoded = b""
        self.done = AsyncResult()


class _Sql:
    """Any other change: statements to run in the next transaction."""

    __slots__ = ("statements", "done")

    def __init__(self, statements: list[tuple[str, list[tuple]]]) -> None:
        self.statements = statements
        self.done = AsyncResult()


def parse_url(url: str) -> tuple[str, str]:
    """``sqlite:///abs/path.db`` or ``sqlite://rel.db``, optional ``?synchronous=full|normal``."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    path, _, query = rest.partition("?")
    if not path or path.endswith("/"):
        raise ValueError(f"sqlite backend needs a file: sqlite:///path/to/file.db, not {url!r}")
    sync = parse_qs(query).get("synchronous", ["full"])[0].lower()
    if sync not in ("full", "normal", "extra"):
        raise ValueError(f"sqlite synchronous must be full, normal or extra, not {sync!r}")
    return path, sync.upper()


class SQLiteBackend(MemoryBackend):
    """Durable single-process backend. See the module docstring for the guarantees."""

    def __init__(self, config: Config, *, clock=time.time) -> None:
        # The wall clock: kept events' ages must mean the same after a restart.
        super().__init__(config, clock=clock)
        self.path, self.synchronous = parse_url(config.backend)
        self._lock_fd: int | None = self._take_file_lock()
        self._pool = ThreadPool(1)
        self._conn: sqlite3.Connection | None = None
        self._pending_keys: dict[str, _Publish] = {}
        self._dirty: dict[str, float] = {}  # client -> seen, not yet written
        self._queue: list = []
        self._kick = Event()
        self._closing = False
        self._wake = lambda channel: 0
        try:
            self.epoch = self._pool.apply(self._open)
        except Exception:
            self._release()
            raise
        self._committer = gevent.spawn(self._commit_loop)

    # -- start-up, on the thread -------------------------------------------

    def _take_file_lock(self) -> int:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise BackendError(f"cannot open sqlite database {self.path!r}: directory {directory!r} does not exist")
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BackendError(
                f"sqlite database {self.path!r} is in use by another geventcomet process; the sqlite "
                "backend serves one process (its wake-ups do not cross processes): use redis:// for "
                "several workers") from None
        return fd

    def _open(self) -> str:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise BackendError(f"sqlite database {self.path!r} cannot use WAL mode")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            epoch = row[0] if row else secrets.token_hex(4)
            if not row:
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
            conn.execute("COMMIT")
            self._load(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise BackendError(f"cannot open sqlite database {self.path!r}: {exc}") from None
        self._conn = conn
        return epoch

    def _load(self, conn: sqlite3.Connection) -> None:
        # Runs before the backend is shared with any greenlet, so filling the
        # in-memory state from the thread is safe.
        now, config = self._clock(), self._config
        for name, last_seq in conn.execute("SELECT name, last_seq FROM channels"):
            self._channels[name] = Channel(last_seq)
        rows = conn.execute("SELECT channel, seq, at, encoded FROM events WHERE at >= ? ORDER BY channel, seq",
                            (now - config.backlog_age_s,))
        for channel, seq, at, encoded in rows:
            state = self._channels.get(channel)
            if state is not None:
                state.history.append(Stored(seq, at, bytes(encoded)))
                if len(state.history) > config.backlog:
                    state.history.popleft()
        for client, seen in conn.execute("SELECT id, seen FROM clients WHERE seen >= ? ORDER BY seen",
                                         (now - config.client_ttl_s,)):
            self._clients[client] = seen
        for key, channel, seq, at in conn.execute(
                "SELECT key, channel, seq, at FROM idempotency WHERE at >= ? ORDER BY at",
                (now - config.idempotency_ttl_s,)):
            self._idempotent[key] = (at, channel, seq)

    # -- the committer -----------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            self._kick.wait(REFRESH_FLUSH_S)
            self._kick.clear()
            if not self._queue and not self._dirty:
                if self._closing:
                    return
                continue
            ops, self._queue = self._queue, []
            refreshes, self._dirty = self._dirty, {}
            last: dict[str, int] = {}
            for op in ops:  # seqs are assigned here, one batch at a time, so none is skipped
                if isinstance(op, _Publish):
                    state = self._channels.get(op.channel)
                    seq = last[op.channel] = last.get(op.channel, state.last_seq if state else 0) + 1
                    op.seq, op.encoded = seq, protocol.encode_event(op.channel, seq, op.data_json)
            try:
                error = self._pool.apply(self._write, (ops, refreshes))
            except Exception as exc:  # a bug, or the thread died
                error = BackendError(f"sqlite write failed: {exc!r}")
            if error is not None:  # nothing of this batch is on disk
                log.warning("%s (%d changes refused)", error, len(ops))
                for client, seen in refreshes.items():
                    self._dirty.setdefault(client, seen)
                for op in ops:
                    if isinstance(op, _Publish) and op.key is not None:
                        self._pending_keys.pop(op.key, None)
                    op.done.set_exception(error)
                continue
            self._apply(ops)

    def _write(self, ops: list, refreshes: dict[str, float]) -> BackendError | None:
        """On the thread: one transaction for the batch. Returns the error (nothing raised
        here, so the thread pool does not print a traceback for a locked database)."""
        conn, backlog = self._conn, self._config.backlog
        if conn is None:
            return BackendError("the sqlite database is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                if isinstance(op, _Publish):
                    conn.execute("INSERT INTO channels (name, last_seq) VALUES (?, ?) ON CONFLICT (name) "
                                 "DO UPDATE SET last_seq = excluded.last_seq", (op.channel, op.seq))
                    conn.execute("INSERT INTO events (channel, seq, at, encoded) VALUES (?, ?, ?, ?)",
                                 (op.channel, op.seq, op.at, op.encoded))
                    if op.seq > backlog:
                        conn.execute("DELETE FROM events WHERE channel = ? AND seq <= ?",
                                     (op.channel, op.seq - backlog))
                    if op.key is not None:
                        conn.execute("INSERT OR REPLACE INTO idempotency (key, channel, seq, at) "
                                     "VALUES (?, ?, ?, ?)", (op.key, op.channel, op.seq, op.at))
                else:
                    for statement, rows in op.statements:
                        conn.executemany(statement, rows)
            if refreshes:
                conn.executemany("INSERT INTO clients (id, seen) VALUES (?, ?) ON CONFLICT (id) "
                                 "DO UPDATE SET seen = max(seen, excluded.seen)", refreshes.items())
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return BackendError(f"sqlite write failed: {exc}")
        return None

    def _apply(self, ops: list) -> None:
        """Committed: make the changes visible, wake, and acknowledge, in commit order."""
        touched: dict[str, None] = {}
        for op in ops:
            if isinstance(op, _Publish):
                self._store(op.channel, op.seq, op.at, op.encoded, op.key)
                if op.key is not None:
                    self._pending_keys.pop(op.key, None)
                touched[op.channel] = None
        for channel in touched:
            self._wake(channel)
        for op in ops:
            op.done.set(op.seq if isinstance(op, _Publish) else None)

    def _submit(self, op):
        if self._closing:
            raise BackendError("backend is closed")
        self._queue.append(op)
        self._kick.set()
        return op.done.get()

    # -- the contract ------------------------------------------------------

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        now = self._clock()
        seen = self._already_published(idempotency_key, channel, now)
        if seen is not None:
            return seen
        if idempotency_key is not None:
            queued = self._pending_keys.get(idempotency_key)
            if queued is not None and queued.channel == channel:
                return queued.done.get()  # the same notify, retried while the first is committing
        op = _Publish(channel, data_json, idempotency_key, now)
        if idempotency_key is not None:
            self._pending_keys[idempotency_key] = op
        return self._submit(op)

    def register(self, client: str) -> None:
        # Never waits for the disk: a poll must not stall behind another process's
        # lock. The registration is written with the next commit, within a second.
        now = self._clock()
        new = client not in self._clients
        self._clients[client] = now
        self._clients.move_to_end(client)
        self._dirty[client] = now
        if new:  # written now; a refresh waits for the next commit or the timer
            self._kick.set()

    def expire_idle(self) -> list[str]:
        now, config = self._clock(), self._config
        cutoff, gone = now - config.client_ttl_s, []
        for client, seen in self._clients.items():  # oldest first: stops at the first fresh one
            if seen >= cutoff:
                break
            gone.append(client)
        private = [(protocol.private_channel(c),) for c in gone]
        self._submit(_Sql([
            ("DELETE FROM clients WHERE id = ? AND seen < ?", [(c, cutoff) for c in gone]),
            ("DELETE FROM events WHERE channel = ?", private),
            ("DELETE FROM channels WHERE name = ?", private),
            ("DELETE FROM events WHERE at < ?", [(now - config.backlog_age_s,)]),
            ("DELETE FROM idempotency WHERE at < ?", [(now - config.idempotency_ttl_s,)]),
        ]))
        expired = []
        for client in gone:  # a client that polled while the delete was committing stays
            last_seen = self._clients.get(client)
            if last_seen is not None and last_seen < cutoff:
                del self._clients[client]
                self._dirty.pop(client, None)
                self._channels.pop(protocol.private_channel(client), None)
                expired.append(client)
        return expired

    def close(self) -> None:
        """Write pending registration refreshes, then close the file and the thread."""
        if self._closing:
            return
        self._closing = True
        self._kick.set()
        self._committer.join(timeout=BUSY_TIMEOUT_MS / 1000 + 1)
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                self._pool.apply(conn.close)
            except Exception:  # closing is best effort; the data is committed
                log.exception("closing sqlite database")
        self._pool.kill()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

"""Bayeux sessions in SQLite, in their own file beside the backend's: they survive a restart.

``sqlite:///data/comet.db`` keeps its sessions in ``/data/comet.db-bayeux``: three small
tables (sessions, subscriptions, positions) in WAL mode. The backend's events carry the
epoch, so a restarted server that kept its history resumes every session exactly where
its last connect left it; one that lost it answers ``recovered: false``.

Measured fact this relies on (CPython 3.11's ``sqlite3``, this machine, WAL,
``synchronous=NORMAL``): one of these statements, committed, takes some tens of
microseconds, no fsync on commit; so they run on the event loop, not on a thread (a
connect does one read and one write). A power loss may lose the last few session
changes, never the events, which the backend keeps with its own durability.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ..backends.sqlite_store import parse_url
from .sessions import Session, SessionStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bx_session (id TEXT PRIMARY KEY, epoch TEXT, token TEXT,
                                       connected INTEGER NOT NULL, seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bx_session_seen ON bx_session (seen);
CREATE TABLE IF NOT EXISTS bx_sub (id TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bx_pos (id TEXT NOT NULL, feed TEXT NOT NULL, seq INTEGER NOT NULL,
                                   PRIMARY KEY (id, feed)) WITHOUT ROWID;
"""


class SQLiteSessions(SessionStore):
    """Sessions in ``<backend file>-bayeux``."""

    def __init__(self, url: str, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        super().__init__(ttl_s, clock)
        path, _sync = parse_url(url)
        self.path = path + "-bayeux"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def create(self, session: Session) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO bx_session VALUES (?, ?, ?, 0, ?)",
                            (session.client_id, session.epoch, session.token, self.clock()))
            self._positions(session.client_id, session.positions)

    def load(self, client_id: str) -> Session | None:
        with self._tx():
            if not self._touch(client_id):
                return None
        db = self.db
        epoch, token, connected = db.execute("SELECT epoch, token, connected FROM bx_session WHERE id = ?",
                                             (client_id,)).fetchone()
        names = sorted(row[0] for row in db.execute("SELECT name FROM bx_sub WHERE id = ?", (client_id,)))
        positions = dict(db.execute("SELECT feed, seq FROM bx_pos WHERE id = ?", (client_id,)).fetchall())
        return Session(client_id, names, positions, epoch, token, bool(connected))

    def subscribe(self, client_id: str, positions: dict[str, int], epoch: str | None,
                  names: list[str]) -> bool:
        with self._tx():
            if not self._touch(client_id):
                return False
            self.db.executemany("INSERT OR IGNORE INTO bx_sub VALUES (?, ?)", [(client_id, n) for n in names])
            self._positions(client_id, positions)
            if epoch:
                self.db.execute("UPDATE bx_session SET epoch = ? WHERE id = ?", (epoch, client_id))
        return True

    def unsubscribe(self, client_id: str, names: list[str], feeds: list[str]) -> bool:
        with self._tx():
            if not self._touch(client_id):
                return False
            self.db.executemany("DELETE FROM bx_sub WHERE id = ? AND name = ?", [(client_id, n) for n in names])
            self.db.executemany("DELETE FROM bx_pos WHERE id = ? AND feed = ?", [(client_id, f) for f in feeds])
        return True

    def save(self, client_id: str, positions: dict[str, int], epoch: str) -> bool:
        with self._tx():
            if not self._touch(client_id):
                return False
            self.db.execute("UPDATE bx_session SET epoch = ?, connected = 1 WHERE id = ?", (epoch, client_id))
            self._positions(client_id, positions)
        return True

    def delete(self, client_id: str) -> None:
        with self._tx():
            self._forget(client_id)

    def expire(self) -> int:
        cutoff = self.clock() - self.ttl_s
        with self._tx():
            gone = [row[0] for row in self.db.execute("SELECT id FROM bx_session WHERE seen <= ?", (cutoff,))]
            for client_id in gone:
                self._forget(client_id)
        return len(gone)

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM bx_session").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction (the connection autocommits otherwise)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _touch(self, client_id: str) -> bool:
        """Restart the idle clock of a live session; forget an expired one. False: gone."""
        row = self.db.execute("SELECT seen FROM bx_session WHERE id = ?", (client_id,)).fetchone()
        if row is None:
            return False
        if self.expired(row[0]):
            self._forget(client_id)
            return False
        self.db.execute("UPDATE bx_session SET seen = ? WHERE id = ?", (self.clock(), client_id))
        return True

    def _positions(self, client_id: str, positions: dict[str, int]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO bx_pos VALUES (?, ?, ?)",
                            [(client_id, feed, seq) for feed, seq in positions.items()])

    def _forget(self, client_id: str) -> None:
        for table in ("bx_session", "bx_sub", "bx_pos"):
            self.db.execute(f"DELETE FROM {table} WHERE id = ?", (client_id,))  # noqa: S608 (fixed names)

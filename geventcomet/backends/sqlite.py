"""The SQLite backend: the memory backend's state, written ahead to one SQLite file.

How this works
--------------
It is a :class:`~.memory.MemoryBackend` (histories, seq
counters, registrations, idempotency keys in memory), so a poll reads memory and never
waits for the disk. Every change is first committed to SQLite, and only then
applied to memory, woken, and acknowledged: a notify answered 2xx is on disk.

- **Off the hub.** sqlite3 calls are C calls that gevent cannot patch: one that
  waits for a busy database (another process's lock, an fsync) would freeze every
  client of the process for as long. All of them run on ONE
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
  are trimmed; the epoch is written once, when the file is created. A dropped
  channel (idle, or its client expired) raises D in ``meta`` in the same
  transaction that deletes it (see :mod:`geventcomet.backends`).
- **The writer never dies.** Each notify is encoded and checked on its own, so one
  that cannot be stored (a lone surrogate in its data, a channel past
  ``max_channels_total``) is refused alone and the rest of its batch commits. Any
  other failure refuses that batch's notifies with
  :class:`~geventcomet.errors.BackendError` (503), is logged, shows in
  :meth:`SQLiteBackend.health` until a commit succeeds again, and the committer
  carries on; if its greenlet dies anyway, a link fails what it held and starts a
  new one. No notify waits for a committer that is gone.
- **One process per file.** Wake-ups do not cross processes, so a second server on the
  same file is refused (an exclusive ``flock`` on ``PATH.lock``, deleted at a clean stop).
- **Bounds** are the memory backend's (``max_clients_total``, ``max_idempotency_keys``
  counting keys still committing, ``max_backlog_bytes``). Events trimmed to fit the
  backlog budget are deleted from the file in a later transaction (nobody waits for it);
  if that delete fails they are trimmed again when the file is loaded.
- **Registrations** never make a poll wait for the disk (another process may hold
  the lock): a new one is committed at once in the background, a refresh (every
  poll) rides on the next commit, at least once a second. So ``kill -9`` may lose
  a registration less than a commit old, or up to a second of a client's idle clock.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, cast

import gevent
from gevent.event import Event
from gevent.threadpool import ThreadPool

from .. import protocol
from ..config import Config
from ..errors import BackendError
from . import batch_key
from .memory import MemoryBackend
from .sqlite_ops import BatchOp, PublishOp, SqlOp, assign_seqs
from .sqlite_store import load, open_database, parse_url, release_file_lock, take_file_lock, write_batch

log = logging.getLogger(__name__)

#: How long a writer waits for another process's lock before the notify answers 503.
BUSY_TIMEOUT_MS = 5000
#: Registration refreshes are written at least this often (seconds); after a failed
#: batch, an empty transaction at this interval tells when the file works again.
REFRESH_FLUSH_S = 1.0

class SQLiteBackend(MemoryBackend):
    """Durable single-process backend. See the module docstring for the guarantees."""

    shared = False  # one file, but a publish wakes only the waiters of the process that made it

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        # The wall clock: kept events' ages must mean the same after a restart.
        super().__init__(config, clock=clock)
        self.path, self.synchronous = parse_url(config.backend)
        self._lock_fd: int | None = take_file_lock(self.path)
        self._pool = ThreadPool(1)
        self._conn = None
        self._pending_keys: dict[tuple[str, str], PublishOp] = {}
        self._dirty: dict[str, float] = {}  # client -> seen, not yet written
        self._queue: list = []
        self._in_flight: list = []  # the batch the committer holds, failed if it dies
        self._kick = Event()
        self._closing = False
        self._problem: str | None = None
        self._wake = lambda channel: 0
        try:
            opened = self._pool.apply(open_database, (self.path, self.synchronous, BUSY_TIMEOUT_MS))
            self._conn, self.epoch, self._channels.dropped = opened.conn, opened.epoch, opened.dropped
            self._kept_client_secret = opened.client_secret.encode()  # a restart accepts the ids it minted
            self._pool.apply(load, (self._conn, config, self._clock(), self._channels, self._clients,
                                    self._idempotent))
        except Exception:
            self._release()
            raise
        self._committer = self._spawn_committer()
        self._delete_trimmed(self._channels.fit_budget(self._clock()))  # the budget may be lower now

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_url(url)

    # -- the committer and its supervisor ----------------------------------

    def _spawn_committer(self) -> gevent.Greenlet:
        committer = gevent.spawn(self._commit_loop)
        committer.link(self._committer_ended)
        return committer

    def _committer_ended(self, committer: gevent.Greenlet) -> None:
        if self._closing:
            return
        log.error("the sqlite committer stopped (%r); its batch is refused and a new one starts",
                  committer.exception)
        self._problem = "the sqlite writer stopped and was restarted"
        self._refuse(self._in_flight, {}, BackendError("the sqlite writer stopped; retry"))
        self._committer = self._spawn_committer()
        self._kick.set()

    def _commit_loop(self) -> None:
        while True:
            self._kick.wait(REFRESH_FLUSH_S)
            self._kick.clear()
            if not self._queue and not self._dirty and self._problem is None:
                if self._closing:
                    return
                continue
            ops, self._queue = self._queue, []
            refreshes, self._dirty = self._dirty, {}
            self._in_flight = ops
            try:
                self._commit(ops, refreshes)
            except Exception as exc:  # a bug: this batch is refused, the committer carries on
                log.exception("the sqlite committer failed on a batch of %d changes; they are refused",
                              len(ops))
                self._problem = f"the sqlite writer failed ({exc!r}) and carries on"
                self._refuse(ops, refreshes, BackendError(f"sqlite write failed: {exc!r}"))
            self._in_flight = []
            if self._closing and not self._queue and not self._dirty:
                return

    def _commit(self, ops: list, refreshes: dict[str, float]) -> None:
        good = self._prepare(ops)
        error = self._pool.apply(write_batch, (self._conn, good, refreshes, self._config.backlog))
        if error is not None:  # nothing of this batch is on disk
            log.warning("%s (%d changes refused)", error, len(good))
            self._problem = str(error)
            self._refuse(good, refreshes, error)
            return
        self._problem = None
        self._apply(good)

    def _prepare(self, ops: list) -> list:
        """The ops that can be stored, with seqs assigned (see :func:`.sqlite_ops.assign_seqs`)."""
        return assign_seqs(ops, self._channels, lambda op, error: self._refuse([op], {}, error))

    def _refuse(self, ops: list, refreshes: dict[str, float], error: BackendError) -> None:
        """Nothing of these is on disk: answer each waiting notify with ``error`` (503)."""
        for client, seen in refreshes.items():
            self._dirty.setdefault(client, seen)
        for op in ops:
            for part in op.publishes:
                if part.key is not None:
                    self._pending_keys.pop((part.channel, part.key), None)
                if not part.done.ready():
                    part.done.set_exception(error)
            if not op.done.ready():
                op.done.set_exception(error)

    def _apply(self, ops: list) -> None:
        """Committed: make the changes visible, wake, and acknowledge, in commit order."""
        touched: dict[str, None] = {}
        trimmed: dict[str, int] = {}
        for op in ops:
            for name, last_seq in op.drops if isinstance(op, SqlOp) else ():
                self._channels.drop(name, last_seq)
            for part in op.publishes:
                trimmed.update(self._store(part.channel, part.seq, part.at, part.encoded, part.key))
                if part.key is not None:
                    self._pending_keys.pop((part.channel, part.key), None)
                touched[part.channel] = None
        for channel in touched:
            self._wake(channel)
        for op in ops:
            op.acknowledge()
        self._delete_trimmed(trimmed)

    def _delete_trimmed(self, trimmed: dict[str, int]) -> None:
        """Delete from the file, with the next commit, the events the backlog budget trimmed
        from memory; nobody waits for it (a failure is logged and the next load trims again)."""
        if trimmed:
            self._queue.append(SqlOp([("DELETE FROM events WHERE channel = ? AND seq <= ?",
                                       list(trimmed.items()))]))
            self._kick.set()

    def _submit(self, op):
        if self._closing:
            raise BackendError("backend is closed")
        self._queue.append(op)
        self._kick.set()
        return op.done.get()

    # -- the contract ------------------------------------------------------

    def health(self) -> str | None:
        if self._committer.dead and not self._closing:
            return "the sqlite writer is not running"
        return self._problem

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        now = self._clock()
        seen = self._already_published(idempotency_key, channel, now)
        if seen is not None:
            return seen
        if idempotency_key is not None:
            queued = self._pending_keys.get((channel, idempotency_key))
            if queued is not None:
                return queued.done.get()  # the same notify, retried while the first is committing
        self._channels.check_room(channel)
        self._check_key_room(idempotency_key, len(self._pending_keys))
        op = PublishOp(channel, data_json, idempotency_key, now)
        if idempotency_key is not None:
            self._pending_keys[(channel, idempotency_key)] = op
        return self._submit(op)

    def publish_many(self, events: list[tuple[str, str]], idempotency_key: str | None = None) -> list[int]:
        """One transaction for the whole batch (see :func:`.sqlite_ops.assign_seqs`): all or nothing."""
        now = self._clock()
        keys = [batch_key(idempotency_key, index) for index in range(len(events))]
        seen = self._batch_seen(events, keys, now)
        if seen is not None:
            return seen
        queued = [self._pending_keys.get((channel, key)) for (channel, _), key in zip(events, keys) if key]
        if queued and None not in queued:  # the same batch, retried while the first is committing
            return [cast(PublishOp, op).done.get() for op in queued]
        self._check_key_room(keys[0], len(self._pending_keys) + len(keys) - 1)
        parts = [PublishOp(channel, data_json, key, now) for (channel, data_json), key in zip(events, keys)]
        self._pending_keys.update({(part.channel, part.key): part for part in parts if part.key is not None})
        return self._submit(BatchOp(parts))

    def register(self, client: str) -> None:
        # Never waits for the disk: a poll must not stall behind another process's
        # lock. The registration is written with the next commit, within a second.
        self._check_client_room(client)
        now = self._clock()
        new = client not in self._clients
        self._clients[client] = now
        self._clients.move_to_end(client)
        self._dirty[client] = now
        if new:  # written now; a refresh waits for the next commit or the timer
            self._kick.set()

    def expire_idle(self) -> list[str]:
        now, config = self._clock(), self._config
        cutoff = now - config.client_ttl_s
        gone = self._idle_clients(now)
        drops = [(name, self._channels.last_seq(name))
                 for name in (protocol.private_channel(c) for c in gone) if name in self._channels]
        drops += self._channels.idle(now, self._waiter_count)
        self._submit(SqlOp([
            ("DELETE FROM clients WHERE id = ? AND seen < ?", [(c, cutoff) for c in gone]),
            ("DELETE FROM events WHERE at < ?", [(now - config.backlog_age_s,)]),
            ("DELETE FROM idempotency WHERE at < ?", [(now - config.idempotency_ttl_s,)]),
        ], drops))
        expired = []
        for client in gone:  # a client that polled while the delete was committing stays
            last_seen = self._clients.get(client)
            if last_seen is not None and last_seen < cutoff:
                del self._clients[client]
                self._dirty.pop(client, None)
                expired.append(client)
        self._forget_old_keys(now)
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
            release_file_lock(self.path, self._lock_fd)
            self._lock_fd = None

"""The changes the SQLite backend's committer queues, and how a commit's notifies get their seqs.

No I/O here: :func:`assign_seqs` runs on the hub, before the batch's transaction, and
decides which queued notifies can be stored; a ``POST /notify`` batch (:class:`BatchOp`) is
stored whole or refused whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gevent.event import AsyncResult

from ..errors import BackendError
from .channels import ChannelTable
from .memory import encode_event


class PublishOp:
    """A queued notify; the committer fills in ``seq`` and ``encoded``."""

    __slots__ = ("channel", "data_json", "key", "at", "seq", "encoded", "done")

    def __init__(self, channel: str, data_json: str, key: str | None, at: float) -> None:
        self.channel, self.data_json, self.key, self.at = channel, data_json, key, at
        self.seq = 0
        self.encoded = b""
        self.done = AsyncResult()

    @property
    def publishes(self) -> list[PublishOp]:
        return [self]

    def acknowledge(self) -> None:
        self.done.set(self.seq)


class BatchOp:
    """A queued batch of notifies (``POST /notify`` with ``events``), committed all or none in
    one transaction; ``done`` gets the list of seqs, and each part's ``done`` its own."""

    __slots__ = ("publishes", "done")

    def __init__(self, parts: list[PublishOp]) -> None:
        self.publishes = parts
        self.done = AsyncResult()

    def acknowledge(self) -> None:
        for part in self.publishes:
            part.acknowledge()
        self.done.set([part.seq for part in self.publishes])


@dataclass
class SqlOp:
    """Any other change: statements to run in the next transaction, and channels to drop.

    ``drops`` are (name, last seq when chosen): a channel published to since then is kept.
    """

    statements: list[tuple[str, list[tuple[Any, ...]]]]
    drops: list[tuple[str, int]] = field(default_factory=list)
    done: AsyncResult = field(default_factory=AsyncResult)
    publishes: tuple[()] = ()

    def acknowledge(self) -> None:
        self.done.set(None)


def assign_seqs(ops: list, channels: ChannelTable, refuse: Callable[[Any, BackendError], None]) -> list:
    """Give each notify of ``ops`` the next seq of its channel and encode it, one op at a time:
    an op that cannot be stored (a lone surrogate, a channel past ``max_channels_total``) is
    given to ``refuse`` alone, a batch whole, and the rest go on. Seqs are assigned here, one
    commit at a time, so none is skipped. Returns the ops to write."""
    last: dict[str, int] = {}
    created = 0
    good = []
    for op in ops:
        trial = dict(last) if isinstance(op, BatchOp) else last
        trial_created = created
        try:
            for part in op.publishes:
                trial_created = _assign(part, channels, trial, trial_created)
        except (BackendError, UnicodeError) as exc:
            refuse(op, exc if isinstance(exc, BackendError) else BackendError(f"cannot store: {exc}"))
            continue
        if trial is not last:
            last.update(trial)
        created = trial_created
        good.append(op)
    return good


def _assign(op: PublishOp, channels: ChannelTable, last: dict[str, int], created: int) -> int:
    """Give ``op`` the seq after its channel's (``last`` first) and encode it; returns the count of
    channels this commit creates. Raises if it cannot be stored."""
    channel = op.channel
    if op.key is not None:
        op.key.encode()  # sqlite3 would raise UnicodeEncodeError on the thread
    if channel not in last and channel not in channels:
        channels.check_room(channel, created)
        created += 1
    seq = (last[channel] if channel in last else channels.last_seq(channel)) + 1
    op.encoded = encode_event(channel, seq, op.data_json)
    op.seq = last[channel] = seq
    return created

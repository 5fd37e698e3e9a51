"""The in-process backend: dicts and deques. The default, and the reference implementation.

History dies with the process; a new process gets a new random epoch, so a client
resuming with an old cursor is told ``recovered: false`` instead of being skipped.
Nothing here yields to the gevent loop, so a publish and its wake-up are atomic.
"""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from itertools import islice
from typing import NamedTuple

from .. import protocol
from ..config import Config
from . import Backend, ChannelRead


class Stored(NamedTuple):
    """One kept event."""

    seq: int
    at: float  # publish time on the backend's clock, for the age limit
    encoded: bytes


class Channel:
    """A channel's last seq and its bounded history, oldest first."""

    __slots__ = ("last_seq", "history")

    def __init__(self, last_seq: int = 0) -> None:
        self.last_seq = last_seq
        self.history: deque[Stored] = deque()


class MemoryBackend(Backend):
    """Everything in this process's memory; registrations and history end with it."""

    def __init__(self, config: Config, *, clock=time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.epoch = secrets.token_hex(4)
        self._channels: dict[str, Channel] = {}
        self._clients: OrderedDict[str, float] = OrderedDict()  # id -> last seen, oldest first
        self._idempotent: OrderedDict[str, tuple[float, str, int]] = OrderedDict()

    def publish(self, channel: str, data_json: str, idempotency_key: str | None = None) -> int:
        now = self._clock()
        seen = self._already_published(idempotency_key, channel, now)
        if seen is not None:
            return seen
        state = self._channels.get(channel)
        seq = (state.last_seq if state else 0) + 1
        self._store(channel, seq, now, protocol.encode_event(channel, seq, data_json), idempotency_key)
        self._wake(channel)
        return seq

    def _already_published(self, key: str | None, channel: str, now: float) -> int | None:
        """The seq an earlier publish with this idempotency key got, if it is remembered."""
        if key is None:
            return None
        self._forget_old_keys(now)
        seen = self._idempotent.get(key)
        return seen[2] if seen is not None and seen[1] == channel else None

    def _store(self, channel: str, seq: int, at: float, encoded: bytes, key: str | None) -> None:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = Channel()
        state.last_seq = seq
        state.history.append(Stored(seq, at, encoded))
        self._trim(state, at)
        if key is not None:
            self._idempotent[key] = (at, channel, seq)
            self._idempotent.move_to_end(key)

    def read(self, channel: str, since: int | None, epoch: str | None) -> ChannelRead:
        state = self._channels.get(channel)
        if state is None:
            plan = protocol.plan_read(since, 1, 0, epoch in (None, self.epoch))
            return ChannelRead([], 0, plan.recovered, self.epoch)
        last = state.last_seq
        if since == last and epoch in (None, self.epoch):  # the common caught-up case
            return ChannelRead([], last, True, self.epoch)
        history = state.history
        self._trim(state, self._clock())
        first = history[0].seq if history else last + 1
        plan = protocol.plan_read(since, first, last, epoch in (None, self.epoch))
        skip = plan.after - first + 1
        events = [h.encoded for h in islice(history, max(skip, 0), None)]
        return ChannelRead(events, last, plan.recovered, self.epoch)

    def _trim(self, state: Channel, now: float) -> None:
        history, cutoff = state.history, now - self._config.backlog_age_s
        while len(history) > self._config.backlog or (history and history[0].at < cutoff):
            history.popleft()

    def _forget_old_keys(self, now: float) -> None:
        keys, cutoff = self._idempotent, now - self._config.idempotency_ttl_s
        while keys and next(iter(keys.values()))[0] < cutoff:
            keys.popitem(last=False)

    def register(self, client: str) -> None:
        self._clients[client] = self._clock()
        self._clients.move_to_end(client)

    def is_registered(self, client: str) -> bool:
        seen = self._clients.get(client)
        return seen is not None and seen >= self._clock() - self._config.client_ttl_s

    def expire_idle(self) -> list[str]:
        # Oldest first, so this touches only what expires (plus one): never a scan.
        clients, cutoff, gone = self._clients, self._clock() - self._config.client_ttl_s, []
        while clients:
            client, seen = next(iter(clients.items()))
            if seen >= cutoff:
                break
            clients.popitem(last=False)
            self._channels.pop(protocol.private_channel(client), None)
            gone.append(client)
        return gone

    def counts(self) -> dict[str, int]:
        return {"clients": len(self._clients), "channels": len(self._channels)}

    def channel_names(self, limit: int) -> list[str]:
        names = (c for c in self._channels if not c.startswith(protocol.PRIVATE_PREFIX))
        return [name for _, name in zip(range(limit), names)]

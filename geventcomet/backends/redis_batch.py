"""Redis calls sent many at a time: the poll-side batcher and the publish batcher.

A caller queues ``(op, arg)`` and waits on its own :class:`~gevent.hub.Waiter`; a few
flusher greenlets send what is queued as one pipeline each. Thousands of polls arriving
together therefore cost a few round trips on a few pooled connections, instead of each
waiting for a connection of its own (which, past the pool's timeout, would be a 503).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

import gevent
import redis
from gevent.hub import Waiter
from redis.commands.core import Script

from .redis_scripts import CLIENTS_KEY, WAKE_CHANNEL, epoch_candidate, evalsha, read_args, register_args

log = logging.getLogger(__name__)

#: At most this many calls go into one pipeline.
BATCH = 1000

READ_OP, ZADD_OP, ZSCORE_OP, PUBLISH_OP, REGISTER_OP = 0, 1, 2, 3, 4


class Batcher:
    """Idempotent Redis calls made for polls, sent many at a time as pipelines.

    A caller queues ``(op, arg)`` and waits on its own :class:`Waiter` (or, for
    ``send``, does not wait). Up to ``flushers`` greenlets each take up to BATCH
    queued calls and send them as one pipeline: reads of the same channel from the
    same position become one script call, every refresh one ``ZADD``, and every new
    registration one call of the bounded REGISTER script (answering 1 or 0 per client).
    Thousands of polls arriving together therefore cost a few round trips on at most
    ``flushers`` pooled connections, instead of each waiting for a connection.
    ``scripts`` are (read, register); ``max_clients`` is the registrations' bound,
    ``age_ms`` the streams' age limit, and ``script_now()`` the time READ is given
    (see :mod:`.redis_scripts`).
    """

    def __init__(self, client: redis.Redis, scripts: tuple[Script, ...], flushers: int,
                 max_clients: int = 0, age_ms: int = 0, script_now: Callable[[], str] = lambda: "") -> None:
        self._client = client
        self._scripts = scripts
        self._max_clients = max_clients
        self._age_ms = age_ms
        self._script_now = script_now
        self._max_flushers = flushers
        self._flushers = 0
        self._pending: deque = deque()
        self._loop = gevent.get_hub().loop

    def call(self, op: int, arg):
        """The reply to ``(op, arg)``; raises :class:`redis.RedisError` for any failure, an
        error reply included: callers need not look at the reply for one."""
        waiter = Waiter()
        self._submit((op, arg, waiter))
        value = waiter.get()
        if isinstance(value, BaseException):
            raise value
        return value

    def send(self, op: int, arg) -> None:
        self._submit((op, arg, None))

    def _submit(self, item) -> None:
        self._pending.append(item)
        if self._flushers < self._max_flushers:
            self._flushers += 1
            gevent.spawn(self._flush)

    def _flush(self) -> None:
        pending = self._pending
        try:
            while pending:
                batch = [pending.popleft() for _ in range(min(BATCH, len(pending)))]
                try:
                    results = self._run(batch)
                except Exception as exc:  # every caller must hear back, whatever happened
                    log.debug("Redis batch of %d failed: %s", len(batch), exc)
                    error = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
                    results = [error] * len(batch)
                self._loop.run_callback(_deliver, batch, results)
        finally:
            self._flushers -= 1

    def _run(self, batch: list) -> list:
        reads: dict = {}  # (channel, since, epoch, page) -> index in the pipeline
        plan: list[tuple[int, int]] = []  # per item: its reply's index, and its place in that reply or -1
        scores: dict[str, float] = {}
        new: dict[str, float] = {}  # clients to register within the bound, in reply order
        places: dict[str, int] = {}  # each of them -> its place in the script's reply
        zadd_at = register_at = -1
        commands: list[Any] = []  # Redis commands; a None slot is filled in below
        candidate, now = epoch_candidate(), self._script_now()
        read_sha, register_sha = (script.sha for script in self._scripts)
        for op, arg, _ in batch:
            place = -1
            if op == READ_OP:
                index = reads.get(arg)
                if index is None:
                    channel, since, epoch, page = arg
                    index = reads[arg] = len(commands)
                    commands.append(evalsha(read_sha, read_args(channel, since, epoch, page, candidate,
                                                                self._age_ms, now)))
            elif op == ZADD_OP:
                client, score = arg
                scores[client] = score
                if zadd_at < 0:
                    zadd_at = len(commands)
                    commands.append(None)  # filled in below, with every registration of the batch
                index = zadd_at
            elif op == REGISTER_OP:
                client, score = arg
                place = places.setdefault(client, len(places))
                new[client] = score  # a dict keeps a key's first place: the reply's order
                if register_at < 0:
                    register_at = len(commands)
                    commands.append(None)
                index = register_at
            else:
                index = len(commands)
                commands.append(("ZSCORE", CLIENTS_KEY, arg))
            plan.append((index, place))
        if zadd_at >= 0:
            commands[zadd_at] = ("ZADD", CLIENTS_KEY, *[x for client, score in scores.items() for x in (score, client)])
        if register_at >= 0:
            commands[register_at] = evalsha(register_sha, register_args(self._max_clients, new))
        replies = self._execute(commands)
        return [replies[i] if place < 0 or isinstance(replies[i], Exception) else replies[i][place]
                for i, place in plan]

    def _execute(self, commands: list) -> list:
        for attempt in (0, 1):
            with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                for script in self._scripts:  # Redis restarted or flushed its scripts
                    self._client.script_load(script.script)
                continue
            break
        for reply in replies:
            if isinstance(reply, redis.ConnectionError):  # no partial batches: all fail alike
                raise reply
        return replies


#: PUBLISH's arguments before the one that asks for its wake-up back (:mod:`.redis_scripts`).
PUBLISH_ARGS = 12


class ReplicasBehind(redis.RedisError):
    """WAIT timed out before ``--redis-min-replicas`` replicas had a batch's publishes."""


class PublishBatcher(Batcher):
    """Publishes sent many at a time as one pipeline, on the writer pool (never retried).

    Concurrent notifies share one round trip. A batch that fails on the connection
    fails every publish in it (each notify answers 503; its Idempotency-Key makes
    the retry safe), as a single publish would. ``scripts`` is (publish,); each call's
    argument is its ``(keys, args)`` (:func:`~.redis_scripts.publish_args`).

    With ``min_replicas`` N > 0 the pipeline ends with ``WAIT N timeout``: a batch is
    acknowledged only when N replicas have it, else every publish in it fails
    (:class:`ReplicasBehind`, 503). With ``single_events`` (the calls are PUBLISH's, one
    event each) the script is also asked (an extra ``"1"`` argument) to hand back its
    wake-up instead of publishing it, so that no process hears of an event before it is
    replicated (it is published after the WAIT), and each acknowledged (channel, seq) is
    told to the Sentinel fence, if any. Other scripts publish their own wake-ups.
    """

    def __init__(self, client: redis.Redis, scripts: tuple[Script, ...], flushers: int,
                 min_replicas: int = 0, replica_timeout_s: float = 0.5, single_events: bool = False) -> None:
        super().__init__(client, scripts, flushers)
        self._single = single_events
        self._min_replicas = min_replicas
        self._wait_ms = max(1, int(replica_timeout_s * 1000))
        self._fence = getattr(client.connection_pool, "fence", None) if single_events else None

    def _run(self, batch: list) -> list:
        sha = self._scripts[0].sha
        if not self._min_replicas:
            return self._observed(batch, self._execute([evalsha(sha, call) for _, call, _ in batch]))
        commands = [evalsha(sha, self._wake_returned(call)) for _, call, _ in batch]
        replies = self._execute([*commands, ("WAIT", self._min_replicas, self._wait_ms)])
        acked = replies.pop()
        if isinstance(acked, Exception) or acked < self._min_replicas:
            raise ReplicasBehind(f"{acked if not isinstance(acked, Exception) else 0} of "
                                 f"{self._min_replicas} replicas had the publish within {self._wait_ms} ms")
        wakes = [("PUBLISH", WAKE_CHANNEL, reply[3]) for reply in replies
                 if isinstance(reply, list) and len(reply) > 3]
        if wakes:
            try:
                self._execute(wakes)
            except redis.RedisError as exc:  # stored and replicated: acknowledged all the same
                log.warning("Redis wake-ups of %d replicated publishes not sent (%s); waiters read them "
                            "at their next poll", len(wakes), exc)
        return self._observed(batch, [reply[:3] if isinstance(reply, list) else reply for reply in replies])

    def _wake_returned(self, call: tuple) -> tuple:
        """PUBLISH's ``call`` asking for its wake-up back (see the class); other scripts' as is."""
        keys, args = call
        return (keys, (*args[:PUBLISH_ARGS], "1")) if self._single else call

    def _observed(self, batch: list, replies: list) -> list:
        """``replies``, each acknowledged (epoch, seq) told to the Sentinel fence first."""
        if self._fence is not None:
            for (_, (_, args), _), reply in zip(batch, replies):
                if isinstance(reply, list) and reply[2] == 0:
                    self._fence.observe(str(args[0]).encode(), int(reply[1]), reply[0])
        return replies


def _deliver(batch: list, results: list) -> None:
    # Runs in the gevent hub, as Waiter.switch requires.
    for (_, _, waiter), result in zip(batch, results):
        if waiter is not None:
            waiter.switch(result)


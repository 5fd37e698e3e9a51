"""The one Redis pub/sub listener of a process: wake-up messages in, reconnects with capped backoff.

Redis delivers a pub/sub message only to the subscribers connected when it is
published; redis-py reconnects and resubscribes a pub/sub connection on its own and
says nothing, so wake-ups sent meanwhile are lost without a trace. So every (re)subscription after
the first calls ``on_resubscribed`` (the backend wakes every local waiter to
re-read Redis), and a lost connection calls ``on_lost`` (the backend stops trusting
its tails) before the next try.

Behind Sentinel the pool's fence (:class:`~.redis_sentinel.MasterFence`) is told each
wake-up's channel, seq and epoch, so that a new master can be checked against them.
"""
from __future__ import annotations

import logging
from typing import Callable

import gevent
import redis
from gevent.event import Event

log = logging.getLogger(__name__)

#: Backoff of the listener's reconnects: doubling from the first to the cap.
RECONNECT_FIRST_S, RECONNECT_CAP_S = 0.05, 2.0


class WakeListener:
    """Listens on one pub/sub channel in its own greenlet until closed."""

    def __init__(self, client: redis.Redis, channel: str, on_message: Callable[[bytes], None],
                 on_resubscribed: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self._client = client
        self._channel = channel
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._on_lost = on_lost
        self._closing = False
        self._stop = Event()
        self._subscribed = Event()  # at least once
        #: Subscribed right now (for the backend's health).
        self.listening = False
        self._greenlet: gevent.Greenlet | None = None
        self._fence = getattr(client.connection_pool, "fence", None)  # redis+sentinel:// only

    def start(self, wait_s: float) -> bool:
        """Start listening; True if subscribed within ``wait_s`` (it keeps trying anyway)."""
        self._greenlet = gevent.spawn(self._run)
        return self._subscribed.wait(wait_s)

    def close(self) -> None:
        self._closing = True
        self._stop.set()
        if self._greenlet is not None:
            self._greenlet.kill(timeout=2)

    def _run(self) -> None:
        backoff, connected_before = RECONNECT_FIRST_S, False
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                # listen() blocks this greenlet on the socket; get_message(timeout) would
                # poll it first, which costs more than the message itself.
                for message in pubsub.listen():
                    if self._closing:
                        break
                    if message["type"] == "message":
                        if self._fence is not None:
                            channel, seq, epoch = message["data"].split(b"\n", 3)[:3]
                            self._fence.observe(channel, int(seq), epoch)
                        self._on_message(message["data"])
                    elif message["type"] == "subscribe":
                        backoff = RECONNECT_FIRST_S
                        if connected_before:  # redis-py resubscribed on its own
                            self._on_resubscribed()
                        connected_before = True
                        self.listening = True
                        self._subscribed.set()
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._closing:
                    break
                if connected_before:
                    log.warning("Redis wake-up listener lost its connection (%s); retrying in %.2f s",
                                exc, backoff)
                self._on_lost()  # until resubscribed, reads go to Redis
            finally:
                self.listening = False
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection
                    pass
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, RECONNECT_CAP_S)

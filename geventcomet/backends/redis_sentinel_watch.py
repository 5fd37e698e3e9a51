"""Hears Sentinel's ``+switch-master`` so that every pooled connection leaves a demoted master at once.

redis-py asks Sentinel for the master only when it opens a connection; a pooled
connection to the old master is used as long as it stays open. After ``SENTINEL
FAILOVER`` the old master keeps accepting writes until Sentinel demotes it (measured:
up to a few seconds with Redis 7.0), and those writes are lost when it resyncs from the
new master. So one greenlet per process subscribes to ``+switch-master`` on a sentinel
(the next one if that one fails, with the listener's capped backoff) and, on a switch of
our service (and after each (re)subscription, in case one was missed), calls
``on_switch``, which drops every connection to the old master.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import redis
from gevent.event import Event

from .redis_listener import RECONNECT_CAP_S, RECONNECT_FIRST_S

log = logging.getLogger(__name__)

SWITCH_CHANNEL = "+switch-master"


class SwitchWatch:
    """Subscribes to ``+switch-master`` on one of ``sentinels`` at a time, until closed."""

    def __init__(self, sentinels: list[tuple[str, int]], service: str, on_switch: Callable[[], None]) -> None:
        self._clients = [redis.Redis(host=host, port=port, socket_connect_timeout=1.0, socket_keepalive=True,
                                     health_check_interval=30) for host, port in sentinels]
        self._service = service.encode()
        self._on_switch = on_switch
        self._stop = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def close(self) -> None:
        self._stop.set()
        if self._greenlet is not None:
            self._greenlet.kill(timeout=2)
        for client in self._clients:
            client.connection_pool.disconnect()

    def _run(self) -> None:
        backoff = RECONNECT_FIRST_S
        while not self._stop.is_set():
            for client in self._clients:
                if self._listen(client):
                    backoff = RECONNECT_FIRST_S
                if self._stop.is_set():
                    return
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, RECONNECT_CAP_S)

    def _listen(self, client: redis.Redis) -> bool:
        """Listen on ``client`` until it fails; True if it was subscribed at all."""
        pubsub = client.pubsub()
        subscribed = False
        try:
            pubsub.subscribe(SWITCH_CHANNEL)
            for message in pubsub.listen():
                if message["type"] == "subscribe":
                    subscribed = True
                    self._switched()  # a switch may have happened while no sentinel was heard
                elif message["type"] == "message" and message["data"].split(b" ", 1)[0] == self._service:
                    self._switched()
        except (redis.RedisError, OSError) as exc:
            if not self._stop.is_set():
                log.debug("Sentinel %s: %s", client.connection_pool.connection_kwargs.get("port"), exc)
        finally:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection
                pass
        return subscribed

    def _switched(self) -> None:
        try:
            self._on_switch()
        except (redis.RedisError, OSError) as exc:  # no master known right now: new connections will ask
            log.debug("Sentinel knows no master right now: %s", exc)

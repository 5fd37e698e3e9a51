"""The blocking publisher, :class:`Publisher` (asyncio: :mod:`.async_publisher`).

Every call carries an ``Idempotency-Key`` (a fresh random one unless given), and the
same key on every retry, so a publish retried after a lost reply is stored once: the
server answers a repeated key with the first event's id. One keep-alive connection per
thread (:mod:`.stdhttp`, the standard library's ``http.client``) serves every call. See
:mod:`.policy` for what is retried and for how long.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import wire
from .backoff import Backoff
from .policy import DONE, Attempts
from .stdhttp import Pool, TransportError


def new_key() -> str:
    """A fresh Idempotency-Key: 128 random bits."""
    return secrets.token_urlsafe(16)


def notify_headers(token: str | Callable[[], str] | None, key: str) -> dict[str, str]:
    """The headers of one ``POST /notify`` attempt."""
    return {"Content-Type": "application/json", "Idempotency-Key": key, **wire.auth_headers(wire.current_token(token))}


class Publisher:
    """Publish to a geventcomet server from blocking code (a Django or Flask view, a Celery
    task, a script); it works unchanged in a gevent-monkey-patched program.

    ``token``: a string, or a callable returning the current token (called again once after
    a 401). ``retry_for_s`` bounds the time spent retrying one call; ``timeout_s`` bounds
    connecting and each attempt's reply. Thread-safe: a thread (or greenlet) in a call has a
    connection of its own, kept for the next call; use one publisher per process.
    """

    def __init__(self, url: str, token: str | Callable[[], str] | None = None, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0, backoff: Backoff | None = None) -> None:
        self.url, self.token, self.retry_for_s = url.rstrip("/"), token, retry_for_s
        self.backoff = backoff or Backoff()
        self.http = Pool(self.url, timeout_s)

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> int:
        """Store ``data`` on ``channel``; returns the event's id."""
        return wire.notify_id(self._post(wire.notify_body(channel, None, data), idempotency_key))

    def notify_client(self, client_id: str, data: Any, *, idempotency_key: str | None = None) -> int:
        """Send ``data`` to one client's private channel; :class:`NotFound` if it is not registered."""
        return wire.notify_id(self._post(wire.notify_body(None, client_id, data), idempotency_key))

    def publish_many(self, events: Iterable[Any], *, idempotency_key: str | None = None) -> list[int]:
        """Store a batch in one request, all or nothing: ``(channel, data)`` pairs or
        ``{"channel" | "client": .., "data": ..}`` dicts; returns their ids, in order."""
        return wire.batch_ids(self._post(wire.batch_body(events), idempotency_key))

    def _post(self, body: bytes, key: str | None) -> bytes:
        key = key or new_key()
        attempts = Attempts(self.backoff, self.retry_for_s)
        while True:
            try:
                reply = self.http.request("POST", "/notify", body=body, headers=notify_headers(self.token, key))
            except TransportError as exc:  # connection errors and timeouts: the same key again
                time.sleep(attempts.failed(f"{type(exc).__name__}: {exc}"))
                continue
            outcome, value = attempts.after_reply(reply.status, reply.headers.get("retry-after"), reply.body,
                                                  callable(self.token))
            if outcome == DONE:
                return value
            time.sleep(value)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Publishers over HTTP: :class:`Publisher` (blocking) and :class:`AsyncPublisher` (asyncio).

Every call carries an ``Idempotency-Key`` (a fresh random one unless given), and the
same key on every retry, so a publish retried after a lost reply is stored once: the
server answers a repeated key with the first event's id. One keep-alive connection
(an ``httpx`` client) serves every call of a publisher. See :mod:`.policy` for what is
retried and for how long.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from . import compat, wire
from .backoff import Backoff
from .policy import DONE, Attempts


def new_key() -> str:
    """A fresh Idempotency-Key: 128 random bits."""
    return secrets.token_urlsafe(16)


def _headers(token: str | Callable[[], str] | None, key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": key, **wire.auth_headers(wire.current_token(token))}


class Publisher:
    """Publish to a geventcomet server from blocking code (a Django or Flask view, a Celery
    task, a script); it works unchanged in a gevent-monkey-patched program.

    ``token``: a string, or a callable returning the current token (called again once after
    a 401). ``retry_for_s`` bounds the time spent retrying one call; ``timeout_s`` bounds
    each attempt. Thread-safe (``httpx.Client`` is); use one per process.
    """

    def __init__(self, url: str, token: str | Callable[[], str] | None = None, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0, backoff: Backoff | None = None) -> None:
        self.url, self.token, self.retry_for_s = url.rstrip("/"), token, retry_for_s
        self.backoff = backoff or Backoff()
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, verify=compat.ssl_context())

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
                reply = self._http.post("/notify", content=body, headers=_headers(self.token, key))
            except httpx.TransportError as exc:  # connection errors and timeouts: the same key again
                time.sleep(attempts.failed(f"{type(exc).__name__}: {exc}"))
                continue
            outcome, value = attempts.after_reply(reply.status_code, reply.headers.get("retry-after"),
                                                  reply.content, callable(self.token))
            if outcome == DONE:
                return value
            time.sleep(value)

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """:class:`Publisher` for asyncio: the same methods, awaited. Use one per event loop."""

    def __init__(self, url: str, token: str | Callable[[], str] | None = None, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0, backoff: Backoff | None = None) -> None:
        self.url, self.token, self.retry_for_s = url.rstrip("/"), token, retry_for_s
        self.backoff = backoff or Backoff()
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, verify=compat.ssl_context())

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> int:
        return wire.notify_id(await self._post(wire.notify_body(channel, None, data), idempotency_key))

    async def notify_client(self, client_id: str, data: Any, *, idempotency_key: str | None = None) -> int:
        return wire.notify_id(await self._post(wire.notify_body(None, client_id, data), idempotency_key))

    async def publish_many(self, events: Iterable[Any], *, idempotency_key: str | None = None) -> list[int]:
        return wire.batch_ids(await self._post(wire.batch_body(events), idempotency_key))

    async def _post(self, body: bytes, key: str | None) -> bytes:
        key = key or new_key()
        attempts = Attempts(self.backoff, self.retry_for_s)
        while True:
            try:
                reply = await self._http.post("/notify", content=body, headers=_headers(self.token, key))
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.failed(f"{type(exc).__name__}: {exc}"))
                continue
            outcome, value = attempts.after_reply(reply.status_code, reply.headers.get("retry-after"),
                                                  reply.content, callable(self.token))
            if outcome == DONE:
                return value
            await asyncio.sleep(value)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

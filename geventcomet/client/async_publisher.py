"""The asyncio publisher, :class:`AsyncPublisher`, on ``httpx.AsyncClient`` (the ``client`` extra).

The same promises as :class:`~.publisher.Publisher` (an Idempotency-Key on every call, the
same key on every retry, :mod:`.policy`'s retries), the same request bytes (:mod:`.wire`).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from . import wire
from .backoff import Backoff
from .compat import httpx, ssl_context
from .policy import DONE, Attempts
from .publisher import new_key, notify_headers


class AsyncPublisher:
    """:class:`~.publisher.Publisher` for asyncio: the same methods, awaited. Use one per event loop."""

    def __init__(self, url: str, token: str | Callable[[], str] | None = None, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0, backoff: Backoff | None = None) -> None:
        self.url, self.token, self.retry_for_s = url.rstrip("/"), token, retry_for_s
        self.backoff = backoff or Backoff()
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, verify=ssl_context())

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
                reply = await self._http.post("/notify", content=body, headers=notify_headers(self.token, key))
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

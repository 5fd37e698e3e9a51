"""The asyncio subscriber, :class:`AsyncSubscriber`, on ``httpx.AsyncClient`` (the ``client`` extra).

What both flavours promise is in :mod:`.subscriber_base`; this one is ``async for``, and
``await sub.close()`` cancels the poll in flight.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable

from .backoff import Backoff
from .compat import httpx, ssl_context
from .cursor_store import CursorStore
from .events import Gap
from .sse import FrameParser
from .subscriber_base import Item, SubscriberBase

#: What a request failing this way means: the connection failed, or close() came first
#: (RuntimeError: a closed client).
FAILED = (httpx.TransportError, RuntimeError)


class AsyncSubscriber(SubscriberBase):
    """:class:`Subscriber` for asyncio: ``async for event in AsyncSubscriber(url, ["news"]):``;
    ``await sub.close()`` ends it at once (the poll in flight is cancelled)."""

    def __init__(self, url: str, channels: str | Iterable[str], token: str | Callable[[], str] | None = None,
                 cursor: str | None = None, *, on_gap: Callable[[Gap], None] | None = None,
                 cursor_store: str | os.PathLike[str] | CursorStore | None = None,
                 poll_timeout_s: float | None = None, backoff: Backoff | None = None,
                 transport: str = "longpoll") -> None:
        super().__init__(url, channels, token, cursor, on_gap, cursor_store, poll_timeout_s, backoff, transport)
        self._stream: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10.0, read=self.read_timeout_s),
                                       verify=ssl_context())
        self._closed = asyncio.Event()

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Item:
        while not self._closed.is_set():
            item = self.next_item()
            if item is not None:
                return item
            delay = await (self._read_stream() if self.sse else self._poll())
            if delay > 0 and not self._closed.is_set():
                try:
                    await asyncio.wait_for(self._closed.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        raise StopAsyncIteration

    async def _read_stream(self) -> float:
        """:meth:`Subscriber._read_stream`, awaited."""
        if self._lines is None:
            self.save()
            request = self._http.build_request("GET", "/stream", params=self.core.params(None), headers=self.headers())
            try:
                response = await self._http.send(request, stream=True)
            except Exception as exc:  # noqa: BLE001 (see failed)
                return self.failed(exc, FAILED)
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                return self.take(response.status_code, response.headers.get("retry-after"), response.content)
            self.parser = FrameParser()
            self._stream, self._lines = response, response.aiter_lines()
        try:
            async for line in self._lines:
                ready = self.on_line(line)
                if ready:
                    return 0.0
                if ready is False:
                    break
        except (httpx.TransportError, httpx.StreamError, RuntimeError):
            pass
        if self._stream is not None:
            await self._stream.aclose()
        self._stream = self._lines = None
        return 0.0 if self._closed.is_set() else self.core.failed()

    async def _poll(self) -> float:
        self.save()
        try:
            reply = await self._http.get("/register", params=self.core.params(self.poll_timeout_s),
                                         headers=self.headers())
        except Exception as exc:  # noqa: BLE001 (whatever a close() from elsewhere made the poll raise)
            return self.failed(exc, FAILED)
        return self.take(reply.status_code, reply.headers.get("retry-after"), reply.content)

    async def close(self) -> None:
        """Stop: save the cursor (with a store) and close the connection."""
        if self.stopped:
            return
        self.stopped = True
        self._closed.set()
        self.save()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

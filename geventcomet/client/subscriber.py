"""Subscribers over the long-poll: :class:`Subscriber` (blocking) and :class:`AsyncSubscriber`.

``for item in sub:`` hands out :class:`Event` items in order, each once, and a :class:`Gap`
where the server said ``recovered: false`` (unless ``on_gap`` is given: then it is called
instead). ``sub.cursor`` is always the position just after the last item handed out;
with ``cursor_store`` it is saved before each poll and at ``close()``, and a new
subscriber given the same store resumes there (at-least-once: after a crash, at most
the events of the reply being handed out come again).

Reconnecting never ends by itself: connection errors, timeouts and 503s are retried with
full-jitter backoff, honouring ``Retry-After``. The poll is one keep-alive ``httpx`` connection.

``transport="sse"`` reads ``GET /stream`` instead (:mod:`.sse`): one long response, each
event with its cursor. The cursor store is then saved when the stream opens, at most once
a second while events arrive, and at ``close()``.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Union

import httpx

from . import compat, wire
from .backoff import Backoff
from .cursor_store import CursorStore, cursor_store
from .events import Event, Gap
from .policy import SubscriberCore
from .sse import FrameParser

Item = Union[Event, Gap]
#: Seconds a reply may take beyond the poll's timeout (SSE: beyond the 25 s; heartbeats every 15 s).
READ_SLACK_S = 15.0
#: Seconds between saves of the cursor store while an SSE stream hands out events.
SSE_SAVE_EVERY_S = 1.0
TRANSPORTS = ("longpoll", "sse")


class _Base:
    """The state both flavours share: the core, the store, the queue of items to hand out."""

    def __init__(self, url: str, channels: str | Iterable[str], token: str | Callable[[], str] | None,
                 cursor: str | None, on_gap: Callable[[Gap], None] | None,
                 store: str | os.PathLike[str] | CursorStore | None, poll_timeout_s: float | None,
                 backoff: Backoff | None, transport: str) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        self.sse, self.stopped = transport == "sse", False
        self.parser = FrameParser()
        self.saved_at = 0.0
        self.url = url.rstrip("/")
        self.token = token
        self.on_gap = on_gap
        self.poll_timeout_s = poll_timeout_s
        self.store = cursor_store(store)
        if cursor is None and self.store is not None:
            cursor = self.store.load()
        names = (channels,) if isinstance(channels, str) else tuple(channels)
        self.core = SubscriberCore(names, cursor, backoff or Backoff())
        self.pending: deque[Item] = deque()
        self.read_timeout = httpx.Timeout(10.0, read=(poll_timeout_s or 25.0) + READ_SLACK_S)

    @property
    def cursor(self) -> str | None:
        """The position just after the last item handed out (pass it as ``cursor=`` to resume)."""
        return self.core.cursor

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self.stopped

    @property
    def client(self) -> str | None:
        """The client id the server issued (its private channel gets ``notify_client`` events)."""
        return self.core.client

    def headers(self) -> dict[str, str]:
        return wire.auth_headers(wire.current_token(self.token))

    def save(self) -> None:
        if self.store is not None and self.core.cursor:
            self.store.save(self.core.cursor)
            self.saved_at = time.monotonic()

    def on_line(self, line: str) -> bool | None:
        """One line of an SSE stream: True when items are ready to hand out, False when the
        server asked to reconnect, None to read on."""
        frame = self.parser.feed(line)
        if frame is None:
            return None
        items, reconnect = self.core.after_frame(frame)
        self.pending.extend(items)
        if reconnect:
            return False
        if items and self.store is not None and time.monotonic() - self.saved_at >= SSE_SAVE_EVERY_S:
            self.save()
        return True if items else None

    def next_item(self) -> Item | None:
        """The next item to hand out (a gap given to ``on_gap`` is not), or None to poll."""
        while self.pending:
            item = self.pending.popleft()
            self.core.handed(item)
            if isinstance(item, Gap) and self.on_gap is not None:
                self.on_gap(item)
                continue
            return item
        return None

    def _failed(self, exc: Exception) -> float:
        """After a request failed: 0 if the subscriber was closed meanwhile (the iteration
        ends), the backoff after a connection error or timeout; anything else is raised."""
        if self.closed:
            return 0.0
        if isinstance(exc, (httpx.TransportError, RuntimeError)):  # RuntimeError: a closed client
            return self.core.failed()
        raise exc

    def take(self, reply: httpx.Response) -> float:
        items, delay = self.core.after_reply(reply.status_code, reply.headers.get("retry-after"), reply.content,
                                             callable(self.token))
        self.pending.extend(items)
        return delay


class Subscriber(_Base):
    """Receive events from blocking code: ``for event in Subscriber(url, ["news"]):``.

    Works in plain threads and, unchanged, in a gevent-monkey-patched program (one greenlet
    per subscriber). ``close()`` (from any thread) ends the iteration, at the latest when
    the poll in flight returns (``poll_timeout_s``, the server's ``--timeout`` by default).
    """

    def __init__(self, url: str, channels: str | Iterable[str], token: str | Callable[[], str] | None = None,
                 cursor: str | None = None, *, on_gap: Callable[[Gap], None] | None = None,
                 cursor_store: str | os.PathLike[str] | CursorStore | None = None,
                 poll_timeout_s: float | None = None, backoff: Backoff | None = None,
                 transport: str = "longpoll") -> None:
        super().__init__(url, channels, token, cursor, on_gap, cursor_store, poll_timeout_s, backoff, transport)
        self._stream: httpx.Response | None = None
        self._lines: Iterator[str] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=self.read_timeout, verify=compat.ssl_context())
        self._closed = threading.Event()

    def __iter__(self) -> Subscriber:
        return self

    def __next__(self) -> Item:
        while not self._closed.is_set():
            item = self.next_item()
            if item is not None:
                return item
            delay = self._read_stream() if self.sse else self._poll()
            if delay > 0:
                self._closed.wait(delay)
        raise StopIteration

    def _read_stream(self) -> float:
        """Read the SSE stream (opening it first) until items are ready; the delay before
        reading again (0 while the stream is open)."""
        if self._lines is None:
            self.save()
            request = self._http.build_request("GET", "/stream", params=self.core.params(None), headers=self.headers())
            try:
                response = self._http.send(request, stream=True)
            except Exception as exc:  # noqa: BLE001 (see _failed)
                return self._failed(exc)
            if response.status_code != 200:
                response.read()
                response.close()
                return self.take(response)
            self.parser = FrameParser()
            self._stream, self._lines = response, response.iter_lines()
        try:
            for line in self._lines:
                ready = self.on_line(line)
                if ready:
                    return 0.0
                if ready is False:
                    break
        except (httpx.TransportError, httpx.StreamError, RuntimeError):
            pass
        if self._stream is not None:
            self._stream.close()
        self._stream = self._lines = None
        return 0.0 if self._closed.is_set() else self.core.failed()

    def _poll(self) -> float:
        self.save()
        try:
            reply = self._http.get("/register", params=self.core.params(self.poll_timeout_s), headers=self.headers())
        except Exception as exc:  # noqa: BLE001 (whatever a close() from elsewhere made the poll raise)
            return self._failed(exc)
        return self.take(reply)

    def close(self) -> None:
        """Stop: save the cursor (with a store) and close the connection."""
        if self.stopped:
            return
        self.stopped = True
        self._closed.set()
        self.save()
        self._http.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber(_Base):
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
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.read_timeout, verify=compat.ssl_context())
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
            except Exception as exc:  # noqa: BLE001 (see _failed)
                return self._failed(exc)
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                return self.take(response)
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
            return self._failed(exc)
        return self.take(reply)

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

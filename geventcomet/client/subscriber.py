"""The blocking subscriber, :class:`Subscriber` (asyncio: :mod:`.async_subscriber`).

What both flavours promise is in :mod:`.subscriber_base`. The poll (or the SSE stream) is
one keep-alive connection on the standard library's ``http.client`` (:mod:`.stdhttp`).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator

from .backoff import Backoff
from .cursor_store import CursorStore
from .events import Gap
from .sse import FrameParser
from .stdhttp import ClientClosed, Pool, Stream, TransportError
from .subscriber_base import Item, SubscriberBase

#: What a request failing this way means: the connection failed, or close() came first.
FAILED = (TransportError, ClientClosed)


class Subscriber(SubscriberBase):
    """Receive events from blocking code: ``for event in Subscriber(url, ["news"]):``.

    Works in plain threads and, unchanged, in a gevent-monkey-patched program (one greenlet
    per subscriber). ``close()`` (from any thread) ends the iteration: it closes the
    connection, which ends the poll in flight.
    """

    def __init__(self, url: str, channels: str | Iterable[str], token: str | Callable[[], str] | None = None,
                 cursor: str | None = None, *, on_gap: Callable[[Gap], None] | None = None,
                 cursor_store: str | os.PathLike[str] | CursorStore | None = None,
                 poll_timeout_s: float | None = None, backoff: Backoff | None = None,
                 transport: str = "longpoll") -> None:
        super().__init__(url, channels, token, cursor, on_gap, cursor_store, poll_timeout_s, backoff, transport)
        self._stream: Stream | None = None
        self._lines: Iterator[str] | None = None
        self._http = Pool(self.url, 10.0)
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
            try:
                opened = self._http.stream("/stream", params=self.core.params(None), headers=self.headers(),
                                           timeout_s=self.read_timeout_s)
            except FAILED as exc:
                return self.failed(exc, FAILED)
            if not isinstance(opened, Stream):
                return self.take(opened.status, opened.headers.get("retry-after"), opened.body)
            self.parser = FrameParser()
            self._stream, self._lines = opened, opened.lines()
        try:
            for line in self._lines:
                ready = self.on_line(line)
                if ready:
                    return 0.0
                if ready is False:
                    break
        except TransportError:
            pass
        if self._stream is not None:
            self._stream.close()
        self._stream = self._lines = None
        return 0.0 if self._closed.is_set() else self.core.failed()

    def _poll(self) -> float:
        self.save()
        try:
            reply = self._http.request("GET", "/register", params=self.core.params(self.poll_timeout_s),
                                       headers=self.headers(), timeout_s=self.read_timeout_s)
        except FAILED as exc:
            return self.failed(exc, FAILED)
        return self.take(reply.status, reply.headers.get("retry-after"), reply.body)

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

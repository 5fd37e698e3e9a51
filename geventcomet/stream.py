"""``GET /stream``: the channels as Server-Sent Events, for ``EventSource``.

The same promise as the long-poll: the same channels, the same backlog, nothing
lost between reconnects. The stream is a loop of the service's ``wait`` calls
whose timeout is the heartbeat period; each batch it returns is written as SSE
frames, and a timeout is written as a comment line that keeps proxies from
closing an idle stream.

Resuming
--------
Every event's ``id:`` is the opaque cursor of ``/register`` *just after that event*
(``EPOCH~chan~seq~chan~seq...``, with every subscribed channel and the private one).
One channel's seq cannot say where a client stands in the others, and the cursor
already does. A browser reconnecting sends it back as ``Last-Event-ID``; a first
request, which cannot set headers, may pass ``?last_event_id=`` (or ``since=``). The
first frame, ``event: hello``, carries the starting cursor as its id, so even a
client that saw no event resumes from where it started rather than from "now".
A cursor names the client's private channel (``@ID``), so a native reconnect
without ``client=`` in its URL keeps the same client id.

Frames (``data:`` is always one line of JSON)::

    event: hello      {"client": ID, "epoch": E, "heartbeat_s": S}   (id: start cursor)
    event: gap        {"recovered": false, "epoch": E}   the backlog could not reach back
    (message)         {"channel": C, "id": N, "data": ...}           (id: cursor after it)
    event: reconnect  {"reason": "shutdown"}   the server is stopping; the stream ends
    : heartbeat       a comment, every ``heartbeat_s`` without events

The pure framing functions at the top do no I/O and are tested with plain calls;
:class:`StreamEndpoint` is a thin adapter over the :class:`~geventcomet.service.CometService`.
"""
from __future__ import annotations

import logging
import random
import socket
from typing import Iterator

from . import metrics_record, protocol
from .access import Access
from .errors import BackendError, ClientGone, CometError, Unavailable
from .longpoll import PollResult
from .peer import Peer
from .replies import Streamed
from .service import CometService

log = logging.getLogger(__name__)

#: Seconds without events before a heartbeat comment is written. Proxies commonly
#: close a response idle for 60 s (nginx ``proxy_read_timeout``), so stay well under.
HEARTBEAT_S = 15.0
#: The ``retry:`` the browser waits before reconnecting is drawn from this range (ms),
#: so that the clients of a restarted server do not all come back in the same instant.
RETRY_MS = (1000, 3000)
CONTENT_TYPE = "text/event-stream; charset=utf-8"
_STREAM_HEADERS = (("Cache-Control", "no-store"), ("X-Accel-Buffering", "no"))


# -- pure framing ------------------------------------------------------------

def event_position(encoded: bytes) -> tuple[str, int]:
    """The channel and seq of an encoded event (``protocol.encode_event``'s layout).

    Channel names never need JSON escaping (see ``protocol.CHANNEL_RE``), so the
    name ends at the next quote and the id at the next comma.
    """
    start = len(b'{"channel":"')
    end = encoded.index(b'"', start)
    id_start = end + len(b'","id":')
    return encoded[start:end].decode(), int(encoded[id_start:encoded.index(b",", id_start)])


def frame(data: bytes, *, event: str | None = None, event_id: str | None = None,
          retry_ms: int | None = None) -> bytes:
    """One SSE frame. ``data`` must be a single line (compact JSON is)."""
    parts = []
    if event is not None:
        parts.append(b"event: " + event.encode() + b"\n")
    if event_id is not None:
        parts.append(b"id: " + event_id.encode() + b"\n")
    if retry_ms is not None:
        parts.append(b"retry: %d\n" % retry_ms)
    parts.append(b"data: " + data + b"\n\n")
    return b"".join(parts)


def start_positions(result: PollResult) -> dict[str, int]:
    """Where a batch starts: each channel's position just before its first event in it.

    For a recovered batch this is the client's own cursor; after a gap it is the
    oldest position the backend can still serve, so resuming there loses nothing more.
    """
    positions = dict(result.positions)
    seen: set[str] = set()
    for encoded in result.events:
        channel, seq = event_position(encoded)
        if channel not in seen:
            seen.add(channel)
            positions[channel] = seq - 1
    return positions


def frame_batch(result: PollResult, positions: dict[str, int]) -> bytes:
    """A gap marker (if any) and one frame per event, each with the cursor after it.

    ``positions`` is :func:`start_positions` of the batch; it is advanced in place.
    """
    parts = []
    if not result.recovered:
        parts.append(frame(protocol.json_bytes({"recovered": False, "epoch": result.epoch}), event="gap"))
    for encoded in result.events:
        channel, seq = event_position(encoded)
        positions[channel] = seq
        parts.append(frame(encoded, event_id=protocol.encode_cursor(result.epoch, positions)))
    return b"".join(parts)


def hello(client: str, epoch: str, cursor: str, heartbeat_s: float, retry_ms: int) -> bytes:
    body = protocol.json_bytes({"client": client, "epoch": epoch, "heartbeat_s": heartbeat_s})
    return frame(body, event="hello", event_id=cursor, retry_ms=retry_ms)


HEARTBEAT = b": heartbeat\n\n"
SHUTDOWN = frame(b'{"reason":"shutdown"}', event="reconnect")


# -- the endpoint ------------------------------------------------------------

class StreamEndpoint:
    """``GET /stream`` over one :class:`~geventcomet.service.CometService`.

    Open streams are parked in the service's hub between batches, so they appear in
    ``/stats`` ``waiting``; every open stream counts against ``--max-waiting``, also
    while it writes (a client that does not read holds its stream until the write
    deadline): :attr:`CometService.streams <geventcomet.service.CometService.streams>`
    counts them. Events written count in ``delivered``, hang-ups in ``disconnects``.
    """

    def __init__(self, service: CometService, *, heartbeat_s: float = HEARTBEAT_S,
                 retry_ms: tuple[int, int] = RETRY_MS, access: Access | None = None) -> None:
        self.service = service
        #: Who may read what (EventSource sends its token as ``?token=``).
        self.access = access or Access(service.config)
        #: Seconds between heartbeat comments on an idle stream.
        self.heartbeat_s = heartbeat_s
        #: Range the per-stream ``retry:`` (ms) is drawn from.
        self.retry_ms = retry_ms

    def open_stream(self, environ: dict) -> Streamed:
        """Validate and subscribe (errors are plain JSON replies), then stream."""
        service = self.service
        if service.hub.closing:
            raise Unavailable("server is shutting down; reconnect")
        service.refuse_if_full()
        req = service.parse_register(environ.get("QUERY_STRING", ""), resumable=True,
                                     last_event_id=environ.get("HTTP_LAST_EVENT_ID"))
        access = self.access
        sub = access.check_read(environ, req.channels, req.client) if access.active else None
        client, channels, positions = service.subscribe(req, sub)
        # The first read does not wait: its positions are the hello's cursor.
        first = service.wait(channels, positions, req.cursor.epoch, 0, None)
        sock = environ.get("geventcomet.socket") or environ.get("gunicorn.socket")
        return Streamed(CONTENT_TYPE, _STREAM_HEADERS, self._run(client, channels, first, sock))

    def _run(self, client: str, channels: tuple[str, ...], result: PollResult,
             sock: Peer | socket.socket | None) -> Iterator[bytes]:
        service, streams = self.service, self.service.streams
        streams.open += 1
        streams.opened += 1
        try:
            positions = start_positions(result)
            yield hello(client, result.epoch, protocol.encode_cursor(result.epoch, positions),
                        self.heartbeat_s, random.randint(*self.retry_ms))
            first = True
            while True:
                if result.shutting_down:
                    yield SHUTDOWN
                    return
                if result.events or not result.recovered:
                    # Activity, like a poll, keeps the registration alive: a busy stream
                    # may never reach a heartbeat before the client TTL.
                    service.refresh(client)
                    service.stats.delivered += len(result.events)
                    if not result.recovered:
                        metrics_record.count_gap()
                    yield frame_batch(result, positions)
                elif result.timeout and not first:  # the first read never waits
                    service.refresh(client)
                    yield HEARTBEAT
                result = self._wait(channels, positions, result.epoch, sock)
                first = False
                positions = start_positions(result)
        except (CometError, BackendError) as exc:  # the backend failed: end it, the browser retries
            log.warning("ending a stream: %s", getattr(exc, "message", exc))  # never the client id: a credential
        finally:
            streams.open -= 1

    def _wait(self, channels: tuple[str, ...], positions: dict[str, int], epoch: str,
              sock: Peer | socket.socket | None) -> PollResult:
        service, streams = self.service, self.service.streams
        streams.parked += 1
        try:
            return service.wait(channels, positions, epoch, self.heartbeat_s, sock)
        except ClientGone:
            service.stats.disconnects += 1
            raise
        finally:
            streams.parked -= 1

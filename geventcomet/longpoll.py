"""Hold one request until its channels have news, its time runs out, or its client leaves.

The request's greenlet blocks on a single :class:`~gevent.hub.Waiter` that three
things may switch to: the :class:`~geventcomet.hub.Hub` on a publish, a loop timer
at the timeout, and an I/O watcher on the client's socket. Each request owns its
timer and watcher, so nothing scans waiters to expire them, and a client that hangs
up is noticed as soon as its FIN or RST arrives (pywsgi alone would hold it until
the timeout).

This is the wait under every transport: :meth:`CometService.wait
<geventcomet.service.CometService.wait>` calls :func:`hold`.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Mapping

import gevent
from gevent.hub import Waiter

from .backends import EMPTY_PAGE, Backend, Page
from .errors import ClientGone
from .hub import Hub, Reason
from .peer import Peer


@dataclass(slots=True)
class PollResult:
    """What to answer: events in channel order, the positions after them, and flags."""

    events: list[bytes]
    positions: dict[str, int]
    epoch: str
    recovered: bool
    timeout: bool = False
    shutting_down: bool = False


def read_all(backend: Backend, channels: tuple[str, ...], positions: Mapping[str, int | None],
             epoch: str | None) -> PollResult:
    """Read every channel after its position, one page in all: at most ``max_reply_events``
    events and ``max_reply_bytes`` bytes (but at least one event, so a client always
    progresses). Positions become where each channel's read stopped, so the cursor
    resumes exactly there; a channel read after the page is full only reports its position.
    """
    events: list[bytes] = []
    after: dict[str, int] = {}
    recovered, current_epoch = True, epoch
    page = full = backend.full_page()
    size = 0
    for channel in channels:
        read = backend.read(channel, positions.get(channel), epoch, page)
        if read.events:
            events.extend(read.events)
            size += sum(map(len, read.events))
            left_events, left_size = full.events - len(events), full.size - size
            page = Page(left_events, left_size, False) if left_events > 0 and left_size > 0 else EMPTY_PAGE
        after[channel] = read.last_seq
        recovered = recovered and read.recovered
        current_epoch = read.epoch
    return PollResult(events, after, current_epoch or "", recovered)


def hold(hub: Hub, backend: Backend, channels: tuple[str, ...], positions: Mapping[str, int | None],
         epoch: str | None, timeout_s: float, sock: Peer | socket.socket | None) -> PollResult:
    """Answer at once if there is news (or a gap to report), else wait for it.

    ``sock`` is watched for a hang-up: the server's :class:`~geventcomet.peer.Peer`
    (which keeps pipelined bytes, so the watch stays on), or a plain socket (gunicorn).
    Raises :class:`ClientGone` if the client hangs up while waiting.
    """
    waiter = Waiter()
    hub.park(waiter, channels)  # before the first read: see the hub's docstring
    parked = True
    loop = gevent.get_hub().loop
    timer = watcher = None
    try:
        while True:
            result = read_all(backend, channels, positions, epoch)
            if result.events or not result.recovered:
                return result
            if hub.closing:
                result.shutting_down = True
                return result
            positions, epoch = result.positions, result.epoch  # read_all never changes them
            if not parked:  # woken without news for us: park, then read once more before waiting
                hub.park(waiter, channels)
                parked = True
                continue
            if timer is None:
                if timeout_s <= 0:
                    result.timeout = True
                    return result
                switch = waiter.switch  # one bound method for both watchers
                timer = loop.timer(timeout_s)
                timer.start(switch, Reason.TIMEOUT)
                if sock is not None:  # a Peer lends its connection's watcher (no new one per poll)
                    watcher = sock.read_watcher() if isinstance(sock, Peer) else loop.io(sock.fileno(), 1)
                    watcher.start(switch, Reason.READABLE)
                del switch
            del result  # a parked frame keeps none of it
            reason = waiter.get()
            waiter.clear()
            if reason is Reason.TIMEOUT:
                result = read_all(backend, channels, positions, epoch)
                result.timeout = not result.events and result.recovered
                return result
            if reason is Reason.READABLE and sock is not None and watcher is not None:
                if client_gone(sock):
                    raise ClientGone()
                if not isinstance(sock, Peer):  # the bytes stay in a plain socket: stop, or it spins
                    watcher.stop()
            else:  # a wake took us out of that channel's set; usually the read finds news
                parked = False
    finally:
        hub.unpark(waiter, channels)
        if timer is not None:
            timer.close()
        if watcher is not None:
            watcher.stop() if isinstance(sock, Peer) else watcher.close()


def client_gone(sock: Peer | socket.socket) -> bool:
    """True if the client closed or reset the connection.

    A Peer takes pipelined bytes off the socket for the next request (and is gone past
    its bound); a plain socket is peeked, so nothing is consumed.
    """
    if isinstance(sock, Peer):
        return sock.readable_while_held()
    raw = getattr(sock, "_sock", sock)  # gevent's socket wraps the real one
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True

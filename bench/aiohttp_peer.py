"""A minimal aiohttp (asyncio) long-poll server: the Python peer geventcomet is measured against.

It speaks the subset of geventcomet's protocol that ``loadclient`` and the benchmarks use,
written the way a small aiohttp app would be (one coroutine per waiting client, a future
per waiter, ``handler_cancellation=True`` so a client's hang-up frees its waiter):

- ``GET /register?channel=C[&channel=D]&since=CURSOR&client=ID&timeout=S``: the events after
  the cursor (``{"events": [{"channel", "id", "data"}], "cursor", "timeout", "client"}``),
  or wait up to ``timeout`` seconds for one. The cursor is ``C~ID~D~ID``.
- ``POST /notify`` with JSON ``{"channel": C, "data": ...}``: ``{"channel", "id", "woken"}``.
- ``GET /stats[?waiting=N&timeout=S]``: ``waiting``, ``published``, ``delivered``,
  ``polls``, ``rss_bytes``; with ``waiting=N`` it answers once N polls wait (bench hook).

Each channel keeps its last :data:`HISTORY` events (encoded once at publish). No auth,
no limits, no SSE: only what the benchmarks need. Run::

    python bench/aiohttp_peer.py [--port 0]

It prints ``PORT <n>`` on stdout once it listens (``bench/side_by_side.py`` reads it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from aiohttp import web

#: Events kept per channel for clients that resume from an older cursor.
HISTORY = 1000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class Channel:
    __slots__ = ("last", "events", "waiters")

    def __init__(self) -> None:
        self.last = 0
        self.events: list[bytes] = []  # the last HISTORY events, ids last-len+1 .. last
        self.waiters: set[asyncio.Future] = set()

    def after(self, seq: int) -> list[bytes]:
        missing = self.last - seq
        if missing <= 0:
            return []
        return self.events[-min(missing, len(self.events)):]


class Peer:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.waiting = 0
        self.published = self.delivered = self.polls = 0
        self.next_client = 0
        self.count_watchers: dict[int, asyncio.Event] = {}

    def channel(self, name: str) -> Channel:
        found = self.channels.get(name)
        if found is None:
            found = self.channels[name] = Channel()
        return found

    def _count_changed(self) -> None:
        event = self.count_watchers.get(self.waiting)
        if event is not None:
            event.set()

    async def register(self, request: web.Request) -> web.Response:
        query = request.query
        names = query.getall("channel", [])
        if not names:
            return web.json_response({"error": "no channel"}, status=400)
        positions = dict.fromkeys(names, None)
        since = query.get("since")
        if since:
            parts = since.split("~")
            for name, seq in zip(parts[::2], parts[1::2]):
                if name in positions:
                    positions[name] = int(seq)
        client = query.get("client")
        if client is None:
            self.next_client += 1
            client = f"c{self.next_client}"
        timeout_s = float(query.get("timeout", "30"))
        channels = [self.channel(name) for name in names]
        for i, ch in enumerate(channels):  # no cursor: start at the end
            if positions[names[i]] is None:
                positions[names[i]] = ch.last
        events = self._read(names, channels, positions)
        timed_out = False
        if not events and timeout_s > 0:
            future = asyncio.get_running_loop().create_future()
            for ch in channels:
                ch.waiters.add(future)
            self.waiting += 1
            self._count_changed()
            try:
                await asyncio.wait_for(future, timeout_s)
            except asyncio.TimeoutError:
                timed_out = True
            finally:
                for ch in channels:
                    ch.waiters.discard(future)
                self.waiting -= 1
                self._count_changed()
            events = self._read(names, channels, positions)
            timed_out = timed_out and not events
        self.polls += 1
        self.delivered += len(events)
        cursor = "~".join(f"{name}~{positions[name]}" for name in names)
        body = b"".join((b'{"events":[', b",".join(events), b'],"cursor":', json.dumps(cursor).encode(),
                         b',"timeout":', b"true" if timed_out else b"false",
                         b',"client":', json.dumps(client).encode(), b"}\n"))
        return web.Response(body=body, content_type="application/json")

    def _read(self, names: list[str], channels: list[Channel], positions: dict) -> list[bytes]:
        events: list[bytes] = []
        for name, ch in zip(names, channels):
            events += ch.after(positions[name])
            positions[name] = ch.last
        return events

    async def notify(self, request: web.Request) -> web.Response:
        try:
            message = json.loads(await request.read())
            name, data = message["channel"], message["data"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON {channel, data}"}, status=400)
        ch = self.channel(name)
        ch.last += 1
        ch.events.append(b'{"channel":%s,"id":%d,"data":%s}' % (
            json.dumps(name).encode(), ch.last, json.dumps(data, separators=(",", ":")).encode()))
        if len(ch.events) > HISTORY:
            del ch.events[:len(ch.events) - HISTORY]
        self.published += 1
        waiters, ch.waiters = ch.waiters, set()
        for future in waiters:
            if not future.done():
                future.set_result(None)
        return web.json_response({"channel": name, "id": ch.last, "woken": len(waiters)})

    async def stats(self, request: web.Request) -> web.Response:
        wanted = request.query.get("waiting")
        if wanted is not None:
            count = int(wanted)
            event = self.count_watchers.setdefault(count, asyncio.Event())
            if self.waiting == count:
                event.set()
            try:
                await asyncio.wait_for(event.wait(), float(request.query.get("timeout", "30")))
            except asyncio.TimeoutError:
                pass
            finally:
                self.count_watchers.pop(count, None)
        return web.json_response({"waiting": self.waiting, "published": self.published,
                                  "delivered": self.delivered, "polls": self.polls, "rss_bytes": rss_bytes()})


async def serve(port: int) -> None:
    peer = Peer()
    app = web.Application()
    app.router.add_get("/register", peer.register)
    app.router.add_post("/notify", peer.notify)
    app.router.add_get("/stats", peer.stats)
    runner = web.AppRunner(app, handle_signals=True, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 (aiohttp offers no public getter)
    print(f"PORT {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

"""The client's flavours in child processes, each as an application would run it: asyncio with
200 subscribers under ``asyncio.run``, plain threads, a gevent-monkey-patched program; a
subscriber killed with SIGKILL and restarted on its cursor store; importing the client
leaves gevent and the server out."""
import signal
import subprocess
import sys

import gevent

from .client_fixtures import REPO, publish_ids, run_python
from .test_client_subscriber import first_cursor


def test_importing_the_client_imports_neither_gevent_nor_the_server():
    result = run_python("""
        import json, sys
        import geventcomet.client
        from geventcomet.client import RedisPublisher
        loaded = sorted(m for m in sys.modules if m == "gevent" or m.startswith("gevent.")
                        or m in ("geventcomet.app", "geventcomet.server", "geventcomet.service"))
        print(json.dumps({"loaded": loaded}))
    """)
    assert result == {"loaded": []}


def test_asyncio_two_hundred_subscribers_under_asyncio_run(start_server):
    server = start_server(max_channels=16)
    cursor = first_cursor(server.url, "room")
    publish_ids(server.url, "room", 20)
    result = run_python("""
        import asyncio, json, sys
        from geventcomet.client import AsyncPublisher, AsyncSubscriber

        async def subscriber(url, cursor, transport):
            got = []
            async with AsyncSubscriber(url, "room", cursor=cursor, poll_timeout_s=10, transport=transport) as sub:
                async for event in sub:
                    got.append(event.id)
                    if len(got) == 25:
                        return got

        async def main(url, cursor):
            tasks = [asyncio.create_task(subscriber(url, cursor, "sse" if n % 4 == 0 else "longpoll"))
                     for n in range(200)]  # a quarter of them on SSE
            async with AsyncPublisher(url) as publisher:
                ids = [await publisher.publish("room", n) for n in range(5)]
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return {"ok": sum(r == list(range(1, 26)) for r in results), "ids": ids}

        print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
    """, server.url, cursor)
    assert result == {"ok": 200, "ids": [21, 22, 23, 24, 25]}


def test_blocking_flavour_in_plain_threads(start_server):
    server = start_server()
    cursor = first_cursor(server.url, "t")
    result = run_python("""
        import json, sys, threading
        from geventcomet.client import Publisher, Subscriber
        url, cursor = sys.argv[1], sys.argv[2]
        got = {}

        def consume(name):
            with Subscriber(url, "t", cursor=cursor, poll_timeout_s=10) as sub:
                got[name] = [next(sub).id for _ in range(40)]

        threads = [threading.Thread(target=consume, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        with Publisher(url) as publisher:
            publishers = [threading.Thread(target=lambda k=k: [publisher.publish("t", [k, n]) for n in range(10)])
                          for k in range(4)]
            for thread in publishers:
                thread.start()
            for thread in publishers:
                thread.join(60)
        for thread in threads:
            thread.join(60)
        print(json.dumps({"ok": sum(ids == list(range(1, 41)) for ids in got.values())}))
    """, server.url, cursor)
    assert result == {"ok": 8}


def test_blocking_flavour_under_gevent_monkey_patching(start_server):
    server = start_server()
    cursor = first_cursor(server.url, "g")
    result = run_python("""
        from gevent import monkey
        monkey.patch_all()
        import json, sys
        import gevent
        from geventcomet.client import Publisher, Subscriber
        url, cursor = sys.argv[1], sys.argv[2]

        def consume():
            with Subscriber(url, "g", cursor=cursor, poll_timeout_s=10) as sub:
                return [next(sub).id for _ in range(30)]

        greenlets = [gevent.spawn(consume) for _ in range(50)]  # one greenlet per subscriber
        with Publisher(url) as publisher:
            ids = [publisher.publish("g", n) for n in range(30)]
        gevent.joinall(greenlets, timeout=60, raise_error=True)
        print(json.dumps({"ok": sum(g.value == list(range(1, 31)) for g in greenlets), "ids": ids[-1]}))
    """, server.url, cursor)
    assert result == {"ok": 50, "ids": 30}


SUBSCRIBE_PRINTING_IDS = """
import sys
from geventcomet.client import Subscriber
url, store = sys.argv[1], sys.argv[2]
with Subscriber(url, "k", cursor=sys.argv[3] if len(sys.argv) > 3 else None, cursor_store=store,
                poll_timeout_s=10) as sub:
    for event in sub:
        print(event.id, flush=True)
"""


def test_a_killed_subscriber_resumes_from_its_cursor_store(start_server, tmp_path):
    server = start_server()
    store = tmp_path / "cursor"
    first = subscriber_process(server.url, store, first_cursor(server.url, "k"))
    publish_ids(server.url, "k", 300)
    seen = read_ids(first, 150)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    seen += [int(line) for line in first.stdout]  # what it printed before it died
    publish_ids(server.url, "k", 200)  # while no subscriber runs
    second = subscriber_process(server.url, store)  # no cursor given: the store's
    try:
        resumed = read_ids(second, until=500)
    finally:
        second.kill()
        second.wait(10)
    assert set(seen + resumed) == set(range(1, 501))  # none lost
    assert resumed[0] <= seen[-1] + 1 and len(resumed) - (500 - seen[-1]) <= 300  # at most a reply again
    assert resumed[-200:] == list(range(301, 501))


def subscriber_process(url, store, cursor=None):
    return subprocess.Popen([sys.executable, "-c", SUBSCRIBE_PRINTING_IDS, url, str(store),
                             *([cursor] if cursor else [])], cwd=REPO, stdout=subprocess.PIPE, text=True)


def read_ids(proc, count=None, until=None, timeout=60):
    """Ids a subscriber process prints: ``count`` of them, or up to the id ``until``."""
    ids = []
    with gevent.Timeout(timeout, AssertionError(f"the subscriber printed only {ids[-3:]}...")):
        for line in proc.stdout:
            ids.append(int(line))
            if len(ids) == count or ids[-1] == until:
                return ids
    raise AssertionError(f"the subscriber exited after {len(ids)} ids")

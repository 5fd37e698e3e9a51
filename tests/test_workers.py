"""Many processes: ``serve --workers N`` over Redis, and gunicorn's gevent worker.

Real processes on one real port; a worker is told apart by the
``X-Geventcomet-Worker`` header, and a connection is "pinned" to a worker by
opening fresh keep-alive connections until one lands there (SO_REUSEPORT spreads
them by address hash, so a few tries suffice).
"""
import logging
import os
import signal
import subprocess
import sys

import gevent
import pytest
import requests

from loadclient.runner import Options, Run

from .helpers import ServerProcess
from .services import free_port

WORKER = "X-Geventcomet-Worker"


def session_on(url, want=None, avoid=None, tries=200):
    """A keep-alive session whose connection is served by worker ``want`` (or any but ``avoid``)."""
    for _ in range(tries):
        http = requests.Session()
        pid = http.get(url + "/stats", timeout=5).headers[WORKER]
        if (want is None or pid == want) and pid != avoid:
            http.worker = pid
            return http
        http.close()
    raise AssertionError(f"no connection reached worker {want or 'other than ' + str(avoid)}")


def wait_waiting(http, count, timeout=5.0):
    """Until the worker behind ``http`` holds ``count`` polls (its /stats, over the same connection)."""
    stats = http.get(http.url + "/stats", params={"waiting": count, "timeout": timeout}, timeout=timeout + 5)
    assert stats.json()["waiting"] == count, f"worker never had {count} waiting"


def poll(http, url, channel, cursor=None, timeout=10, **params):
    query = {"channel": channel, "timeout": timeout, **params}
    if cursor:
        query["since"] = cursor
    reply = http.get(url + "/register", params=query, timeout=timeout + 10)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture
def workers(redis_url):
    running = []

    def start(n=2, *args):
        proc = ServerProcess("--workers", str(n), "--backend", redis_url, "--test-hooks", *args, ready_timeout=40)
        running.append(proc)
        assert proc.ready is not None and len(proc.ready.workers) == n, "".join(proc.log)  # every one listens
        return proc

    yield start
    for proc in running:
        proc.stop()


def test_a_notify_on_one_worker_wakes_a_client_on_another(workers):
    server = workers(2)
    a = session_on(server.url)
    b = session_on(server.url, avoid=a.worker)
    a.url = server.url
    waiting = gevent.spawn(poll, a, server.url, "news")
    a_stats = session_on(server.url, want=a.worker)
    a_stats.url = server.url
    wait_waiting(a_stats, 1)
    assert b.post(server.url + "/notify", json={"channel": "news", "data": "hi"}, timeout=5).json()["id"] == 1
    reply = waiting.get(timeout=5)
    assert reply["events"] == [{"channel": "news", "id": 1, "data": "hi"}]


def test_a_client_alternating_workers_misses_nothing(workers):
    server = workers(2)
    one = session_on(server.url)
    two = session_on(server.url, avoid=one.worker)
    notifier = requests.Session()
    stop = gevent.event.Event()
    polled = gevent.event.Event()  # set after each poll: the notifier's cue
    sent = []

    def notify_meanwhile():
        # A few events after each poll's reply: they race the client's next poll, so some are
        # published while it is between polls and some while it is held, on either worker.
        n = 0
        while polled.wait(10) and not stop.is_set():
            polled.clear()
            for _ in range(3):
                n += 1
                reply = notifier.post(server.url + "/notify", json={"channel": "news", "data": n}, timeout=5)
                sent.append(reply.json()["id"])

    first = poll(one, server.url, "news", timeout=0)  # the id one worker mints, every worker accepts
    cursor, roamer = first["cursor"], first["client"]
    job = gevent.spawn(notify_meanwhile)
    got = []
    for i in range(30):
        polled.set()
        reply = poll((one, two)[i % 2], server.url, "news", cursor, timeout=1, client=roamer)
        assert reply["recovered"] is True
        got.extend(e["id"] for e in reply["events"])
        cursor = reply["cursor"]
    stop.set()
    polled.set()
    job.get(timeout=10)
    while len(got) < len(sent):  # drain what was published after the last poll
        reply = poll(two, server.url, "news", cursor, timeout=1, client=roamer)
        got.extend(e["id"] for e in reply["events"])
        cursor = reply["cursor"]
    assert got == sent == list(range(1, len(sent) + 1))


def test_a_killed_worker_is_replaced_and_its_clients_lose_nothing(workers):
    server = workers(2)
    doomed = session_on(server.url)
    first = poll(doomed, server.url, "news", timeout=0)
    held = gevent.spawn(poll, doomed, server.url, "news", first["cursor"])
    stats = session_on(server.url, want=doomed.worker)
    stats.url = server.url
    wait_waiting(stats, 1)
    os.kill(int(doomed.worker), signal.SIGKILL)
    with pytest.raises(requests.ConnectionError):
        held.get(timeout=5)  # its connection dies with the worker
    for n in range(5):  # published while the client is between polls
        requests.post(server.url + "/notify", json={"channel": "news", "data": n}, timeout=5)
    server.wait_log(rf"pid {doomed.worker}\) exited with status -9; starting a replacement")
    reply = poll(requests.Session(), server.url, "news", first["cursor"], timeout=1)  # any live worker
    assert [e["id"] for e in reply["events"]] == [1, 2, 3, 4, 5] and reply["recovered"] is True
    with gevent.Timeout(10, AssertionError("no replacement worker answered")):
        pids = set()
        while len(pids - {doomed.worker}) < 2:
            pids.add(requests.get(server.url + "/stats", timeout=5).headers[WORKER])


def test_sigterm_to_the_parent_stops_every_worker_gracefully(workers):
    server = workers(2)
    first = session_on(server.url)
    second = session_on(server.url, avoid=first.worker)
    sessions = [session_on(server.url, want=w) for w in (first.worker, second.worker)
                for _ in range(3)]  # three held polls pinned to each worker
    held = [gevent.spawn(s.get, server.url + "/register", params={"channel": "news", "timeout": 30}, timeout=40)
            for s in sessions]
    for worker in {s.worker for s in sessions}:
        watcher = session_on(server.url, want=worker)
        watcher.url = server.url
        wait_waiting(watcher, 3)
    assert server.terminate(timeout=15) == 0
    for job in held:
        reply = job.get(timeout=5)
        assert reply.status_code == 503 and reply.json()["reconnect"] is True


def test_sighup_recycles_every_worker_while_clients_poll_and_lose_nothing(workers, caplog):
    """Workers replaced one at a time under load: new pids, every event delivered once."""
    caplog.set_level(logging.DEBUG, logger="loadclient")  # a refused notify says why, on failure
    server = workers(2)
    before = {str(pid) for pid in server.ready.workers}
    the_run = Run(Options(url=server.url, clients=40, channels=4, notify_rate=100, poll_timeout=5,
                          progress=0, duration=60))
    try:
        the_run.start()
        assert the_run.wait_ready()
        publishing = gevent.spawn(the_run.notify_phase)
        server.proc.send_signal(signal.SIGHUP)
        done = server.wait_log(r"restart done: workers", timeout=40)
        after = set(done.rsplit("workers ", 1)[1].split())
        the_run.stop_requested.set()  # events kept flowing through the whole restart
        publishing.get(timeout=10)
        report = the_run.finish()
    finally:
        the_run.close()
    print(report.format_text())
    if report.notify_errors:  # seen once in a full run: show the server's side too
        print("".join(server.log[-60:]))
    assert len(after) == 2 and not after & before
    for pid in before:  # the old workers are gone, not left running beside the new ones
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert report.events_sent > 0 and report.notify_errors == 0
    assert report.lost == 0 and report.duplicated == 0 and report.recovered_false == 0
    assert report.events_received == report.events_sent * 10  # 40 clients over 4 channels
    assert report.end_markers_received == 40 and report.clients_failed == 0
    assert {requests.get(server.url + "/stats", timeout=5).headers[WORKER] for _ in range(20)} <= after


def test_a_restart_tells_held_clients_to_come_back_at_once_and_sigterm_in_one_second(workers):
    server = workers(2)
    held = []
    for _ in range(2):  # one poll held on each of two workers: both are recycled
        http = session_on(server.url, avoid=held[0][0].worker if held else None)
        held.append((http, gevent.spawn(http.get, server.url + "/register",
                                        params={"channel": "news", "timeout": 30}, timeout=40)))
        watcher = session_on(server.url, want=http.worker)
        watcher.url = server.url
        wait_waiting(watcher, 1)
    server.proc.send_signal(signal.SIGHUP)
    for _, job in held:
        reply = job.get(timeout=30)
        assert reply.status_code == 503 and reply.json()["reconnect"] is True
        assert reply.headers["Retry-After"] == "0"  # the new worker already listens
    server.wait_log(r"restart done: workers")
    http = session_on(server.url)
    job = gevent.spawn(http.get, server.url + "/register", params={"channel": "news", "timeout": 30}, timeout=40)
    watcher = session_on(server.url, want=http.worker)
    watcher.url = server.url
    wait_waiting(watcher, 1)
    assert server.terminate(timeout=15) == 0
    reply = job.get(timeout=5)
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"  # the whole server stops


def test_sigterm_in_the_middle_of_a_restart_leaves_no_worker_behind(workers):
    server = workers(2)
    port = server.url.rsplit(":", 1)[1]
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"restarting 2 workers")  # a new worker is starting now
    assert server.terminate(timeout=30) == 0
    assert worker_pids(port) == []  # the parent waited for each: old, new and the one starting


def worker_pids(port: str) -> list[str]:
    """Live geventcomet worker processes configured for ``port`` (from their environment)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as env:
                text = env.read()
        except OSError:
            continue
        if b"GEVENTCOMET_WORKER_CONFIG=" in text and f'"port": {port},'.encode() in text:
            found.append(pid)
    return found


@pytest.mark.parametrize("backend, message", [
    ("memory", "needs a shared backend"),
    ("sqlite:///tmp/geventcomet-workers.db", "cannot use the sqlite backend"),
    ("redis://127.0.0.1:{port}/0", "cannot reach Redis"),
    ("nosuch://x", "unknown backend"),
])
def test_bad_backends_are_start_up_errors(backend, message):
    proc = subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--port", "0", "--workers", "2",
                           "--backend", backend.format(port=free_port())],
                          capture_output=True, text=True, timeout=30)
    # A mistake in the configuration is exit 2 (issue 14); Redis not answering is found later: 1.
    assert proc.returncode == (1 if "Redis" in message else 2), proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_gunicorn_gevent_workers_share_redis(redis_url, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "2", "geventcomet.wsgi:app"],
        env={**os.environ, "GEVENTCOMET_BACKEND": redis_url, "GEVENTCOMET_TEST_HOOKS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    booted = []
    try:
        with gevent.Timeout(20, AssertionError("gunicorn did not boot 2 workers")):
            for line in proc.stderr:
                if "Booting worker" in line:
                    booted.append(line)
                    if len(booted) == 2:
                        break
        gevent.spawn(lambda: [None for _ in proc.stderr])
        # The master bound the port before booting workers: a first request waits in
        # the listen queue until a worker has loaded the app, no retry needed.
        a = session_on(url)
        b = session_on(url, avoid=a.worker)
        a_stats = session_on(url, want=a.worker)
        a_stats.url = url
        waiting = gevent.spawn(poll, a, url, "news")
        wait_waiting(a_stats, 1)
        assert b.post(url + "/notify", json={"channel": "news", "data": 1}, timeout=5).status_code == 200
        assert [e["data"] for e in waiting.get(timeout=5)["events"]] == [1]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_a_stopped_worker_is_killed_and_replaced(workers):
    """SIGSTOP a worker: its heartbeat stops, the supervisor kills it, a new one takes its place,
    and every new connection is answered again (SO_REUSEPORT kept sending some to the stopped one)."""
    server = workers(2, "--worker-stall-timeout", "1.5")
    stuck = session_on(server.url).worker
    before_stop = len(server.log)
    os.kill(int(stuck), signal.SIGSTOP)
    try:
        server.wait_log(rf"worker pid {stuck} has not answered", timeout=15)
        server.wait_log(r"starting a replacement", timeout=15)
        server.wait_log(r"worker \d+ \(pid \d+\) is listening", timeout=15, since=before_stop)  # the replacement
        answered = set()
        for _ in range(40):  # fresh connections, spread by the kernel over the two live workers
            with requests.Session() as http:
                reply = http.get(server.url + "/stats", timeout=5)
                assert reply.status_code == 200
                answered.add(reply.headers[WORKER])
        assert stuck not in answered
    finally:
        try:
            os.kill(int(stuck), signal.SIGKILL)
        except ProcessLookupError:
            pass

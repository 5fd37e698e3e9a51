"""The old experiments start on ephemeral loopback ports, serve a few clients correctly, and stop.

Servers that must run on real OS threads (the 2008 designs) run as child processes;
the gevent ones run in this (monkey-patched) process or as children. No sleeps:
every wait is on a reply or an event, with a bound.
"""
from __future__ import annotations

import http.client
import json
import signal
import subprocess

import gevent
import gevent.socket
import pytest
import requests

from old_experiments import periodic_push, slow_trickle
from old_experiments._common import Child, child_env, python_module

pytestmark = pytest.mark.timeout(40)


def run_module(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(python_module(name, *args), capture_output=True, text=True, timeout=timeout,
                          env=child_env())


class Stream:
    """A streaming GET read line by line; every read bounded by ``timeout``."""

    def __init__(self, port: int, path: str = "/stream", timeout: float = 10) -> None:
        self.sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        self.reply = http.client.HTTPResponse(self.sock)

    def start(self) -> "Stream":
        self.reply.begin()
        assert self.reply.status == 200
        assert self.reply.getheader("Transfer-Encoding") == "chunked"
        return self

    def line(self) -> str:
        return self.reply.readline().decode()

    def close(self) -> None:
        self.reply.close()  # the socket's file object too, or the socket stays open
        self.sock.close()


# --- slow_trickle ---

def test_slow_trickle_sends_each_page_in_spaced_chunks_to_concurrent_clients():
    server, stopping = slow_trickle.make_server("127.0.0.1", 0, chunks=3, interval=0.05)
    try:
        jobs = [gevent.spawn(slow_trickle.fetch, "127.0.0.1", server.server_port, "/", 10) for _ in range(20)]
        gevent.joinall(jobs, timeout=10, raise_error=True)
        for job in jobs:
            lines = job.value
            assert [text.split(" at ")[0] for _, text in lines] == ["chunk 1/3", "chunk 2/3", "chunk 3/3"]
            sent = [float(text.split(" at ")[1]) for _, text in lines]
            assert sent[-1] - sent[0] >= 0.09  # the server spaced them by its interval
            # and they reached the client apart, not buffered into one piece (the slack is
            # for this process's own scheduling, which serves the 20 pages too)
            assert lines[-1][0] - lines[0][0] >= 0.04
    finally:
        stopping.set()
        server.stop(timeout=2)


def test_slow_trickle_bounds_and_validates_what_a_request_asks():
    server, stopping = slow_trickle.make_server("127.0.0.1", 0, chunks=1, interval=0)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert requests.get(url + "/?chunks=x", timeout=5).status_code == 400
        assert requests.get(url + "/nope", timeout=5).status_code == 404
        assert len(requests.get(url + "/?chunks=2000&interval=0", timeout=5).text.splitlines()) == 1000
    finally:
        stopping.set()
        server.stop(timeout=2)


def test_slow_trickle_cli_loads_itself_on_one_os_thread_and_exits():
    done = run_module("old_experiments.slow_trickle", "--clients", "50", "--chunks", "3", "--interval", "0.05")
    assert done.returncode == 0, done.stderr
    assert "50/50 pages of 3 chunks" in done.stdout
    assert "OS threads 1;" in done.stdout
    assert "listening on http://127.0.0.1:" in done.stderr


def test_slow_trickle_serves_until_sigterm():
    child = Child(python_module("old_experiments.slow_trickle", "--duration", "30", "--interval", "0.01"))
    try:
        reply = requests.get(child.url + "/?chunks=3", timeout=5)
        assert reply.text.count("chunk") == 3
    finally:
        assert child.stop() == 0


# --- periodic_push ---

def test_periodic_push_greenlets_push_every_stream_on_each_tick():
    server, streams = periodic_push.make_greenlet_server("127.0.0.1", 0, interval=0.02)
    clients = []
    try:
        clients = [Stream(server.server_port).start() for _ in range(10)]
        seqs = [[int(c.line().split()[1]) for _ in range(3)] for c in clients]
        for got in seqs:  # consecutive pushes, none skipped, on every stream
            assert got == list(range(got[0], got[0] + 3))
        streams.timer.stop()
        streams.end()
        for c in clients:  # the stream ends cleanly (the last chunk) once told to
            while c.line():
                pass
        assert streams.dropped == 0
    finally:
        for c in clients:
            c.close()
        server.stop(timeout=2)


def test_periodic_push_threads_hold_only_as_many_streams_as_workers():
    child = Child(python_module("old_experiments.periodic_push", "--mode", "threads", "--workers", "2",
                                "--interval", "0.02", "--duration", "30"))
    port = int(child.url.rsplit(":", 1)[1])
    first, second, third = Stream(port), Stream(port), Stream(port, timeout=0.3)
    try:
        for s in (first, second):
            s.start()
            assert s.line().startswith("push ")
        with pytest.raises(TimeoutError):  # both workers are taken: the third waits in the queue
            third.start()
        third.sock.settimeout(10)
        first.close()  # frees a worker (at its next push write), which takes the third stream
        third.reply = http.client.HTTPResponse(third.sock)
        third.start()
        assert third.line().startswith("push ")
    finally:
        for s in (first, second, third):
            s.close()
        assert child.stop() == 0


def test_periodic_push_greenlets_cli_ends_streams_cleanly_on_sigterm():
    child = Child(python_module("old_experiments.periodic_push", "--mode", "greenlets", "--interval", "0.02",
                                "--duration", "30"))
    stream = Stream(int(child.url.rsplit(":", 1)[1])).start()
    try:
        assert stream.line().startswith("push ")
        child.proc.send_signal(signal.SIGTERM)
        while stream.line():  # the pushes stop and the chunked body ends, not a reset
            pass
    finally:
        stream.close()
        assert child.stop() == 0


def test_periodic_push_compare_prints_both_modes():
    done = run_module("old_experiments.periodic_push", "--compare", "--clients", "6", "--workers", "2",
                      "--duration", "1", "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert "| 2/6 " in rows["threads"]
    assert "| 6/6 " in rows["greenlets"]


# --- thread_exhaustion: the two 2008 servers speak the geventcomet protocol ---

@pytest.mark.parametrize("mode", ["threads", "waitpool"])
def test_thread_exhaustion_servers_answer_long_polls(mode):
    child = Child(python_module("old_experiments.thread_exhaustion", "--mode", mode, "--workers", "8",
                                "--scan-interval", "0.01", "--duration", "30"))
    url = child.url
    try:
        assert requests.get(url + "/", timeout=5).json()["endpoints"]
        firsts = [requests.get(url + "/register", params={"channel": "news", "timeout": 0}, timeout=5).json()
                  for _ in range(4)]
        assert all(f["timeout"] and f["events"] == [] and f["recovered"] for f in firsts)

        def poll(first, timeout):
            return requests.get(url + "/register", timeout=timeout + 5, params={
                "channel": "news", "timeout": timeout, "since": first["cursor"], "client": first["client"]}).json()

        held = [gevent.spawn(poll, f, 10) for f in firsts]
        reply = requests.post(url + "/notify", json={"channel": "news", "data": {"s": 1}}, timeout=5).json()
        assert reply["id"] == 1
        gevent.joinall(held, timeout=10, raise_error=True)
        for first, job in zip(firsts, held):
            assert [e["data"] for e in job.value["events"]] == [{"s": 1}]
            assert job.value["client"] == first["client"] and not job.value["timeout"]

        later = poll(held[0].value, 0.2)  # nothing new: the timeout reply, cursor unchanged
        assert later["timeout"] and later["events"] == [] and later["cursor"] == held[0].value["cursor"]
        requests.post(url + "/notify", data={"client": firsts[1]["client"], "data": "just you"}, timeout=5)
        private = poll(held[1].value, 5)["events"]
        assert [(e["channel"], e["data"]) for e in private] == [("@" + firsts[1]["client"], "just you")]
        stale = requests.get(url + "/register", params={"channel": "news", "since": "0ther~news~0"}, timeout=5)
        assert stale.json()["recovered"] is False
        assert requests.get(url + "/register", params={"timeout": "x", "channel": "a"}, timeout=5).status_code == 400
    finally:
        assert child.stop() == 0
    assert any('"peak_waiting": ' in line for line in child.lines)


def test_thread_exhaustion_threads_mode_queues_a_page_behind_held_polls():
    """The failure the article saw, in miniature: 2 workers, 2 held polls, and the page waits."""
    child = Child(python_module("old_experiments.thread_exhaustion", "--mode", "threads", "--workers", "2",
                                "--duration", "30", "--verbose"))
    url = child.url
    try:
        held = [gevent.spawn(requests.get, url + "/register", params={"channel": "c", "timeout": 1}, timeout=10)
                for _ in range(2)]
        child.wait_lines("holding a poll", count=2)
        stats = requests.get(url + "/stats", timeout=10).json()
        # Served only once a poll gave back its worker: both were held, one has been answered.
        assert stats["peak_waiting"] == 2 and stats["polls"] >= 1
        gevent.joinall(held, timeout=10, raise_error=True)
    finally:
        assert child.stop() == 0


@pytest.mark.parametrize("mode", ["threads", "waitpool"])
def test_thread_exhaustion_answers_held_polls_when_stopped(mode):
    child = Child(python_module("old_experiments.thread_exhaustion", "--mode", mode, "--duration", "30",
                                "--verbose"))
    held = gevent.spawn(requests.get, child.url + "/register", params={"channel": "c", "timeout": 60}, timeout=20)
    try:
        child.wait_lines("holding a poll")
        child.proc.send_signal(signal.SIGINT)
        assert held.get(timeout=10).json()["timeout"] is True  # answered at stop, not dropped
    finally:
        assert child.stop() == 0


def test_help_works_for_every_experiment():
    for name in ("slow_trickle", "periodic_push", "thread_exhaustion"):
        done = run_module("old_experiments." + name, "--help")
        assert done.returncode == 0 and "--duration" in done.stdout, (name, done.stderr)


def test_thread_exhaustion_compare_drives_all_three_servers_with_loadclient(tmp_path):
    out = tmp_path / "results.json"
    done = run_module("old_experiments.thread_exhaustion", "--compare", "--clients", "4", "--ramp", "50",
                      "--duration", "2", "--poll-timeout", "1", "--channels", "2", "--notify-rate", "5",
                      "--json", str(out), timeout=35)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"threads", "waitpool", "geventcomet"}
    for mode, r in results.items():
        assert r["report"]["ok"], (mode, r["report"])
        assert r["report"]["ready"] == 4 and r["report"]["events_received"] > 0
        assert r["page_probes"] >= 1 and r["page_failures"] == 0
    assert all(f"| {mode} " in done.stdout for mode in results)

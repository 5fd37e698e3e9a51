"""Whole processes: graceful shutdown, restart, start-up configuration."""
import signal
import subprocess
import sys
import time

import gevent
import pytest
import requests

from .helpers import Comet, ServerProcess


def held_polls(url: str, starts: list[dict], channel: str) -> list[gevent.Greenlet]:
    return [gevent.spawn(requests.get, url + "/register", timeout=30, params={
        "channel": channel, "since": s["cursor"], "client": s["client"], "timeout": 30}) for s in starts]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_answers_every_held_request_with_reconnect_then_exits_0(signum):
    proc = ServerProcess("--test-hooks")
    try:
        comet = Comet(proc.url)
        comet.notify("bye", "old news")
        starts = [comet.register("bye", timeout=0) for _ in range(40)]
        held = held_polls(proc.url, starts, "bye")
        assert comet.http.get(proc.url + "/stats", params={"waiting": 40, "timeout": 10}).json()["waiting"] == 40
        signalled = time.monotonic()
        proc.proc.send_signal(signum)
        replies = [g.get(timeout=5) for g in held]
        answered_s = time.monotonic() - signalled
        assert proc.proc.wait(5) == 0
        assert answered_s < 1.0
        for start, reply in zip(starts, replies):
            assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
            body = reply.json()
            assert body["reconnect"] is True
            assert body["cursor"] == start["cursor"]  # their position: re-polling loses nothing
        proc.wait_log(r"stopped")
    finally:
        proc.stop()


def test_a_restarted_memory_server_reports_old_cursors_as_not_recovered():
    first = ServerProcess()
    try:
        comet = Comet(first.url)
        comet.notify("r", 1)
        cursor = comet.register("r", since=0)["cursor"]
    finally:
        assert first.terminate() == 0
    second = ServerProcess()
    try:
        comet = Comet(second.url)
        comet.notify("r", "after the restart")
        # The old cursor names the old process's client (@ID): its id was signed by a secret
        # that died with it, so it is refused; without its private part the cursor resumes.
        assert comet.register("r", since=cursor, expect=403)["auth"] == "client"
        parts = cursor.split("~")
        pairs = [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2) if not parts[i].startswith("@")]
        cursor = "~".join([parts[0], *(item for pair in pairs for item in pair)])
        reply = comet.register("r", since=cursor)
        assert reply["recovered"] is False
        assert reply["epoch"] != cursor.split("~")[0]
        assert [e["data"] for e in reply["events"]] == ["after the restart"]
    finally:
        second.stop()


def test_configuration_comes_from_flags_and_env_and_secrets_are_masked():
    proc = ServerProcess("--timeout", "7", "--max-channels", "3",
                         env={"GEVENTCOMET_NOTIFY_TOKEN": "hunter2", "GEVENTCOMET_BACKLOG": "5"})
    try:
        line = proc.wait_log(r"configuration:")
        assert "timeout=7.0" in line and "max_channels=3" in line and "backlog=5" in line
        assert "notify_token=***" in line and "hunter2" not in "".join(proc.log)
        Comet(proc.url).notify("x", 1, expect=401)
    finally:
        proc.stop()


def test_bad_configuration_is_refused_with_a_clear_message():
    result = subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--backlog", "zero"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "backlog" in result.stderr
    result = subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--backend", "nosuch://x"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "unknown backend" in result.stderr


def test_the_server_counts_its_cyclic_collections_for_stats():
    """``tune_gc(stats)`` counts every collection and its time (``gc_collections``, ``gc_s`` in /stats).

    In a child process: tune_gc changes the collector for the whole process.
    """
    check = ("import gc, types; from geventcomet.gctune import tune_gc; "
             "stats = types.SimpleNamespace(gc_collections=0, gc_s=0.0); tune_gc(stats); gc.collect(); gc.collect(0); "
             "assert stats.gc_collections == 2 and stats.gc_s > 0, stats")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    server = ServerProcess()
    try:
        stats = requests.get(server.url + "/stats", timeout=5).json()
        assert isinstance(stats["gc_collections"], int) and isinstance(stats["gc_s"], float)
    finally:
        server.stop()

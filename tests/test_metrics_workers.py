"""Metrics of ``--workers N``: one scrape sums every worker, and replaced workers keep their counts.

Real processes over Redis. The workers report their numbers to the supervisor once a second,
so the tests scrape until a report shows (bounded: metrics_support.wait_scrape).
"""
import os
import signal

import gevent
import pytest
import requests

from geventcomet import __version__, metrics_numbers
from geventcomet.metrics_workers import Aggregate, read_merged

from .helpers import ServerProcess
from .metrics_support import parse, scrape, value, wait_scrape
from .services import free_port

PUBLISHED = "geventcomet_events_published_total"
WORKER = "X-Geventcomet-Worker"


@pytest.fixture
def workers(redis_url):
    running = []

    def start(n=2):
        metrics_port = free_port()
        proc = ServerProcess("--workers", str(n), "--backend", redis_url, "--test-hooks",
                             "--metrics-port", str(metrics_port), ready_timeout=40)
        running.append(proc)
        assert proc.ready is not None and len(proc.ready.workers) == n, "".join(proc.log)
        proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        return proc

    yield start
    for proc in running:
        proc.stop()


def notify(url, count):
    for n in range(count):
        reply = requests.post(url + "/notify", json={"channel": "news", "data": n}, timeout=10)
        assert reply.status_code == 200, reply.text


class Watch:
    """Scrapes the metrics port all along, checking every counter only ever goes up."""

    def __init__(self, url):
        self.url, self.scrapes, self.stopped = url, 0, False
        self.last: dict = {}
        self.greenlet = gevent.spawn(self.run)

    def run(self):
        while not self.stopped:
            samples = scrape(self.url)
            for key, number in samples.items():
                if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
                    assert number >= self.last.get(key, 0), f"{key} went down: {self.last.get(key)} -> {number}"
            self.last, self.scrapes = samples, self.scrapes + 1
            gevent.sleep(0.05)  # a scrape every 50 ms: a bounded sampling of the restart

    def stop(self):
        self.stopped = True
        self.greenlet.get(timeout=15)  # re-raises a counter that went down
        assert self.scrapes > 3


def test_one_scrape_sums_every_worker_whichever_answers(workers):
    server = workers(2)
    notify(server.url, 6)  # spread over both workers by the kernel
    samples = wait_scrape(server.metrics_url, lambda s: value(s, PUBLISHED) == 6, message="6 published")
    assert value(samples, "geventcomet_processes") == 2
    assert value(samples, "geventcomet_build_info", version=__version__, backend="redis") == 1
    answered = set()
    for _ in range(40):  # the main port: every worker gives the same sum
        reply = requests.get(server.url + "/metrics", timeout=10)
        answered.add(reply.headers[WORKER])
        assert value(scrape_text(reply), PUBLISHED) == 6
    assert len(answered) == 2
    assert value(samples, "geventcomet_backend_channels") == 1  # the shared backend is not summed


def scrape_text(reply):
    assert reply.status_code == 200, reply.text
    return parse(reply.text)


def test_counters_survive_sighup_and_kill_9_and_no_stale_gauge_remains(workers):
    server = workers(2)
    notify(server.url, 5)
    wait_scrape(server.metrics_url, lambda s: value(s, PUBLISHED) == 5, message="5 published")
    watch = Watch(server.metrics_url)
    server.proc.send_signal(signal.SIGHUP)
    done = server.wait_log(r"restart done: workers", timeout=40)
    new_pids = done.rsplit("workers ", 1)[1].split()
    samples = wait_scrape(server.metrics_url, lambda s: value(s, "geventcomet_worker_exits_total") == 2,
                          message="the two recycled workers retired")
    assert value(samples, PUBLISHED) == 5  # the old workers' counts stayed in the sum
    notify(server.url, 3)
    samples = wait_scrape(server.metrics_url, lambda s: value(s, PUBLISHED) == 8, message="8 published")
    # A poll held on one worker shows as waiting; killed, its gauge leaves with it.
    doomed = new_pids[0]
    held = hold_on(server.url, doomed)
    wait_scrape(server.metrics_url, lambda s: value(s, "geventcomet_waiting_requests") == 1,
                message="the held poll counted")
    os.kill(int(doomed), signal.SIGKILL)
    server.wait_log(rf"pid {doomed}\) exited with status -9; starting a replacement")
    samples = wait_scrape(server.metrics_url, lambda s: value(s, "geventcomet_worker_exits_total") == 3
                          and value(s, "geventcomet_processes") == 2, message="the killed worker retired")
    assert value(samples, PUBLISHED) == 8  # it had reported every notify it took
    assert value(samples, "geventcomet_waiting_requests") == 0  # no stale gauge
    watch.stop()
    held.kill()


def hold_on(url, pid, tries=200):
    """A poll held by worker ``pid``: fresh connections until one lands there."""
    for _ in range(tries):
        http = requests.Session()
        if http.get(url + "/stats", timeout=5).headers[WORKER] == pid:
            return gevent.spawn(http.get, url + "/register", params={"channel": "idle", "timeout": 60}, timeout=70)
        http.close()
    raise AssertionError(f"no connection reached worker {pid}")


def test_the_aggregate_keeps_retired_counts_and_drops_retired_gauges():
    one = {"counters": {"published": 3}, "labelled": {"refusals": {"503": 1}}, "gauges": {"waiting": 4},
           "histograms": {"fanout_seconds": {"counts": [1, 0], "sum": 0.5}}, "info": {"version": "v"}}
    two = {"counters": {"published": 2}, "labelled": {"refusals": {"503": 2, "400": 1}}, "gauges": {"waiting": 1},
           "histograms": {"fanout_seconds": {"counts": [0, 2], "sum": 1.0}}, "backend": {"clients": 7}}
    aggregate = Aggregate()
    aggregate.update(1, one)
    aggregate.update(2, two)
    merged = aggregate.merged()
    assert merged["counters"]["published"] == 5 and merged["gauges"]["waiting"] == 5
    assert merged["labelled"]["refusals"] == {"503": 3, "400": 1} and merged["backend"] == {"clients": 7}
    assert merged["histograms"]["fanout_seconds"] == {"counts": [1, 2], "sum": 1.5}
    aggregate.retire(1)
    merged = aggregate.merged()
    assert merged["counters"]["published"] == 5 and merged["gauges"]["waiting"] == 1
    assert merged["counters"]["worker_exits"] == 1 and merged["processes"] == 1
    assert metrics_numbers.merge(metrics_numbers.empty(), [])["gauges"] == {}


def test_a_worker_pipe_with_garbage_or_a_torn_line_changes_nothing(tmp_path):
    aggregate = Aggregate(str(tmp_path / "merged.json"))
    read_fd, write_fd = os.pipe()
    watcher = gevent.spawn(aggregate.watch, 42, read_fd)
    os.write(write_fd, b'not json\n{"counters":{"published":4},"gauges":{"waiting":null}}\n[1,2]\n'
                       b'{"histograms":{"fanout_seconds":3}}\n{"counters":{"publ')
    os.close(write_fd)  # the worker died mid-line
    watcher.get(timeout=5)
    merged = read_merged(str(tmp_path / "merged.json"))
    assert merged["counters"]["published"] == 4 and merged["processes"] == 0
    assert read_merged(str(tmp_path / "missing.json")) is None

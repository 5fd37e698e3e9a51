"""The series recorded on the request paths, through real requests (fan-out, hold, backend, refusals).

NEEDS the one-line call sites of issue #17's report (hub, poll, stream, service, app, handler,
server): until they are applied these series stay at 0 and this file fails. The recording
functions themselves are pinned in test_metrics.py.
"""
import socket

import gevent
import requests

from geventcomet.backends.memory import MemoryBackend
from geventcomet.config import Config
from geventcomet.errors import BackendError

from .helpers import Comet, ServerProcess
from .metrics_support import scrape, value
from .services import free_port

ADMIN = "admin-wired-3"


def test_a_fanout_a_poll_hold_and_a_publish_are_timed(server, comet):
    before = scrape(server.url + "/metrics")
    first = comet.register("news", timeout=0)
    held = [gevent.spawn(comet.register, "news", timeout=10, since=first["cursor"]) for _ in range(3)]
    server.wait_waiting(3)
    comet.notify("news", "hi")
    assert all(len(poll.get(timeout=10)["events"]) == 1 for poll in held)
    after = scrape(server.url + "/metrics")

    def moved(name):
        return value(after, name) - value(before, name)

    assert moved("geventcomet_fanout_duration_seconds_count") >= 1
    assert moved("geventcomet_poll_hold_seconds_count") == 4  # the first (at once) and the three held
    assert moved("geventcomet_backend_publish_seconds_count") == 1
    assert moved("geventcomet_backend_publish_seconds_sum") > 0


def test_refusals_are_counted_by_status_wherever_they_are_made(start_server):
    server = start_server(notify_token=ADMIN, max_connections_per_ip=1)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    before = scrape(server.url + "/metrics", headers=auth)
    assert requests.get(server.url + "/register", params={"timeout": "soon"}, timeout=10).status_code == 400
    assert requests.post(server.url + "/notify", json={"channel": "a", "data": 1}, timeout=10).status_code == 401
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:  # refused by the handler
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as first:
        first.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first.recv(100).startswith(b"HTTP/1.1 200")  # open: the next one is over the per-IP bound
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as second:
            assert second.recv(100).startswith(b"HTTP/1.1 503")  # refused by the server at accept
    after = scrape(server.url + "/metrics", headers=auth)

    def moved(status):
        name = "geventcomet_refusals_total"
        return value(after, name, status=status) - value(before, name, status=status)

    assert moved("400") == 2 and moved("401") == 1 and moved("503") == 1


def test_backend_failures_are_counted(start_server):
    class FailingPublish(MemoryBackend):
        def publish(self, channel, data_json, idempotency_key=None):
            raise BackendError("refused for the test")

    server = start_server(backend=FailingPublish(Config()))
    before = scrape(server.url + "/metrics")
    Comet(server.url).notify("a", 1, expect=503)
    after = scrape(server.url + "/metrics")
    name = "geventcomet_backend_errors_total"
    assert value(after, name) - value(before, name) == 1
    assert value(after, "geventcomet_refusals_total", status="503") - value(
        before, "geventcomet_refusals_total", status="503") == 1


def test_one_process_serves_its_metrics_port_on_loopback_without_the_token():
    metrics_port = free_port()
    server = ServerProcess("--metrics-port", str(metrics_port), env={"GEVENTCOMET_NOTIFY_TOKEN": ADMIN})
    try:
        assert server.ready is not None, "".join(server.log)
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(samples, "geventcomet_processes") == 1
        assert server.terminate() == 0
    finally:
        server.stop()

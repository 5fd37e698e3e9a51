"""``GET /metrics`` of one process: the Prometheus text format, its series, the admin token, the port."""
import socket

import pytest
import requests

from geventcomet import Config, __version__, metrics_record
from geventcomet.metrics_families import BACKEND, COUNTERS, GAUGES, HISTOGRAMS, LABELLED
from geventcomet.metrics_port import serve_metrics_port

from .helpers import Comet
from .metrics_support import scrape, value
from .services import free_port

ADMIN = "admin-metrics-7"


def test_a_scrape_has_every_series_named_in_the_docs_and_parses_strictly(server):
    samples = scrape(server.url + "/metrics")
    names = {name for name, _ in samples}
    for _, name, *_, always in LABELLED:
        assert name in names or not always, name  # a kind appears once it is noted
    for _, name, _ in (*COUNTERS, *GAUGES):
        assert name in names, name
    for _, name, _ in BACKEND[:3]:
        assert name in names, name
    for _, name, _ in HISTOGRAMS:
        assert {name + "_bucket", name + "_count", name + "_sum"} <= names, name
    assert value(samples, "geventcomet_build_info", version=__version__, backend="memory") == 1
    assert value(samples, "geventcomet_processes") == 1 and value(samples, "geventcomet_backend_up") == 1
    assert value(samples, "geventcomet_process_resident_memory_bytes") > 10_000_000
    assert value(samples, "geventcomet_process_open_fds") > 3
    assert not any(dict(labels).get("channel") for _, labels in samples)  # no per-channel series
    assert value(samples, "geventcomet_bayeux_operations_total", kind="handshakes") == 0  # Bayeux's own
    documented = open("docs/metrics.md", encoding="utf-8").read()
    assert all(name.removesuffix("_total") in documented for _, name, *_ in (*COUNTERS, *GAUGES, *LABELLED))


def test_counters_follow_what_clients_do(server, comet):
    before = scrape(server.url + "/metrics")
    first = comet.register("news", timeout=0)  # a timeout
    comet.notify("news", 1)
    assert len(comet.register("news", timeout=0, since=first["cursor"])["events"]) == 1
    stream = requests.get(server.url + "/stream", params={"channel": "news"}, stream=True, timeout=10)
    lines = stream.iter_lines()  # kept: a dropped iterator closes the response
    assert next(lines) == b"event: hello"  # the stream is open
    during = scrape(server.url + "/metrics")
    stream.close()
    after = scrape(server.url + "/metrics")

    def moved(name, samples=after):
        return value(samples, name) - value(before, name)

    assert moved("geventcomet_events_published_total") == 1
    assert moved("geventcomet_polls_total") == 2 and moved("geventcomet_poll_timeouts_total") == 1
    assert moved("geventcomet_events_delivered_total") >= 1
    assert moved("geventcomet_sse_streams_opened_total") == 1
    assert value(during, "geventcomet_sse_streams_open") == 1
    assert value(during, "geventcomet_backend_channels") == 1 and value(during, "geventcomet_backend_clients") == 3


def test_the_recorded_histograms_and_counters_reach_the_scrape(server):
    """What the request paths record (metrics_record) is what a scrape shows, bucket by bucket."""
    before = scrape(server.url + "/metrics")
    metrics_record.observe_fanout(0.003)  # le 0.005
    metrics_record.observe_backend_publish(0.0002)  # le 0.00025
    metrics_record.count_refusal(429)
    metrics_record.count_refusal(418)  # not a listed status: counted as its class
    metrics_record.count_backend_error()
    after = scrape(server.url + "/metrics")

    def moved(name, **labels):
        return value(after, name, **labels) - before.get((name, tuple(sorted(labels.items()))), 0)

    assert moved("geventcomet_fanout_duration_seconds_bucket", le="0.0025") == 0
    assert moved("geventcomet_fanout_duration_seconds_bucket", le="0.005") == 1
    assert moved("geventcomet_fanout_duration_seconds_bucket", le="+Inf") == 1
    assert moved("geventcomet_fanout_duration_seconds_count") == 1
    assert moved("geventcomet_fanout_duration_seconds_sum") == pytest.approx(0.003)
    assert moved("geventcomet_backend_publish_seconds_bucket", le="0.00025") == 1
    assert moved("geventcomet_refusals_total", status="429") == 1
    assert moved("geventcomet_refusals_total", status="4xx") == 1
    assert moved("geventcomet_backend_errors_total") == 1


def test_a_gap_and_a_poll_hold_are_recorded_by_observe_poll(server):
    class Result:
        recovered = False

    before = scrape(server.url + "/metrics")
    metrics_record.observe_poll(2.0, Result())  # le 2.5
    after = scrape(server.url + "/metrics")
    assert value(after, "geventcomet_gaps_total") - value(before, "geventcomet_gaps_total") == 1
    bucket = ("geventcomet_poll_hold_seconds_bucket", (("le", "2.5"),))
    assert after[bucket] - before[bucket] == 1


def test_client_misbehaviour_is_counted_by_kind(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GARBAGE \x00\x01 HTTP/9\r\n\r\n")
        assert raw.recv(200).startswith(b"HTTP/1.1 400")
    samples = scrape(server.url + "/metrics")
    kinds = {dict(labels)["kind"] for name, labels in samples if name == "geventcomet_client_misbehaviour_total"}
    assert kinds and all(len(kind) < 60 for kind in kinds)


def test_metrics_need_the_admin_token_like_stats(start_server):
    server = start_server(notify_token=ADMIN)
    url = server.url + "/metrics"
    missing = requests.get(url, timeout=10)
    assert missing.status_code == 401 and missing.json()["auth"] == "admin"
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["auth"] == "admin"
    assert "geventcomet_build_info" in str(scrape(url, headers={"Authorization": f"Bearer {ADMIN}"}))
    head = requests.head(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert head.status_code == 200 and head.content == b""


def test_the_metrics_port_serves_metrics_alone_on_loopback_without_the_token(start_server):
    server = start_server(notify_token=ADMIN)
    config = Config(metrics_port=free_port())
    metrics_server = serve_metrics_port(config, server.app.metrics.exposition)
    try:
        assert metrics_server.server_host == "127.0.0.1"
        base = f"http://127.0.0.1:{config.metrics_port}"
        Comet(server.url).notify("news", 1, headers={"Authorization": f"Bearer {ADMIN}"})
        samples = scrape(base + "/metrics")
        assert value(samples, "geventcomet_backend_channels") >= 1
        for path in ("/stats", "/register?channel=a", "/", "/metrics/../stats"):
            other = requests.get(base + path, timeout=10)
            assert other.status_code == 404 and "error" in other.json()
        post = requests.post(base + "/metrics", data=b"x", timeout=10)
        assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"
        with socket.create_connection(("127.0.0.1", config.metrics_port), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # a TLS hello, or noise: a 400, no traceback
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        metrics_server.stop(timeout=1)
    assert serve_metrics_port(Config(), server.app.metrics.exposition) is None  # 0: off


def test_the_metrics_port_closes_a_connection_that_sends_nothing(server, monkeypatch):
    monkeypatch.setattr("geventcomet.metrics_port.SCRAPE_TIMEOUT_S", 0.5)
    config = Config(metrics_port=free_port())
    metrics_server = serve_metrics_port(config, server.app.metrics.exposition)
    try:
        silent = [socket.create_connection(("127.0.0.1", config.metrics_port), timeout=10) for _ in range(20)]
        for sock in silent:  # more than the scrape slots: each is closed at its deadline, not kept
            assert sock.recv(100) == b""
            sock.close()
        assert "geventcomet_build_info" in str(scrape(f"http://127.0.0.1:{config.metrics_port}/metrics"))
    finally:
        metrics_server.stop(timeout=1)


def test_a_scrape_while_the_backend_fails_still_answers_with_backend_up_0(start_server):
    from geventcomet.backends.memory import MemoryBackend
    from geventcomet.errors import BackendError

    class Broken(MemoryBackend):
        def counts(self):
            raise BackendError("down for the test")

    server = start_server(backend=Broken(Config()))
    samples = scrape(server.url + "/metrics")
    assert value(samples, "geventcomet_backend_up") == 0
    assert ("geventcomet_backend_clients", ()) not in samples
    assert value(samples, "geventcomet_backend_probe_seconds") >= 0

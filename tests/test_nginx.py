"""The nginx block of docs/deploy.md, run for real: Debian's nginx in front of a geventcomet server.

A long-poll, an SSE stream and a notify go through nginx exactly as documented. The SSE test
is the one that catches buffering: the event is published after the stream has opened (its
hello frame came through), and must arrive while the stream is still open.
"""
import json

import gevent
import pytest
import requests

from .conftest import require_binary
from .nginx_fixtures import NGINX, Nginx, documented_block, substitute


@pytest.fixture
def proxied(server, tmp_path):
    require_binary(NGINX)
    nginx = Nginx(tmp_path, server.port)
    try:
        first = requests.get(nginx.url + "/healthz", timeout=10)
        assert first.status_code == 200, (first.status_code, first.text, nginx.error_log())
    except requests.ConnectionError:
        nginx.stop()
        raise AssertionError(f"nginx did not answer: {nginx.proc.stderr.read()}\n{nginx.error_log()}") from None
    yield nginx
    nginx.stop()


def test_a_long_poll_is_held_through_nginx_and_answered_by_a_notify_through_it(proxied, server):
    http = requests.Session()
    first = http.get(proxied.url + "/register", params={"channel": "news", "timeout": 0}, timeout=10).json()
    held = gevent.spawn(http.get, proxied.url + "/register",
                        params={"channel": "news", "timeout": 20, "since": first["cursor"]}, timeout=30)
    server.wait_waiting(1, timeout=10)  # held in the server, through nginx
    sent = requests.post(proxied.url + "/notify", json={"channel": "news", "data": {"n": 1}},
                         headers={"Idempotency-Key": "k-1"}, timeout=10)
    assert sent.status_code == 200 and sent.json()["woken"] == 1
    again = requests.post(proxied.url + "/notify", json={"channel": "news", "data": {"n": 1}},
                          headers={"Idempotency-Key": "k-1"}, timeout=10)  # the header passes nginx
    assert again.json()["id"] == sent.json()["id"]
    reply = held.get(timeout=15)
    assert reply.status_code == 200
    assert reply.json()["events"] == [{"channel": "news", "id": 1, "data": {"n": 1}}]


def test_an_sse_event_arrives_through_nginx_while_the_stream_is_open(proxied, server):
    stream = requests.get(proxied.url + "/stream", params={"channel": "live"}, stream=True, timeout=15)
    assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    lines = stream.iter_lines()
    with gevent.Timeout(10, AssertionError("the hello frame did not come through nginx at once")):
        assert next(lines) == b"event: hello"
    server.wait_waiting(1, timeout=10)  # the stream is parked: the event comes after it opened
    assert requests.post(proxied.url + "/notify", json={"channel": "live", "data": "now"},
                         timeout=10).status_code == 200
    with gevent.Timeout(10, AssertionError("the event waited in the proxy (buffered)")):
        data = next(line for line in lines if line.startswith(b"data: {\"channel\""))
    assert json.loads(data[len(b"data: "):]) == {"channel": "live", "id": 1, "data": "now"}
    assert server.app.service.streams.open == 1  # arrived while the stream was still open
    stream.close()


def test_metrics_stay_inside_and_the_access_log_keeps_no_token(proxied, server):
    assert requests.get(proxied.url + "/metrics", timeout=10).status_code == 404
    requests.get(proxied.url + "/register", params={"channel": "a", "timeout": 0, "token": "SECRET-TOKEN"},
                 timeout=10)
    logged = proxied.access_log()
    assert "GET /register" in logged and "SECRET-TOKEN" not in logged


def test_the_block_is_taken_from_the_document_as_written():
    block = documented_block()
    assert "proxy_buffering off;" in block and "proxy_read_timeout 150s;" in block
    with pytest.raises(AssertionError):
        substitute(block.replace("listen 80;", "listen 8443;"), 1, "x", None)  # a changed placeholder is noticed
    with pytest.raises(AssertionError):
        documented_block("no block here")

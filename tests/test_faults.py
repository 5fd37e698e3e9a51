"""Faults and bad input: every refusal is a clear 4xx/5xx with a JSON error, and others keep being served."""
import json
import socket
import struct
import time

import gevent
import pytest
import requests

from geventcomet import Config
from geventcomet.backends.memory import MemoryBackend

from .helpers import Comet, ServerProcess


def raw_request(port: int, data: bytes, *, read: bool = True) -> tuple[int, dict, bytes]:
    """Send raw bytes; return (status, headers, body) of the reply (read until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_reply(sock)


def read_reply(sock: socket.socket, pending: bytearray | None = None) -> tuple[int, dict, bytes]:
    """Read one reply; bytes past it stay in ``pending`` for the next call (pipelining)."""
    buf = pending if pending is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a reply: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(buf) < end + 4 + length:
        buf += sock.recv(65536)
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    return int(lines[0].split()[1]), headers, body


def test_a_publish_during_a_slow_backlog_read_still_wakes_the_poll_at_once(start_server):
    """The lost-wakeup race: the read sees the old state, then yields; a publish lands meanwhile."""

    class SlowReadBackend(MemoryBackend):
        def __init__(self, config):
            super().__init__(config)
            self.reading, self.release = gevent.event.Event(), gevent.event.Event()

        def read(self, channel, since, epoch, page=None):
            result = super().read(channel, since, epoch, page)
            if channel == "race" and not self.release.is_set():
                self.reading.set()
                self.release.wait()  # yields, like a Redis or SQLite round trip
            return result

    backend = SlowReadBackend(Config(port=0))
    server = start_server(backend=backend)
    comet = Comet(server.url)
    poll = gevent.spawn(comet.register, "race", timeout=30)
    assert backend.reading.wait(5)
    comet.notify("race", "during the read")
    backend.release.set()
    reply = poll.get(timeout=5)  # without the fix it would come only at the 30 s timeout
    assert reply["events"] == [{"channel": "race", "id": 1, "data": "during the read"}]


@pytest.mark.parametrize("how", ["FIN", "RST"])
def test_a_client_that_hangs_up_is_freed_long_before_its_timeout(server, how):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /register?channel=bye&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
    server.wait_waiting(1)
    if how == "RST":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    started = time.monotonic()
    sock.close()
    server.wait_waiting(0, timeout=2)
    assert time.monotonic() - started < 2
    assert server.hub.waiter_count("bye") == 0
    assert server.app.stats.disconnects == 1
    comet = Comet(server.url)
    assert comet.notify("bye", 1)["woken"] == 0
    assert len(server.server.open_connections) <= 1  # the handler greenlet is gone too (at most /notify's own)


def test_pipelined_bytes_are_not_taken_for_a_hang_up(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /register?channel=p&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_waiting(1)
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined behind the held poll
        Comet(server.url).notify("p", "still here")
        pending = bytearray()
        status, _, body = read_reply(sock, pending)
        assert status == 200 and json.loads(body)["events"][0]["data"] == "still here"
        status, _, body = read_reply(sock, pending)
        assert status == 200 and "waiting" in json.loads(body)


@pytest.mark.parametrize("method, path, params, status, message", [
    ("GET", "/nowhere", {}, 404, "no such path"),
    ("POST", "/register", {"channel": "a"}, 405, "not allowed"),
    ("DELETE", "/notify", {}, 405, "not allowed"),
    ("GET", "/register", {}, 400, "missing channel"),
    ("GET", "/register", {"channel": "bad name"}, 400, "invalid channel name"),
    ("GET", "/register", {"channel": "x" * 200}, 400, "longer than 128"),
    ("GET", "/register", {"channel": [f"c{i}" for i in range(17)]}, 400, "too many channels"),
    ("GET", "/register", {"channel": "a", "timeout": "later"}, 400, "timeout must be a number"),
    ("GET", "/register", {"channel": "a", "timeout": "1e9"}, 400, "between 0 and"),
    ("GET", "/register", {"channel": "a", "since": "not~a~cursor~"}, 400, "malformed cursor"),
])
def test_bad_requests_get_a_json_error(server, method, path, params, status, message):
    reply = requests.request(method, server.url + path, params=params, timeout=10)
    assert reply.status_code == status
    assert reply.headers["Content-Type"] == "application/json"
    assert message in reply.json()["error"]


def test_bad_notify_bodies_get_a_json_error(server):
    cases = [
        ({"data": b'{"channel": "a", "data": ', "headers": {"Content-Type": "application/json"}},
         400, "malformed JSON"),
        ({"data": b"just text", "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
        ({"json": {"channel": "a"}}, 400, "missing data"),
        ({"json": {"channel": "no spaces", "data": 1}}, 400, "invalid channel name"),
        ({"data": iter([b'{"channel":"a","data":1}'])}, 411, "Content-Length"),  # chunked
    ]
    for kwargs, status, message in cases:
        reply = requests.post(server.url + "/notify", timeout=10, **kwargs)
        assert reply.status_code == status, (kwargs, reply.text)
        assert message in reply.json()["error"]


def test_an_oversized_body_gets_413_without_being_read(start_server):
    server = start_server(max_body_bytes=1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\n\r\n")  # and not one byte of the body
        status, headers, body = read_reply(sock)
    assert status == 413 and headers["connection"] == "close"
    assert "over the limit of 1024" in json.loads(body)["error"]


def test_oversized_headers_get_431(server):
    status, _, body = raw_request(server.port, b"GET /stats HTTP/1.1\r\nHost: x\r\n"
                                  + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431 and "too large" in json.loads(body)["error"]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    status, _, _ = raw_request(server.port, b"GET /stats HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431


def test_headers_that_trickle_in_too_slowly_get_408(start_server):
    server = start_server(header_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\n")
        for _ in range(3):  # slowloris: a byte now and then, never finishing the head
            sock.sendall(b"X")
            gevent.sleep(0.05)  # pacing the attack, not synchronising: the 408 is awaited below
        status, _, body = read_reply(sock)
    assert status == 408 and "did not arrive in time" in json.loads(body)["error"]


def test_a_connection_that_sends_nothing_gets_408(start_server):
    server = start_server(header_timeout_s=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        status, _, _ = read_reply(sock)
    assert status == 408


def test_malformed_http_gets_400(server):
    status, _, body = raw_request(server.port, b"GET /stats HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status == 400 and json.loads(body)["error"]


def test_over_capacity_gets_503_with_retry_after(start_server):
    server = start_server(max_waiting=2)
    polls = [gevent.spawn(Comet(server.url).register, "full", timeout=20) for _ in range(2)]
    server.wait_waiting(2)
    reply = requests.get(server.url + "/register", params={"channel": "full"}, timeout=10)
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    assert "capacity" in reply.json()["error"]
    Comet(server.url).notify("full", "ok")
    assert all(p.get(timeout=5)["events"] for p in polls)


def test_bad_input_loses_nothing_already_published_and_others_keep_being_served(server, comet):
    start = comet.register("calm", timeout=0)
    comet.notify("calm", "kept")
    waiting = gevent.spawn(Comet(server.url).register, "other", timeout=20)
    server.wait_waiting(1)
    raw_request(server.port, b"GARBAGE\r\n\r\n")
    raw_request(server.port, b"GET /register?channel=%%%% HTTP/1.1\r\nHost: x\r\n\r\n")
    requests.post(server.url + "/notify", data=b"{", headers={"Content-Type": "application/json"}, timeout=10)
    comet.notify("other", "served")
    assert waiting.get(timeout=5)["events"][0]["data"] == "served"
    assert comet.register("calm", since=start["cursor"])["events"][0]["data"] == "kept"


def test_notify_token_is_required_when_set(start_server):
    server = start_server(notify_token="s3cret")
    comet = Comet(server.url)
    assert "token" in comet.notify("t", 1, expect=401)["error"]
    comet.notify("t", 1, headers={"Authorization": "Bearer wrong"}, expect=401)
    assert comet.notify("t", 1, headers={"Authorization": "Bearer s3cret"})["id"] == 1
    form = requests.post(server.url + "/notify", data={"channel": "t", "data": "x", "token": "s3cret"}, timeout=10)
    assert form.status_code == 200 and form.json()["id"] == 2


def test_cors_allows_listed_origins_and_refuses_others(start_server):
    server = start_server(cors_origins="https://app.example")
    ok = requests.options(server.url + "/notify", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in ok.headers["Access-Control-Allow-Headers"]
    get = requests.get(server.url + "/register", params={"channel": "c", "timeout": 0}, timeout=10,
                       headers={"Origin": "https://app.example"})
    assert get.headers["Access-Control-Allow-Origin"] == "https://app.example"
    bad = requests.get(server.url + "/stats", headers={"Origin": "https://evil.example"}, timeout=10)
    assert bad.status_code == 403 and "not allowed" in bad.json()["error"]
    same = requests.get(server.url + "/stats", headers={"Origin": server.url}, timeout=10)
    assert same.status_code == 200


@pytest.mark.parametrize("access_log", [False, True])
def test_the_fast_path_and_the_wsgi_path_answer_register_alike(start_server, access_log):
    """GET /register over HTTP/1.1 skips pywsgi's WSGI machinery; HTTP/1.0 (and an access log) use it.

    The two must give the same status, headers and body: here with a backlog to return,
    a cross-origin caller, and a bad request.
    """
    server = start_server(cors_origins="http://app.example", access_log=access_log)
    comet = Comet(server.url)
    first = comet.register("same", timeout=0)
    comet.notify("same", {"n": 1})
    query = f"/register?channel=same&timeout=0&client={first['client']}&since={first['cursor']}"
    replies = {}
    for version in ("HTTP/1.1", "HTTP/1.0"):
        for path in (query, "/register?channel=bad%20name"):
            request = (f"GET {path} {version}\r\nHost: x\r\nOrigin: http://app.example\r\n"
                       "Connection: close\r\n\r\n").encode()
            status, headers, body = raw_request(server.port, request)
            headers.pop("date")
            headers.pop("connection", None)  # pywsgi answers an HTTP/1.0 "close" with its own header
            replies[version, path] = (status, headers, json.loads(body))
    for path in (query, "/register?channel=bad%20name"):
        assert replies["HTTP/1.1", path] == replies["HTTP/1.0", path]
    status, headers, body = replies["HTTP/1.1", query]
    assert status == 200 and [e["data"] for e in body["events"]] == [{"n": 1}]
    assert headers["access-control-allow-origin"] == "http://app.example"
    assert headers["cache-control"] == "no-store" and headers["content-type"] == "application/json"
    assert replies["HTTP/1.1", "/register?channel=bad%20name"][0] == 400


def test_a_register_with_a_body_is_read_past_before_the_next_request(server):
    """A GET with a body takes the WSGI path, which discards the body: the next request stays in step."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /register?channel=b&timeout=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /register?channel=b&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        pending = bytearray()
        for _ in range(2):
            status, _headers, body = read_reply(sock, pending)
            assert status == 200 and json.loads(body)["timeout"] is True


def test_out_of_open_files_pauses_accepting_with_one_warning_and_serves_on():
    """A flood past the process's open-file limit: a one-line warning, no traceback; open
    connections are still served, and new ones are accepted again once files free up."""
    limit = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
             "from geventcomet.cli import main; sys.exit(main(sys.argv[1:]))")
    server = ServerProcess(python_args=("-c", limit))
    try:
        port = int(server.url.rsplit(":", 1)[1])
        kept = requests.Session()
        assert kept.get(server.url + "/stats", timeout=5).status_code == 200  # accepted before
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
        server.wait_log(r"out of open files \(limit 64\)")
        stats = kept.get(server.url + "/stats", timeout=5)  # an open connection is served as usual
        assert stats.status_code == 200 and stats.json()["accept_pauses"] >= 1
        for sock in flood:
            sock.close()
        assert requests.get(server.url + "/stats", timeout=10).status_code == 200  # accepting again
        log = "".join(server.log)
        assert log.count("out of open files") == 1  # one warning per 10 s, however many pauses
        assert "Traceback" not in log
    finally:
        server.stop()


def test_a_request_killed_by_a_stop_that_cannot_wait_gets_no_500(start_server):
    """A notify still in the backend when a graceful stop gives up waiting is cut off without a
    reply (the client retries, with its Idempotency-Key), never answered a 500 it would trust."""

    class StuckPublishBackend(MemoryBackend):
        def __init__(self, config):
            super().__init__(config)
            self.publishing = gevent.event.Event()

        def publish(self, channel, data_json, idempotency_key=None):
            self.publishing.set()
            gevent.event.Event().wait()  # never returns: a backend that hangs
            return 0

    backend = StuckPublishBackend(Config(port=0))
    server = start_server(backend=backend)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        body = b'{"channel":"c","data":1}'
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert backend.publishing.wait(10)
        server.stop()  # waits DRAIN_TIMEOUT_S for the notify, then kills it
        assert sock.recv(65536) == b""  # closed, no "500 Internal Server Error"

"""geventcomet.client.Publisher against a real server: ids, batches, exactly-once retries
through a proxy that drops replies, 503 and Retry-After, errors that raise at once."""
import time

import gevent
import pytest
import requests
from gevent.server import StreamServer

from geventcomet.client import AuthError, Backoff, BadRequest, NotFound, PayloadTooLarge, Publisher, Unavailable

from .client_fixtures import FaultProxy
from .test_auth_tokens import SECRET, mint


def history(url, channel):
    reply = requests.get(url + "/register", params={"channel": channel, "since": 0, "timeout": 0}, timeout=10)
    return [(e["id"], e["data"]) for e in reply.json()["events"]]


def test_publish_notify_client_and_publish_many(server):
    with Publisher(server.url) as publisher:
        assert publisher.publish("news", {"n": 1}) == 1
        assert publisher.publish_many([("news", 2), {"channel": "sport", "data": 3}, ("news", 4)]) == [2, 1, 3]
        client = requests.get(server.url + "/register", params={"channel": "x", "timeout": 0}, timeout=10).json()
        assert publisher.notify_client(client["client"], "hi") == 1
        with pytest.raises(NotFound):
            publisher.notify_client("nobody", "hi")
    assert history(server.url, "news") == [(1, {"n": 1}), (2, 2), (3, 4)]


def test_every_retry_through_a_reply_dropping_proxy_stores_each_event_once(server):
    proxy = FaultProxy(("127.0.0.1", server.port), every=3)
    try:
        with Publisher(proxy.url, backoff=Backoff(0.001, 0.01)) as publisher:
            ids = [publisher.publish("news", n) for n in range(30)]
            batches = [publisher.publish_many([("batch", 2 * n), ("batch", 2 * n + 1)]) for n in range(10)]
    finally:
        proxy.close()
    assert proxy.dropped >= 10  # replies were lost, and retried
    assert ids == list(range(1, 31))
    assert history(server.url, "news") == [(n + 1, n) for n in range(30)]  # none twice, none lost
    assert [i for pair in batches for i in pair] == list(range(1, 21))
    assert history(server.url, "batch") == [(n + 1, n) for n in range(20)]


class Flaky:
    """A server that answers 503 (with ``Retry-After``) ``failures`` times, then 200."""

    def __init__(self, failures, retry_after="0"):
        self.failures, self.retry_after, self.seen = failures, retry_after, []
        self.server = StreamServer(("127.0.0.1", 0), self.serve)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def serve(self, sock, _):
        reader = sock.makefile("rb")
        while True:
            head = []
            for line in iter(reader.readline, b"\r\n"):
                if not line:
                    return
                head.append(line)
            length = next(int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length"))
            reader.read(length)
            key = next(h.split(b":", 1)[1].strip() for h in head if h.lower().startswith(b"idempotency-key"))
            self.seen.append((key, time.monotonic()))
            if len(self.seen) <= self.failures:
                body = b'{"error": "busy"}'
                sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (self.retry_after.encode(), len(body), body))
            else:
                body = b'{"channel": "news", "id": 7, "woken": 0}'
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_503_is_retried_with_the_same_key_honouring_retry_after():
    flaky = Flaky(2, retry_after="1")
    with Publisher(flaky.url, backoff=Backoff(0.001, 0.01)) as publisher:
        assert publisher.publish("news", 1) == 7
    keys = {key for key, _ in flaky.seen}
    assert len(flaky.seen) == 3 and len(keys) == 1
    assert flaky.seen[1][1] - flaky.seen[0][1] >= 1.0  # Retry-After: 1 was honoured
    flaky.server.stop()


def test_retrying_ends_after_the_bounded_time():
    flaky = Flaky(10_000)
    with Publisher(flaky.url, retry_for_s=0.5, backoff=Backoff(0.01, 0.05)) as publisher:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="HTTP 503"):
            publisher.publish("news", 1)
    assert time.monotonic() - started < 5 and len(flaky.seen) >= 2
    flaky.server.stop()


def test_a_server_that_is_not_there_is_unavailable_after_the_bounded_time():
    with socket_on_free_port() as port:
        pass  # closed: nothing listens there now
    with Publisher(f"http://127.0.0.1:{port}", retry_for_s=0.3, backoff=Backoff(0.01, 0.05)) as publisher:
        with pytest.raises(Unavailable, match="ConnectError"):
            publisher.publish("news", 1)


def socket_on_free_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        try:
            yield sock.getsockname()[1]
        finally:
            sock.close()
    return bound()


def test_errors_that_retrying_cannot_fix_raise_at_once(start_server):
    server = start_server(token_secret=SECRET, public_channels="*", max_body_bytes=1000, max_batch_events=2)
    proxy = FaultProxy(("127.0.0.1", server.port), every=10_000)  # counts requests, drops none
    try:
        with Publisher(proxy.url, token=mint({"publish": ["news"]})) as publisher:
            with pytest.raises(BadRequest, match="channel"):
                publisher.publish("bad name", 1)
            with pytest.raises(AuthError) as refused:
                publisher.publish("sport", 1)
            assert refused.value.status == 403 and refused.value.auth == "publish"
            with pytest.raises(PayloadTooLarge):
                publisher.publish("news", "x" * 2000)
            with pytest.raises(PayloadTooLarge, match="max-batch-events"):
                publisher.publish_many([("news", 1)] * 3)
        with Publisher(proxy.url, token="not-a-jwt") as publisher, pytest.raises(AuthError) as refused:
            publisher.publish("news", 1)
        assert refused.value.status == 401
    finally:
        proxy.close()
    assert proxy.requests == 5  # one request each: nothing was retried


def test_a_token_callable_is_called_again_after_a_401(start_server):
    server = start_server(token_secret=SECRET, public_channels="*")
    tokens = iter([mint({"publish": ["news"]}, ttl=-10), mint({"publish": ["news"]})])
    with Publisher(server.url, token=lambda: next(tokens)) as publisher:
        assert publisher.publish("news", 1) == 1


def test_data_that_is_not_json_raises_before_sending(server):
    from geventcomet.client import CometClientError
    with Publisher(server.url) as publisher, pytest.raises(CometClientError, match="not JSON"):
        publisher.publish("news", float("nan"))
    assert gevent.getcurrent() is not None


def test_async_publisher_through_the_reply_dropping_proxy_stores_each_event_once(server):
    from .client_fixtures import run_python
    proxy = FaultProxy(("127.0.0.1", server.port), every=3)
    try:
        result = run_python("""
            import asyncio, json, sys
            from geventcomet.client import AsyncPublisher, Backoff

            async def main():
                async with AsyncPublisher(sys.argv[1], backoff=Backoff(0.001, 0.01)) as publisher:
                    ids = [await publisher.publish("news", n) for n in range(20)]
                    ids += await publisher.publish_many([("news", 20), ("news", 21)])
                return ids

            print(json.dumps({"ids": asyncio.run(main())}))
        """, proxy.url)
    finally:
        proxy.close()
    assert proxy.dropped >= 6
    assert result["ids"] == list(range(1, 23))
    assert history(server.url, "news") == [(n + 1, n) for n in range(22)]

"""The blocking flavour's HTTP on the standard library (geventcomet.client.stdhttp), real sockets:
one kept connection, a kept connection the server closed, timeouts and garbage, close() ending
a held poll, TLS through ssl's default context, and the blocking flavour without httpx."""
import json
import subprocess
import sys
import time

import gevent
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from geventcomet.client import Backoff, CometClientError, Publisher, Subscriber, Unavailable

from .client_fixtures import REPO, Collector, FaultProxy, publish_ids, run_python
from .test_client_subscriber import first_cursor

FAST = Backoff(0.01, 0.05)


def test_calls_share_one_kept_connection(server):
    proxy = FaultProxy(("127.0.0.1", server.port), every=10**9)
    start = first_cursor(server.url, "news")
    try:
        with Publisher(proxy.url) as publisher:
            ids = [publisher.publish("news", n) for n in range(50)]
            ids += publisher.publish_many([("news", 50), ("news", 51)])
        with Subscriber(proxy.url, "news", cursor=start, poll_timeout_s=5) as sub:
            got = [next(sub).id for _ in range(52)]
    finally:
        proxy.close()
    assert ids == got == list(range(1, 53))
    assert proxy.connections == 2 and proxy.requests == 51 + 1  # one each; one poll took all 52


class OnePerConnection:
    """Answers one request per connection with a 200 notify reply, then closes it without
    saying so (no ``Connection: close``): what a server's keep-alive timeout looks like."""

    def __init__(self):
        self.requests = self.connections = 0
        self.closed = Event()  # set once a connection is closed (its FIN is then with the client)
        self.server = StreamServer(("127.0.0.1", 0), self.serve)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def serve(self, sock, _):
        self.connections += 1
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        self.requests += 1
        body = b'{"channel": "news", "id": %d, "woken": 0}' % self.requests
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        sock.close()
        self.closed.set()


def test_a_kept_connection_the_server_closed_is_replaced_at_once():
    """Without the one immediate resend, each publish after the first would fail (a backoff
    of 10 s against 1 s of retry time: Unavailable)."""
    flaky = OnePerConnection()
    try:
        with Publisher(flaky.url, retry_for_s=1, backoff=Backoff(10, 10)) as publisher:
            ids = []
            for n in range(5):
                ids.append(publisher.publish("news", n))
                assert flaky.closed.wait(10)  # the server's close has arrived, as after an idle timeout
                flaky.closed.clear()
    finally:
        flaky.server.stop()
    assert ids == [1, 2, 3, 4, 5] and flaky.connections == 5 and flaky.requests == 5


class Misbehaving:
    """A server that reads a request, then answers ``reply`` (or never, when None)."""

    def __init__(self, reply):
        self.reply, self.requests = reply, 0
        self.server = StreamServer(("127.0.0.1", 0), self.serve)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def serve(self, sock, _):
        while sock.recv(65536):
            self.requests += 1
            if self.reply is None:
                continue
            sock.sendall(self.reply)
            sock.close()
            return


@pytest.mark.parametrize("reply, error", [(None, "ReadTimeout"), (b"SSH-2.0-OpenSSH\r\n\r\n", "ReadError"),
                                          (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "ReadError")])
def test_no_reply_or_garbage_is_retried_then_unavailable(reply, error):
    bad = Misbehaving(reply)
    try:
        with Publisher(bad.url, timeout_s=0.3, retry_for_s=1, backoff=FAST) as publisher:
            started = time.monotonic()
            with pytest.raises(Unavailable, match=error):
                publisher.publish("news", 1)
    finally:
        bad.server.stop()
    assert bad.requests >= 2 and time.monotonic() - started < 10


def test_close_from_another_greenlet_ends_a_held_poll_at_once(server):
    sub = Subscriber(server.url, "quiet", poll_timeout_s=60)
    collector = Collector(sub)
    server.wait_waiting(1, timeout=10)
    started = time.monotonic()
    sub.close()
    collector.greenlet.join(timeout=10)
    assert collector.greenlet.dead and time.monotonic() - started < 10  # not the poll's 60 s
    collector.greenlet.get()  # ended without an exception


CLOSE_FROM_A_THREAD = """
import json, sys, threading, time
from geventcomet.client import Subscriber
sub = Subscriber(sys.argv[1], "quiet", poll_timeout_s=60)
thread = threading.Thread(target=lambda: list(sub))
thread.start()
sys.stdin.readline()  # the parent saw the poll held by the server
started = time.monotonic()
sub.close()
thread.join(30)
print(json.dumps({"ended": not thread.is_alive(), "seconds": time.monotonic() - started}), flush=True)
"""


def test_close_from_another_thread_ends_a_held_poll_at_once(server):
    child = subprocess.Popen([sys.executable, "-c", CLOSE_FROM_A_THREAD, server.url], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        server.wait_waiting(1, timeout=30)
        child.stdin.write("close\n")
        child.stdin.flush()
        with gevent.Timeout(60):
            result = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
    assert result["ended"] and result["seconds"] < 10  # not the poll's 60 s


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (certfile, keyfile)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_through_the_default_context(server, certificate):
    """Trusted (SSL_CERT_FILE feeds ssl's default context in the child): publish and subscribe
    over HTTPS, one kept connection each; untrusted: refused at once, not retried."""
    proxy = FaultProxy(("127.0.0.1", server.port), every=10**9, tls=certificate)
    start = first_cursor(server.url, "tls")
    try:
        result = run_python("""
            import json, sys
            from geventcomet.client import Publisher, Subscriber
            with Publisher(sys.argv[1]) as publisher:
                ids = [publisher.publish("tls", n) for n in range(10)]
            with Subscriber(sys.argv[1], "tls", cursor=sys.argv[2], poll_timeout_s=5) as sub:
                got = [next(sub).data for _ in range(10)]
            print(json.dumps({"ids": ids, "got": got}))
        """, proxy.url, start, env={"SSL_CERT_FILE": certificate[0]})
        assert result == {"ids": list(range(1, 11)), "got": list(range(10))}
        assert proxy.connections == 2
        with Publisher(proxy.url, retry_for_s=30) as publisher:
            started = time.monotonic()
            with pytest.raises(CometClientError, match="CERTIFICATE_VERIFY_FAILED"):
                publisher.publish("tls", "x")
        assert time.monotonic() - started < 10
    finally:
        proxy.close()


def test_the_blocking_flavour_works_without_httpx_installed(server):
    """httpx (and httpcore, anyio) refused by a meta-path finder, as if not installed."""
    result = run_python("""
        import json, sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("httpx", "httpcore", "anyio"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NotInstalled())
        from geventcomet.client import Publisher, Subscriber
        with Publisher(sys.argv[1]) as publisher:
            ids = [publisher.publish("plain", n) for n in range(3)]
        with Subscriber(sys.argv[1], "plain", cursor=sys.argv[2], poll_timeout_s=5) as sub:
            got = [next(sub).id for _ in range(3)]
        try:
            from geventcomet.client import AsyncPublisher
            asyncio_flavour = "imported"
        except ImportError as exc:
            asyncio_flavour = str(exc)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("httpx", "httpcore", "anyio"))
        print(json.dumps({"ids": ids, "got": got, "asyncio": asyncio_flavour, "loaded": loaded}))
    """, server.url, first_cursor(server.url, "plain"))
    assert result == {"ids": [1, 2, 3], "got": [1, 2, 3], "asyncio": "No module named 'httpx'", "loaded": []}


def test_sse_over_the_standard_library_with_publishes_in_between(server):
    sub = Subscriber(server.url, "s", cursor=first_cursor(server.url, "s"), transport="sse", backoff=FAST)
    collector = Collector(sub)
    publish_ids(server.url, "s", 5)
    collector.wait_for(5)
    publish_ids(server.url, "s", 5)
    collector.wait_for(10)
    collector.stop()
    assert [e.id for e in collector.events] == list(range(1, 11))


@pytest.mark.parametrize("token, key", [("tök€n", None), ("t", "key\r\nX-Injected: 1"), ("t", "ключ")])
def test_a_header_http_cannot_carry_is_refused_before_sending(token, key):
    bad = Misbehaving(None)
    try:
        with Publisher(bad.url, token=token, retry_for_s=30) as publisher:
            with pytest.raises(CometClientError, match="header holds a character"):
                publisher.publish("news", 1, idempotency_key=key)
    finally:
        bad.server.stop()
    assert bad.requests == 0

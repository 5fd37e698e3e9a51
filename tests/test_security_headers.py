"""Browser hardening (issue #11 item 16): security headers, same-origin by scheme/host/port,
``--allowed-hosts`` against DNS rebinding. Real servers, real sockets."""
from __future__ import annotations

import json
import socket

import pytest
import requests

from geventcomet import Config, security

PAGES = ("/notify", "/demo", "/example")
JSON_PATHS = ("/", "/stats", "/register?channel=h&timeout=0", "/no/such/<script>", "/register")


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh socket, exactly as written: status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def test_every_reply_says_nosniff_and_pages_get_csp_and_frame_protection(server):
    for path in (*PAGES, *JSON_PATHS, "/geventcomet.js", "/demo.js"):
        reply = requests.get(server.url + path, timeout=10)
        assert reply.headers.get("X-Content-Type-Options") == "nosniff", path
        if reply.headers["Content-Type"].startswith("text/html"):
            csp = reply.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
            assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert reply.headers["Referrer-Policy"] == "same-origin"
        else:
            assert "Content-Security-Policy" not in reply.headers, path
    # the long-poll fast path (raw HTTP/1.1 GET /register), a POST, an error and a preflight
    status, headers, _ = raw_request(server.port, "GET /register?channel=f&timeout=0 HTTP/1.1\nHost: a\n"
                                                  "Connection: close\n")
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    reply = requests.post(server.url + "/notify", json={"channel": "f", "data": 1}, timeout=10)
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    reply = requests.post(server.url + "/notify", data=b"{", headers={"Content-Type": "application/json"}, timeout=10)
    assert reply.status_code == 400 and reply.headers["X-Content-Type-Options"] == "nosniff"
    reply = requests.options(server.url + "/notify", timeout=10)
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_the_csp_allows_exactly_the_inline_blocks_the_pages_ship(server):
    csp = requests.get(server.url + "/notify", timeout=10).headers["Content-Security-Policy"]
    for path in PAGES:
        scripts, styles = security.inline_hashes(requests.get(server.url + path, timeout=10).text)
        for source in scripts + styles:
            assert source in csp, (path, source)
    injected, _ = security.inline_hashes("<script>alert(1)</script>")
    assert injected[0] not in csp


def test_the_json_404_echoing_a_path_is_json_and_nosniff(server):
    status, headers, body = raw_request(server.port, "GET /<html><script>alert(1)</script> HTTP/1.1\nHost: a\n"
                                                     "Connection: close\n")
    assert status == 404
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert "no such path" in json.loads(body)["error"]


@pytest.mark.parametrize("origin, host, proto, same", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", None, True),
    ("http://example.com", "example.com:80", None, True),  # default port normalised
    ("http://EXAMPLE.com:80", "example.COM", None, True),
    ("http://example.com:080", "example.com", None, True),
    ("http://[::1]:8080", "[::1]:8080", None, True),
    ("https://example.com", "example.com", None, False),  # wrong scheme for a plain-HTTP request
    ("https://example.com", "example.com", "https", True),  # behind a TLS proxy
    ("https://example.com", "example.com:443", "https", True),
    ("http://example.com", "example.com", "https", False),
    ("ftp://example.com", "example.com", None, False),
    ("http://example.com:8081", "example.com:8080", None, False),
    ("http://example.com:8080", "example.com", None, False),
    ("http://user@example.com", "example.com", None, False),
    ("http://example.com/path", "example.com", None, False),
    ("null", "null", None, False),
    ("http://example.com", None, None, False),
    ("http://example.com:99999", "example.com:99999", None, False),
    ("example.com", "example.com", None, False),  # the old test ignored the scheme entirely
])
def test_same_origin_compares_scheme_host_and_port(origin, host, proto, same):
    assert security.same_origin(origin, host, proto) is same


def test_a_cross_scheme_origin_is_cross_origin_on_a_real_server(server):
    port = server.port
    notify = ('POST /notify HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: {origin}\nContent-Type: application/json\n'
              'Content-Length: 26\nConnection: close\n')
    body = b'{"channel":"o","data":1}  '
    status, _, _ = raw_request(port, notify.format(port=port, origin=f"http://127.0.0.1:{port}"), body)
    assert status == 200
    for origin in (f"https://127.0.0.1:{port}", f"ftp://127.0.0.1:{port}", f"127.0.0.1:{port}",
                   f"http://127.0.0.1:{port + 1}", "null"):
        status, _, reply = raw_request(port, notify.format(port=port, origin=origin), body)
        assert status == 403 and "not allowed" in json.loads(reply)["error"], origin


def test_dns_rebinding_is_stopped_by_allowed_hosts(start_server):
    server = start_server(allowed_hosts="localhost, .example.org, [::1]")
    port = server.port
    rebinding = "GET /stats HTTP/1.1\nHost: evil.example\nOrigin: http://evil.example\nConnection: close\n"
    # Origin equals Host: same-origin as far as the browser knows, and without a host list served.
    status, headers, body = raw_request(port, rebinding)
    assert status == 421, body
    assert "evil.example" in json.loads(body)["error"] and headers["x-content-type-options"] == "nosniff"
    for head in ("POST /notify HTTP/1.1\nHost: evil.example:{port}\nContent-Type: application/json\n"
                 "Content-Length: 24\nConnection: close\n",
                 "GET /register?channel=r&timeout=0 HTTP/1.1\nHost: 127.0.0.1:{port}\nConnection: close\n",
                 "GET /stream?channel=r HTTP/1.1\nHost: evil.example\nConnection: close\n",
                 "OPTIONS /notify HTTP/1.1\nHost: evil.example\nConnection: close\n",
                 "GET /notify HTTP/1.0\n"):  # no Host at all
        status, _, body = raw_request(port, head.format(port=port), b'{"channel":"r","data":1}')
        assert status == 421, (head, body)
        assert json.loads(body)["error"]
    assert server.app.stats.published == 0
    for host in (f"localhost:{port}", "localhost", "LOCALHOST:1", "example.org", "a.b.example.org:9", "[::1]:80"):
        status, _, body = raw_request(port, f"GET /register?channel=r&timeout=0 HTTP/1.1\nHost: {host}\n"
                                            "Connection: close\n")
        assert status == 200, (host, body)
    for host in ("example.org.evil.example", "notexample.org", "localhost.evil.example", "[::2]",
                 "evil.example,a.example.org", "evil.example a.example.org", "localhost:80:80", "localhost%00"):
        status, _, _ = raw_request(port, f"GET /stats HTTP/1.1\nHost: {host}\nConnection: close\n")
        assert status == 421, host


def test_allowed_hosts_with_a_port_allows_that_port_only(start_server):
    probe = start_server()
    port = probe.port
    probe.stop()
    server = start_server(port=port, allowed_hosts=f"127.0.0.1:{port}")
    assert requests.get(server.url + "/stats", timeout=10).status_code == 200  # requests sends Host: 127.0.0.1:port
    status, _, _ = raw_request(port, "GET /stats HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n")
    assert status == 421


@pytest.mark.parametrize("bad", ["exa mple.com", "example.com:http", "http://example.com", "a:1:2"])
def test_a_malformed_allowed_hosts_entry_is_a_startup_error(bad):
    with pytest.raises(ValueError, match="allowed_hosts"):
        Config(allowed_hosts=f"localhost,{bad}")

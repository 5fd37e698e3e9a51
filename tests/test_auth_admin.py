"""The admin token gates /stats and the Notify page; open endpoints list no channel; logs keep no secret."""
import json
import logging

import pytest
import requests

ADMIN = "admin-secret-42"
HTML = {"Accept": "text/html"}


@pytest.fixture
def admin_server(start_server):
    server = start_server(notify_token=ADMIN)
    requests.post(server.url + "/notify", json={"channel": "secret-room", "data": 1},
                  headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).raise_for_status()
    return server


def test_stats_needs_the_admin_token(admin_server):
    url = admin_server.url + "/stats"
    missing = requests.get(url, timeout=10)
    assert missing.status_code == 401 and missing.json()["auth"] == "admin"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["auth"] == "admin"
    query = requests.get(url, params={"waiting": 0}, timeout=10)
    assert query.status_code == 401
    ok = requests.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["published"] == 1


def test_the_notify_page_asks_for_the_token_once_and_keeps_a_cookie(admin_server):
    url = admin_server.url + "/notify"
    as_json = requests.get(url, timeout=10)
    assert as_json.status_code == 401 and as_json.json()["auth"] == "admin"
    login = requests.get(url, headers=HTML, timeout=10)
    assert login.status_code == 401 and 'name="token"' in login.text and "secret-room" not in login.text
    browser = requests.Session()
    sent = browser.post(url, data={"channel": "t", "data": "x", "token": ADMIN}, headers=HTML,
                        allow_redirects=False, timeout=10)
    assert sent.status_code == 303
    cookie = sent.headers["Set-Cookie"]
    assert cookie.startswith("gc_admin=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ADMIN not in cookie  # the cookie is a MAC of the token, not the token
    page = browser.get(url, headers=HTML, timeout=10)
    assert page.status_code == 200 and "secret-room" in page.text and 'name="token"' not in page.text
    again = browser.post(url, data={"channel": "t", "data": "y"}, headers=HTML, allow_redirects=False, timeout=10)
    assert again.status_code == 303  # the cookie stands for the token on the page's form
    forged = requests.get(url, headers={**HTML, "Cookie": "gc_admin=forged"}, timeout=10)
    assert forged.status_code == 403 and "secret-room" not in forged.text
    wrong = requests.post(url, data={"channel": "t", "data": "x", "token": "nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["auth"] == "invalid"


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/geventcomet.js", "/demo", "/demo.js", "/example"])
def test_open_endpoints_stay_open_and_list_no_channel(admin_server, path):
    reply = requests.get(admin_server.url + path, timeout=10)
    assert reply.status_code == 200 and "secret-room" not in reply.text


def test_without_an_admin_token_stats_and_the_page_are_open(server):
    assert requests.get(server.url + "/stats", timeout=10).status_code == 200
    assert requests.get(server.url + "/notify", headers=HTML, timeout=10).status_code == 200


def test_the_access_log_masks_tokens_client_ids_and_cursors(start_server, caplog):
    server = start_server(access_log=True)
    first = requests.get(server.url + "/register", params={"channel": "a", "timeout": 0}, timeout=10).json()
    with caplog.at_level(logging.INFO):
        reply = requests.get(server.url + "/register", timeout=10, params={
            "channel": "a", "timeout": 0, "client": first["client"], "since": first["cursor"], "token": "T0KEN"})
        assert reply.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "/register" in r.getMessage()]
    assert lines and all("client=***" in line and "since=***" in line and "token=***" in line for line in lines)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert first["client"] not in text and "T0KEN" not in text and first["cursor"] not in text


def test_debug_lines_name_no_private_channel(start_server, caplog):
    server = start_server()
    client = requests.get(server.url + "/register", params={"channel": "a", "timeout": 0}, timeout=10).json()["client"]
    with caplog.at_level(logging.DEBUG, logger="geventcomet"):
        reply = requests.post(server.url + "/notify", json={"client": client, "data": 1}, timeout=10)
        assert reply.status_code == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "published @***#1" in text and client not in text
    assert json.loads(reply.text)["channel"] == "@" + client  # the publisher itself is told

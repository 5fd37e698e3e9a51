"""Secrets stay out of logs and ``ps`` (issue #11 item 15): masked URL credentials, the notify
token from a file or the environment, a warning for one given on the command line."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from geventcomet import Config
from geventcomet.security import mask_credentials

from .helpers import ServerProcess

PASSWORD = "Sup3rSecretPw"
TOKEN = "t0ken-in-a-file"


def redis_command(port: int, *args: str) -> bytes:
    """One command in RESP, on its own connection; returns the first reply line."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload.encode())
        return conn.recv(256)


@pytest.fixture
def redis_user(redis_server, redis_url):
    """A password-protected ACL user on the session's redis (the default user stays open)."""
    assert redis_command(redis_server.port, "ACL", "SETUSER", "comet", "on", f">{PASSWORD}",
                         "~*", "&*", "+@all").startswith(b"+OK")
    yield f"redis://comet:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    redis_command(redis_server.port, "ACL", "DELUSER", "comet")


@pytest.mark.parametrize("url, masked", [
    (f"redis://:{PASSWORD}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    (f"redis://comet:{PASSWORD}@h/0", "redis://comet:***@h/0"),
    (f"redis://comet:p@ss{PASSWORD}@h/0", "redis://comet:***@h/0"),  # an unescaped @ in the password
    (f"redis://{PASSWORD}@h", "redis://***@h"),
    (f"redis://h:6379/0?password={PASSWORD}&db=1", "redis://h:6379/0?password=***&db=1"),
    ("sqlite:///var/lib/comet.db", "sqlite:///var/lib/comet.db"),
    ("memory", "memory"),
])
def test_credentials_inside_urls_are_masked(url, masked):
    assert mask_credentials(url) == masked
    line = Config(backend=url, notify_token="tok").describe()
    assert PASSWORD not in line and "tok " not in line and f"backend={masked}" in line


def test_a_redis_password_never_reaches_the_log(redis_user):
    server = ServerProcess("--backend", redis_user)
    try:
        assert requests.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10).status_code == 200
        server.wait_log(r"configuration: .*backend=redis://comet:\*\*\*@")
    finally:
        server.terminate()
        server.stop()
    assert PASSWORD not in "".join(server.log)


def test_a_wrong_redis_password_fails_start_up_without_showing_it(redis_server):
    wrong = f"redis://comet:{PASSWORD}Wrong@127.0.0.1:{redis_server.port}/0"
    server = ServerProcess("--backend", wrong, ready_timeout=15)  # ready: its log ended
    try:
        assert server.proc.wait(15) != 0 and not server.urls
        log = "".join(server.log)
        assert "cannot start" in log and "Redis" in log, log
        assert PASSWORD not in log
    finally:
        server.stop()


def test_any_log_line_quoting_a_url_masks_its_password():
    # The backend's own error quotes the URL it could not use; the log formatter masks it.
    out = run_cli("--backend", f"rediss://:{PASSWORD}@127.0.0.1:1/0")
    assert out.returncode != 0 and "unknown backend" in out.stderr and "rediss://:***@127.0.0.1:1/0" in out.stderr
    assert PASSWORD not in out.stderr


def test_the_token_file_protects_notify_and_stays_out_of_the_log(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\nsecond line ignored\n")
    server = ServerProcess("--notify-token-file", str(token_file))
    try:
        url = server.url + "/notify"
        assert requests.post(url, json={"channel": "c", "data": 1}, timeout=10).status_code == 401
        assert requests.post(url, json={"channel": "c", "data": 1}, timeout=10,
                             headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.post(url, json={"channel": "c", "data": 1}, timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert requests.post(url, data={"channel": "c", "data": "x", "token": TOKEN}, timeout=10).status_code == 200
        assert TOKEN not in Path(f"/proc/{server.proc.pid}/cmdline").read_text()
    finally:
        server.terminate()
        server.stop()
    log = "".join(server.log)
    assert TOKEN not in log and "notify_token=***" in log and "command line" not in log


def test_the_token_from_the_environment_works(tmp_path):
    server = ServerProcess(env={"GEVENTCOMET_NOTIFY_TOKEN": TOKEN})
    try:
        reply = requests.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200
        assert requests.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10).status_code == 401
    finally:
        server.terminate()
        server.stop()
    assert TOKEN not in "".join(server.log)


def test_a_token_on_the_command_line_works_but_is_warned_about():
    server = ServerProcess("--notify-token", TOKEN)
    try:
        line = server.wait_log(r"WARNING .*command line")
        assert "--notify-token-file" in line and "GEVENTCOMET_NOTIFY_TOKEN" in line
    finally:
        server.terminate()
        server.stop()
    assert TOKEN not in "".join(server.log)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("setup, message", [
    (lambda d: str(d / "missing"), "cannot be read: No such file or directory"),
    (lambda d: (d / "empty").write_text("\n  \nx") and str(d / "empty"), "is empty"),
    (lambda d: str(d), "cannot be read: Is a directory"),
])
def test_a_bad_token_file_is_a_clear_startup_error(tmp_path, setup, message):
    out = run_cli("--notify-token-file", setup(tmp_path))
    assert out.returncode == 2 and "bad configuration" in out.stderr and message in out.stderr, out.stderr


def test_a_token_given_twice_is_refused(tmp_path):
    (tmp_path / "t").write_text(TOKEN)
    out = run_cli("--notify-token-file", str(tmp_path / "t"), "--notify-token", "other")
    assert out.returncode == 2 and "not both" in out.stderr
    assert TOKEN not in out.stderr and "other" not in out.stderr


def test_help_says_how_to_keep_the_token_out_of_ps():
    out = subprocess.run([sys.executable, "-m", "geventcomet", "serve", "--help"], capture_output=True,
                         text=True, timeout=30)
    text = re.sub(r"\s+", " ", out.stdout)
    assert "--notify-token-file" in text and "GEVENTCOMET_NOTIFY_TOKEN" in text and "visible in ps" in text


def test_workers_get_the_token_from_the_file_and_not_on_their_command_lines(redis_url, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = ServerProcess("--backend", redis_url, "--workers", "2", "--notify-token-file", str(token_file),
                           ready_timeout=30)
    try:
        line = server.wait_log(r"all 2 workers listening", timeout=30)
        pids = [int(p) for p in re.search(r"\(pids ([\d ]+)\)", line).group(1).split()]
        for pid in (server.proc.pid, *pids):
            assert TOKEN not in Path(f"/proc/{pid}/cmdline").read_text(), pid
        answered: set[str] = set()
        for _ in range(200):  # new connections until SO_REUSEPORT has given each worker some
            with requests.Session() as session:  # keep-alive: both requests reach the same worker
                ok = session.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
                refused = session.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10)
            assert (ok.status_code, refused.status_code) == (200, 401)
            assert ok.headers["X-Geventcomet-Worker"] == refused.headers["X-Geventcomet-Worker"]
            answered.add(ok.headers["X-Geventcomet-Worker"])
            if len(answered) == 2:
                break
        assert answered == {str(pid) for pid in pids}
    finally:
        server.terminate(timeout=20)
        server.stop()
    assert TOKEN not in "".join(server.log)

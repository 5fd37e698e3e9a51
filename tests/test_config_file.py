"""``--config FILE`` (TOML), the precedence flags > environment > file > defaults, the origin of
each value in check-config and the start-up log, ``--log-format json``, and ``serve(config)``'s
log (issue 17, Configuration; issue 14)."""
import json
import os
import signal
import subprocess
import sys
import tomllib

import gevent
import pytest
import requests

from .helpers import ServerProcess
from .test_cli_errors import geventcomet_cli, one_line_error, settings_of

SECRET = "Sup3rS3cretT0ken"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "comet.toml"
    path.write_text(text)
    return str(path)


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    path = write(tmp_path, 'timeout = 11\nmax-timeout = 60\nbacklog = 7\naccess_log = true\n'
                           f'notify_token = "{SECRET}"\nbackend = "redis://:{SECRET}@127.0.0.1:1/0"\n')
    result = geventcomet_cli("check-config", "--config", path, "--timeout", "13",
                             env={"GEVENTCOMET_TIMEOUT": "12", "GEVENTCOMET_BACKLOG": "8"})
    assert result.returncode == 0, result.stderr
    settings = settings_of(result.stdout)
    assert settings["timeout"] == ("13.0", "flag --timeout")
    assert settings["backlog"] == ("8", "env GEVENTCOMET_BACKLOG")
    assert settings["max_timeout"] == ("60.0", f"file {path}")
    assert settings["access_log"] == ("true", f"file {path}")
    assert settings["port"] == ("8080", "default")
    assert settings["notify_token"] == ('"***"', f"file {path}")
    assert SECRET not in result.stdout + result.stderr and "redis://:***@127.0.0.1:1/0" in result.stdout
    # What check-config prints is itself a config file (secrets aside).
    printed = tomllib.loads(result.stdout)
    assert printed["timeout"] == 13.0 and printed["max_timeout"] == 60.0 and printed["access_log"] is True


def test_the_file_can_be_named_by_the_environment(tmp_path):
    path = write(tmp_path, "max_channels = 5\n")
    result = geventcomet_cli("check-config", env={"GEVENTCOMET_CONFIG": path})
    assert settings_of(result.stdout)["max_channels"] == ("5", f"file {path}")


@pytest.mark.parametrize("text, expected", [
    ("prot = 8080\n", ["unknown key 'prot'", "did you mean port?"]),
    ("[server]\nport = 1\n", ["unknown key 'server'"]),
    ('port = "8080"\n', ["port = '8080'", "whole number", "TOML integer"]),
    ("access_log = 1\n", ["access_log = 1", "TOML boolean"]),
    (f'notify_token = 5\n# {SECRET}\n', ["notify_token = ***", "TOML string"]),
    ("max_timeout = 60\nmax-timeout = 70\n", ["'max_timeout' is given twice"]),
    ("port = 70000\n", ["port = 70000 (or --port, GEVENTCOMET_PORT)", "from 0 to 65535"]),
    ("log_level = 'LOUD'\n", ["log_level = LOUD (or --log-level, GEVENTCOMET_LOG_LEVEL)"]),
    ("port = [\n", ["is not valid TOML"]),
])
def test_a_bad_file_is_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    line = one_line_error(geventcomet_cli("serve", "--config", path))
    assert path in line, line
    for words in expected:
        assert words in line, (words, line)


def test_a_missing_file_is_one_line(tmp_path):
    line = one_line_error(geventcomet_cli("check-config", "--config", str(tmp_path / "nope.toml")))
    assert "--config" in line and "No such file or directory" in line


def test_the_start_up_log_says_where_each_value_came_from(tmp_path):
    path = write(tmp_path, f'backlog = 9\nnotify_token = "{SECRET}"\n')
    server = ServerProcess("--config", path, "--max-channels", "3", env={"GEVENTCOMET_TIMEOUT": "7"})
    try:
        line = server.wait_log(r"configuration:")
        assert "flag: port=0 max_channels=3 |" in line and "environment: timeout=7.0 |" in line
        assert f"file {path}: backlog=9 notify_token=*** |" in line and "default: host=127.0.0.1" in line
        assert requests.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10).status_code == 401
    finally:
        server.terminate()
        server.stop()
    assert SECRET not in "".join(server.log)


def test_workers_get_the_files_settings(redis_url, tmp_path):
    """A worker rebuilds its Config from the supervisor's (JSON in its environment), so what the
    file said reaches every worker: the notify token from the file is required by each."""
    path = write(tmp_path, f'notify_token = "{SECRET}"\nbackend = "{redis_url}"\nworkers = 2\n')
    server = ServerProcess("--config", path, ready_timeout=40)
    try:
        assert server.ready is not None and len(server.ready.workers) == 2, server.log
        refused_by = set()
        for _ in range(100):  # new connections until SO_REUSEPORT has given both workers some
            reply = requests.post(server.url + "/notify", json={"channel": "c", "data": 1}, timeout=10)
            assert reply.status_code == 401
            refused_by.add(reply.headers["X-Geventcomet-Worker"])
            if len(refused_by) == 2:
                break
        assert refused_by == {str(pid) for pid in server.ready.workers}
    finally:
        server.terminate(20)
        server.stop()


def test_the_json_log_is_one_object_per_line_with_structured_fields():
    server = ServerProcess("--log-format", "json", "--access-log", env={"GEVENTCOMET_BOGUS": "1"})
    try:
        assert requests.get(server.url + "/stats", timeout=10).status_code == 200
        server.wait_log(r'"event": "request"')
        polled = requests.get(server.url + "/register?channel=a&channel=b&timeout=0", timeout=10)
        assert polled.status_code == 200
        poll_line = server.wait_log(r'"request": "GET /register')
    finally:
        server.terminate()
        server.stop()
    entries = [json.loads(line) for line in server.log]  # every line parses
    by_event = {}
    for entry in entries:
        assert {"time", "level", "logger", "pid", "event", "message"} <= entry.keys(), entry
        by_event.setdefault(entry["event"], entry)
    settings = by_event["configuration"]["settings"]
    assert settings["port"] == {"value": 0, "from": "flag --port"}
    assert settings["timeout"] == {"value": 25.0, "from": "default"}
    request = by_event["request"]
    assert request["status"] == 200 and request["client"] == "127.0.0.1" and request["request"].startswith("GET /stats")
    assert request["duration_s"] >= 0 and request["bytes"] > 0
    assert by_event["configuration-warning"]["level"] == "WARNING"
    poll = json.loads(poll_line)
    assert poll["channels"] == 2 and poll["status"] == 200 and "channels" not in request


SERVE_FROM_CODE = """
from gevent import monkey; monkey.patch_all()
import geventcomet
geventcomet.serve(geventcomet.Config(port=0))
"""


def test_serve_from_ones_own_code_logs_the_listening_line():
    proc = subprocess.Popen([sys.executable, "-c", SERVE_FROM_CODE], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                            if not k.startswith("GEVENTCOMET_")})
    try:
        with gevent.Timeout(30, AssertionError("no listening line")):
            line = proc.stderr.readline()
            while "listening on" not in line:
                assert line, "serve() exited without a listening line"
                line = proc.stderr.readline()
        assert " INFO geventcomet.server: geventcomet listening on http://127.0.0.1:" in line
        # Answered once the server waits for its stop signal, whose handler is then in place.
        url = line.split("listening on ")[1].split()[0]
        assert requests.get(url + "healthz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_the_wsgi_entry_point_reads_the_same_file_and_variables(tmp_path, monkeypatch):
    """gunicorn's path (geventcomet.wsgi: Config.from_env): GEVENTCOMET_CONFIG, then variables."""
    from geventcomet.config import Config
    path = write(tmp_path, "max_channels = 4\nbacklog = 9\n")
    config = Config.from_env({"GEVENTCOMET_CONFIG": path, "GEVENTCOMET_BACKLOG": "3", "GEVENTCOMET_TIMEOUT": "5"})
    assert (config.max_channels, config.backlog, config.timeout_s) == (4, 3, 5.0)


def test_the_json_log_masks_credentials_in_every_field():
    import logging

    from geventcomet.logs import JsonFormatter
    record = logging.LogRecord("geventcomet.x", logging.ERROR, __file__, 1, "backend %s failed",
                               (f"redis://:{SECRET}@h:6379/0",), None)
    record.url = f"redis://u:{SECRET}@h/0"
    entry = json.loads(JsonFormatter().format(record))
    assert SECRET not in json.dumps(entry) and entry["url"] == "redis://u:***@h/0"
    assert entry["message"] == "backend redis://:***@h:6379/0 failed" and entry["event"] == "x"


HUB_ERROR = """
from gevent import monkey; monkey.patch_all()
import gevent
from geventcomet.logs import configure_logging
configure_logging("INFO", "json")
def broken():
    raise ValueError("cannot reach redis://:{secret}@127.0.0.1:1/0")
gevent.spawn(broken).join()
"""


def test_a_greenlets_uncaught_error_is_one_masked_json_line():
    """gevent's hub would print it on stderr itself: many lines, not JSON, the password shown."""
    done = subprocess.run([sys.executable, "-c", HUB_ERROR.format(secret=SECRET)], capture_output=True,
                          text=True, timeout=30)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    entry = json.loads(lines[0])
    assert entry["logger"] == "geventcomet.hub" and entry["level"] == "ERROR"
    assert "failed with ValueError" in entry["message"]
    assert "ValueError: cannot reach redis://:***@127.0.0.1:1/0" in entry["exception"] and SECRET not in done.stderr


def test_workers_log_json_too(redis_url):
    server = ServerProcess("--log-format", "json", "--workers", "2", "--backend", redis_url, ready_timeout=40)
    try:
        assert server.ready is not None, server.log
    finally:
        server.terminate(20)
        server.stop()
    entries = [json.loads(line) for line in server.log if line.startswith("{")]
    assert {e["pid"] for e in entries} >= {server.proc.pid, *server.ready.workers}

"""Every start-up mistake of issue 14 is ONE line on stderr naming the flag (and its variable),
the value and what is allowed; exit status 2; never a traceback. Each runs the real command."""
import os
import re
import socket
import subprocess
import sys

import pytest

import geventcomet

#: An address of TEST-NET-1 (RFC 5737): never an address of this machine. Only bound, never sent to.
NOT_HERE = "192.0.2.1"


def geventcomet_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GEVENTCOMET_")}
    return subprocess.run([sys.executable, "-m", "geventcomet", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one line the command printed, after checking exit 2, no traceback, nothing else."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def taken_port():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    yield taken.getsockname()[1]
    taken.close()


def test_a_port_in_use_is_one_line(taken_port):
    line = one_line_error(geventcomet_cli("serve", "--port", str(taken_port)))
    assert line.startswith("geventcomet: cannot start: --port")
    assert f"--port {taken_port} (or GEVENTCOMET_PORT)" in line and "already in use" in line


def test_a_port_in_use_from_the_environment_names_the_variable(taken_port):
    line = one_line_error(geventcomet_cli("serve", env={"GEVENTCOMET_PORT": str(taken_port)}))
    assert f"GEVENTCOMET_PORT={taken_port} (or --port)" in line and "already in use" in line


@pytest.mark.parametrize("args, env, expected", [
    (["--port", "70000"], {}, ["--port 70000", "GEVENTCOMET_PORT", "from 0 to 65535"]),
    (["--port", "abc"], {}, ["--port abc", "GEVENTCOMET_PORT", "whole number"]),
    (["--host", "999.1.1.1"], {}, ["--host 999.1.1.1", "GEVENTCOMET_HOST", "127.0.0.1", "0.0.0.0"]),
    (["--host", NOT_HERE], {}, [f"--host {NOT_HERE}", "GEVENTCOMET_HOST", "not an address of this machine"]),
    (["--log-level", "LOUD"], {}, ["--log-level LOUD", "GEVENTCOMET_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"]),
    ([], {"GEVENTCOMET_LOG_LEVEL": "LOUD"}, ["GEVENTCOMET_LOG_LEVEL=LOUD (or --log-level)", "DEBUG, INFO"]),
    (["--timeout", "-1"], {}, ["--timeout -1", "GEVENTCOMET_TIMEOUT", "between 0 and --max-timeout (120.0)"]),
    ([], {"GEVENTCOMET_TIMEOUT": "nan"}, ["GEVENTCOMET_TIMEOUT=nan", "number of seconds"]),
    ([], {"GEVENTCOMET_ACCESS_LOG": "maybe"}, ["GEVENTCOMET_ACCESS_LOG=maybe (or --access-log)", "true or false"]),
    (["--backend", "nosuch://x"], {}, ["--backend nosuch://x", "unknown backend", "redis://HOST:PORT/DB"]),
    (["--workers", "2"], {}, ["--workers 2", "GEVENTCOMET_WORKERS", "not shared", "redis://"]),
    (["--metrics-port", "-5"], {}, ["--metrics-port -5", "GEVENTCOMET_METRICS_PORT", "from 0 to 65535"]),
    (["--max-channels", "0"], {}, ["--max-channels 0", "at least 1"]),
    (["--log-format", "xml"], {}, ["--log-format xml", "text or json"]),
])
def test_each_bad_setting_is_one_line_naming_flag_variable_value_and_what_is_allowed(args, env, expected):
    line = one_line_error(geventcomet_cli("serve", "--port", "0", *args, env=env))
    assert line.startswith(("geventcomet: bad configuration: ", "geventcomet: cannot start: ")), line
    for words in expected:
        assert words in line, (words, line)


def test_a_misspelt_flag_shows_serves_usage_in_one_line():
    line = one_line_error(geventcomet_cli("serve", "--prot", "8080"))
    assert line.startswith("geventcomet serve: ") and "--prot" in line
    assert "did you mean --port?" in line and "usage: geventcomet serve [--config PATH]" in line
    assert "geventcomet serve --help" in line


def test_a_flag_without_its_value_is_one_line():
    line = one_line_error(geventcomet_cli("serve", "--port"))
    assert "--port" in line and "expected one argument" in line


def test_an_unknown_command_is_one_line():
    line = one_line_error(geventcomet_cli("srve"))
    assert "srve" in line and "serve" in line


def test_a_secret_in_a_bad_value_is_never_printed(tmp_path):
    (tmp_path / "t").write_text("s3cr3t-token\n")
    result = geventcomet_cli("serve", "--port", "0", "--notify-token-file", str(tmp_path / "t"),
                             env={"GEVENTCOMET_NOTIFY_TOKEN": "0ther-s3cret"})
    line = one_line_error(result)
    assert "not both" in line and "s3cr3t" not in result.stderr


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = geventcomet_cli(flag)
    assert result.returncode == 0 and result.stdout.strip() == f"geventcomet {geventcomet.__version__}"


def settings_of(check_output: str) -> dict[str, tuple[str, str]]:
    """check-config's lines as ``{key: (value text, origin)}``."""
    found = {}
    for line in check_output.splitlines():
        match = re.fullmatch(r"(\w+) = (.*?)\s+# (.*)", line)
        if match:
            found[match[1]] = (match[2], match[3])
    return found


def test_variables_are_named_as_the_flags_and_old_names_still_work_with_a_warning():
    result = geventcomet_cli("check-config", env={"GEVENTCOMET_TIMEOUT": "5", "GEVENTCOMET_MAX_TIMEOUT_S": "60"})
    assert result.returncode == 0, result.stderr
    settings = settings_of(result.stdout)
    assert settings["timeout"] == ("5.0", "env GEVENTCOMET_TIMEOUT")
    assert settings["max_timeout"] == ("60.0", "env GEVENTCOMET_MAX_TIMEOUT_S")
    assert result.stderr.count("GEVENTCOMET_MAX_TIMEOUT_S is the old name of GEVENTCOMET_MAX_TIMEOUT") == 1
    both = geventcomet_cli("check-config", env={"GEVENTCOMET_TIMEOUT": "5", "GEVENTCOMET_TIMEOUT_S": "7"})
    assert settings_of(both.stdout)["timeout"] == ("5.0", "env GEVENTCOMET_TIMEOUT")
    assert "GEVENTCOMET_TIMEOUT_S is ignored" in both.stderr


def test_unknown_variables_are_warned_about_once_at_start():
    from .helpers import ServerProcess
    server = ServerProcess(env={"GEVENTCOMET_BOGUS": "1", "GEVENTCOMET_TIMOUT": "3"})
    try:
        server.wait_log(r"geventcomet: configuration:")
    finally:
        server.terminate()
        server.stop()
    warnings = [line for line in server.log if "unknown environment variables" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], server.log
    assert "GEVENTCOMET_BOGUS" in warnings[0]
    assert "GEVENTCOMET_TIMOUT (did you mean GEVENTCOMET_TIMEOUT?)" in warnings[0]
    # The processes' own variables (readiness pipe, worker configuration) are not "unknown".
    assert "READY_FD" not in warnings[0]


def test_workers_may_share_a_port_with_reuseport_sockets_as_before(redis_url):
    """A supervisor binds with SO_REUSEPORT, so its port may still be held by the draining workers
    of one it replaces: the start-up check binds as it does, and refuses only what it would."""
    from .helpers import ServerProcess
    draining = socket.socket()
    draining.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    draining.bind(("127.0.0.1", 0))
    draining.listen()
    port = str(draining.getsockname()[1])
    try:
        line = one_line_error(geventcomet_cli("serve", "--port", port))  # one process: no SO_REUSEPORT
        assert "already in use" in line
        server = ServerProcess("--backend", redis_url, "--workers", "2", "--port", port)
        try:
            assert server.ready is not None and server.ready.port == int(port), server.log
        finally:
            server.terminate(20)
            server.stop()
    finally:
        draining.close()

"""A graceful stop turns ``/readyz`` 503 first, so a load balancer stops sending before held polls go.

NEEDS the drain diff of issue #17's report (config ``drain_delay_s``, ``service.draining``, the
pause in ``server.serve``): on SIGTERM the server answers ``/readyz`` 503 for ``--drain-delay``
seconds while it still serves everything, and only then tells held polls to reconnect.
The configuration file of docs/deploy.md sets ``drain_delay`` too.
"""
import re
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import requests

from .helpers import ServerProcess


def test_sigterm_turns_readyz_503_before_held_polls_are_answered():
    server = ServerProcess("--drain-delay", "3", "--test-hooks")
    try:
        assert server.ready is not None, "".join(server.log)
        url = server.url
        poller, prober = requests.Session(), requests.Session()
        held = gevent.spawn(poller.get, url + "/register", params={"channel": "news", "timeout": 60}, timeout=70)
        stats = prober.get(url + "/stats", params={"waiting": 1, "timeout": 10}, timeout=20)
        assert stats.json()["waiting"] == 1
        assert prober.get(url + "/readyz", timeout=10).json() == {"ready": True}
        server.proc.send_signal(signal.SIGTERM)
        with gevent.Timeout(10, AssertionError("/readyz never turned 503 after SIGTERM")):
            while True:
                probe = prober.get(url + "/readyz", timeout=10)
                if probe.status_code == 503:
                    break
                gevent.sleep(0.02)  # the signal is handled in another process: ask again
        assert probe.json() == {"ready": False, "reason": "draining: the server is stopping"}
        assert not held.ready(), "the held poll was answered before /readyz said 503"
        fresh = requests.get(url + "/healthz", timeout=10)  # still accepting and serving meanwhile
        assert fresh.status_code == 200
        sent = requests.post(url + "/notify", json={"channel": "other", "data": 1}, timeout=10)
        assert sent.status_code == 200
        reply = held.get(timeout=15)
        assert reply.status_code == 503 and reply.json()["reconnect"] is True
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_the_documented_configuration_file_is_accepted(tmp_path):
    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "notify-token").write_text("a-token\n", encoding="utf-8")
    (tmp_path / "geventcomet.toml").write_text(toml.replace("/etc/geventcomet/", f"{tmp_path}/"), encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "geventcomet", "check-config", "--config",
                              str(tmp_path / "geventcomet.toml")], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"drain_delay = 5(\.0)?\s", checked.stdout) and "a-token" not in checked.stdout

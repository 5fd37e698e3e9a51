"""A third real client, the Python aiocometd-ng (asyncio), in its own process: it subscribes,
publishes, and gets every message of the channel in order, its own included."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from .bayeux_fixtures import Bayeux

AGENT = Path(__file__).parent / "bayeux" / "aiocometd_agent.py"
#: Where aiocometd-ng is installed, if not in this environment (``pip install --target DIR aiocometd-ng``).
EXTRA_PATH = os.environ.get("GEVENTCOMET_AIOCOMETD_PATH", "")


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (EXTRA_PATH, os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def aiocometd_available():
    probe = subprocess.run([sys.executable, "-c", "import aiocometd_ng"], env=child_env(), capture_output=True)
    if probe.returncode != 0:
        pytest.skip("aiocometd-ng is not installed (pip install aiocometd-ng, or GEVENTCOMET_AIOCOMETD_PATH)")


def test_aiocometd_subscribes_publishes_and_receives_in_order(server, aiocometd_available):
    raw = Bayeux(server.url)
    raw.start("/py/room")
    proc = subprocess.Popen([sys.executable, str(AGENT), server.url + "/bayeux", "/py/room", "31"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        with gevent.Timeout(30, AssertionError("aiocometd did not subscribe")):
            assert proc.stdout.readline().strip() == "subscribed"
        with gevent.Timeout(30, AssertionError("aiocometd's publish never arrived")):
            while not [m for m in raw.connect(None)[:-1] if m["data"] == {"from": "aiocometd"}]:
                pass  # each connect is held until a delivery
        for n in range(30):
            raw.publish("/py/room", {"n": n})
        with gevent.Timeout(30, AssertionError("aiocometd did not get every message")):
            lines = [json.loads(proc.stdout.readline()) for _ in range(31)]
        assert [m["data"] for m in lines] == [{"from": "aiocometd"}, *({"n": n} for n in range(30))]
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

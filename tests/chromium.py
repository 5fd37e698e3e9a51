"""Headless Chromium for the browser tests, driven by playwright-core (``tests/browser``).

Chromium is Debian's ``/usr/bin/chromium``; nothing downloads a browser. Without node,
Chromium or playwright-core a browser test skips locally and fails in CI. Every wait
is on a page condition with a bound (``Browser.wait``), never a sleep. The fixtures
``chromium`` (one per module) and ``browser`` (its pages closed after each test) are in
``conftest.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import gevent
import pytest

from .conftest import IN_CI

BROWSER_DIR = Path(__file__).parent / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Bound for a page condition that needs a reconnect (backoff, server start-up).
RECONNECT_S = 20


def require_browser() -> None:
    missing = []
    if shutil.which("node") is None:
        missing.append("node")
    if not Path(CHROMIUM).exists():
        missing.append(f"chromium ({CHROMIUM})")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        missing.append("playwright-core (cd tests/browser && npm install)")
    if missing:
        message = "browser tests need " + ", ".join(missing) + " (run: bash .ci/install-test-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


class Browser:
    """Headless Chromium behind ``driver.mjs``: one JSON command per line, one reply per line."""

    def __init__(self) -> None:
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(["node", str(DRIVER)], cwd=BROWSER_DIR, text=True, bufsize=1,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._drain = gevent.spawn(lambda: self.stderr.extend(self.proc.stderr))
        self._next_id = 0
        self.pages: set[str] = set()
        assert self._reply(30)["value"] == "ready", "driver did not start"

    def _reply(self, timeout: float) -> dict:
        with gevent.Timeout(timeout, AssertionError(f"no answer from the browser driver in {timeout} s")):
            line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("browser driver exited:\n" + "".join(self.stderr))
        return json.loads(line)

    def call(self, op: str, deadline: float = 30, **args):
        self._next_id += 1
        self.proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(deadline)
        assert reply["id"] == self._next_id, reply
        if not reply["ok"]:
            raise AssertionError(f"{op} {args}: {reply['error']}")
        return reply["value"]

    def open(self, page: str, url: str) -> None:
        self.call("open", page=page, url=url)
        self.pages.add(page)

    def eval(self, page: str, expr: str):
        return self.call("eval", page=page, expr=expr)

    def wait(self, page: str, expr: str, timeout: float = 10):
        """Wait until ``expr`` is truthy in ``page``; return its value."""
        try:
            return self.call("wait", deadline=timeout + 10, page=page, expr=expr, timeout=int(timeout * 1000))
        except AssertionError as exc:
            state = self.eval(page, "document.body.innerText.slice(0, 500)")
            raise AssertionError(f"{exc}\npage {page} shows: {state}") from None

    def click(self, page: str, selector: str) -> None:
        self.call("click", page=page, selector=selector)

    def screenshot(self, page: str, path: str) -> None:
        """Write a PNG of the whole page to ``path``."""
        self.call("screenshot", page=page, path=str(path))

    def errors(self, page: str) -> list[str]:
        return self.call("logs", page=page)

    def close_pages(self) -> None:
        for page in self.pages:
            self.call("close", page=page)
        self.pages.clear()

    def quit(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)

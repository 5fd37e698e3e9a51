"""The code itself: ruff's lint over the tree, mypy over the package, --strict over the pure core."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Kept strictly typed, as h11 keeps its core (STYLE.md §5): no I/O, no gevent magic.
STRICT_MODULES = ["geventcomet/protocol.py", "geventcomet/hub.py", "geventcomet/errors.py",
                  "geventcomet/strictjson.py", "geventcomet/security.py", "geventcomet/http_rules.py",
                  "geventcomet/misbehaviour.py"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed (it is in the test extra: pip install -e '.[test]')")
    result = run("ruff", "check", "--config", ".ci/ruff.toml",
                 "geventcomet", "loadclient", "old_experiments", "tests", "bench", "setup.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_passes_mypy():
    result = run(sys.executable, "-m", "mypy", "--ignore-missing-imports", "geventcomet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pure_core_passes_mypy_strict():
    result = run(sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
                 "--follow-imports=silent", *STRICT_MODULES)
    assert result.returncode == 0, result.stdout + result.stderr

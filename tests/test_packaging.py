"""The package a user installs: a wheel built from the tree holds the server, its static files,
``py.typed`` and the load client, and no tests or benchmarks; its metadata names one version,
the license, the extras and both console scripts."""
import email
import subprocess
import sys
import zipfile
from pathlib import Path

import geventcomet

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(out: Path) -> Path:
    # --no-build-isolation: the build uses this environment's setuptools (the test extra's
    # environment has it), so the test needs no download.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = out.glob("geventcomet-*.whl")
    return wheel


def test_the_wheel_holds_what_a_user_needs_and_nothing_else(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {p.name for p in (ROOT / "geventcomet" / "static").iterdir()}
    assert {f"geventcomet/static/{name}" for name in static} <= names
    assert "geventcomet/py.typed" in names and "geventcomet/bayeux/transport.py" in names
    assert "geventcomet/client/publisher.py" in names and "loadclient/__main__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "/tests/" in n]
    dist = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(dist))
    assert meta["Version"] == geventcomet.__version__ and meta["Requires-Python"] == ">=3.11"
    assert "MIT" in (meta["License"] or "") + " ".join(meta.get_all("Classifier") or [])
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"redis", "gunicorn", "jwt", "client", "bench", "test", "dev"} <= extras
    entry_points = zipfile.ZipFile(wheel).read(dist.replace("METADATA", "entry_points.txt")).decode()
    assert "geventcomet = geventcomet.cli:main" in entry_points
    assert "geventcomet-load = loadclient.__main__:main" in entry_points


def test_the_version_is_one_and_the_same_everywhere():
    cli = subprocess.run([sys.executable, "-m", "geventcomet", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == f"geventcomet {geventcomet.__version__}"
    js = (ROOT / "geventcomet" / "static" / "geventcomet.js").read_text(encoding="utf-8")
    assert "@GEVENTCOMET_VERSION@" in js  # filled in from __version__ when served (test_pages)
    changes = (ROOT / "CHANGES.md").read_text(encoding="utf-8")
    assert f"## {geventcomet.__version__} " in changes or "## Unreleased" in changes

"""The README's promises that a file can check: CI runs its test command, its first command uses a
virtualenv (PEP 668), every flag and variable it names exists, and the pinned Node packages run on
the Node that .ci/install-test-deps would install (Debian 12's is 18)."""
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

from geventcomet.cli import build_parser
from geventcomet.config import Config
from geventcomet.config_env import CONFIG_ENV, env_of

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def two_commands() -> list[str]:
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in sh_blocks(section)]


def test_ci_runs_exactly_the_readmes_test_command():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert run[-1] == two_commands()[1]


def test_the_first_command_installs_into_a_virtualenv():
    first = two_commands()[0]
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install . && ")
    assert first.endswith(".venv/bin/geventcomet serve --port 8080")
    assert "Python 3.11 or newer" in README and "python3-venv" in README


def test_the_test_command_installs_into_the_venv_it_then_uses():
    second = two_commands()[1]
    assert second.startswith("bash .ci/install-test-deps .venv && . .venv/bin/activate && ")
    script = (ROOT / ".ci" / "install-test-deps").read_text(encoding="utf-8")
    assert "python3-venv" in script and '"$VENV/bin/python" -m pip install' in script
    assert not re.search(r"^\s*(python3|pip3?) -m pip install|^\s*pip3? install", script, re.M)


def test_every_flag_and_variable_the_readme_names_exists():
    parser, commands = build_parser()
    helps = parser.format_help() + commands["serve"].format_help()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", helps))
    usage = README.split("## Running it", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", usage))
    assert named and named <= flags, named - flags
    loadclient_help = subprocess.run([sys.executable, "-m", "loadclient", "--help"], capture_output=True,
                                     text=True, timeout=60, cwd=ROOT).stdout
    flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", loadclient_help))
    everywhere = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", README))
    assert "--channels" in flags and everywhere <= flags, everywhere - flags
    variables = {env_of(f.name) for f in dataclasses.fields(Config)} | {CONFIG_ENV}
    mentioned = set(re.findall(r"GEVENTCOMET_[A-Z_]+", README)) - {"GEVENTCOMET_"}
    assert mentioned and mentioned <= variables, mentioned - variables


def test_the_browser_driver_runs_on_debian_12s_node():
    lock = json.loads((ROOT / "tests" / "browser" / "package-lock.json").read_text(encoding="utf-8"))
    engines = lock["packages"]["node_modules/playwright-core"]["engines"]["node"]
    assert engines == ">=18", engines

"""The code itself: ruff's lint over the tree, mypy over the package, --strict over the pure core."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Kept strictly typed, as h11 keeps its protocol core: no I/O, no gevent magic.
STRICT_MODULES = ["geventcomet/protocol.py", "geventcomet/hub.py", "geventcomet/errors.py",
                  "geventcomet/strictjson.py", "geventcomet/security.py", "geventcomet/http_rules.py",
                  "geventcomet/notify_body.py", "geventcomet/fasthead.py", "geventcomet/lean.py",
                  "geventcomet/bayeux/channels.py", "geventcomet/client/policy.py",
                  "geventcomet/client/backoff.py", "geventcomet/counters.py",
                  "geventcomet/metrics_record.py", "geventcomet/misbehaviour.py", "geventcomet/connections.py",
                  "geventcomet/peer.py", "geventcomet/backends/redis_counts.py"]


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


# -- the shape of the package (issue 12) ---------------------------------------------------------

PACKAGE = ROOT / "geventcomet"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def modules() -> dict[str, ast.Module]:
    """``{"geventcomet.app": tree, ...}`` for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        tree.is_package = parts[-1] == "__init__"  # type: ignore[attr-defined]
        found[name] = tree
    return found


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, at module level or inside functions."""
    package = name.split(".") if tree.is_package else name.split(".")[:-1]  # type: ignore[attr-defined]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_no_module_or_function_is_too_long():
    too_long = []
    for name, tree in modules().items():
        lines = max((getattr(node, "end_lineno", 0) or 0) for node in ast.walk(tree))
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_no_module_uses_another_objects_private_names():
    """``x._name`` only on ``self`` or ``cls`` (a module's own objects), never on another's."""
    reaching = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                reaching.append(f"{name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and node.level:
                reaching += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not reaching, reaching


def test_the_package_has_no_import_cycle():
    trees = modules()
    graph = {name: imports_of(name, tree, set(trees)) for name, tree in trees.items()}
    cycles, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open" and not name.startswith(dep + "."):
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{name} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles

"""The layering docs/architecture.md states: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import cened

ROOT = Path(cened.__file__).parent
RUNTIME_NEVER = ("cened.training", "cened.bench", "cened.commands", "cened.cli")
ML_MAY = ("cened.ml", "cened.errors", "cened.hashing", "cened.logsetup", "cened.config", "cened.moving")
TRAINING_MAY = (
    "cened.training",
    "cened.ml",
    "cened.config",
    "cened.errors",
    "cened.logsetup",
    "cened.hashing",
    "cened.bench.photos",
)
BENCH_NEVER = ("cened.training", "cened.commands", "cened.cli")


def _imports(path: Path) -> set[str]:
    """Every cened module a file imports, at the top or inside a function."""
    found: set[str] = set()
    package = ".".join(("cened", *path.relative_to(ROOT).parent.parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return {name.strip(".") for name in found if name.startswith("cened")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def test_imports_are_found_wherever_they_are_written() -> None:
    """The checks below see top-level, nested and relative imports alike."""
    assert {"cened.batching.Collector", "cened.learn", "cened.ml.imaging"} <= _imports(ROOT / "daemon.py")
    assert "cened.training.dataset" in _imports(ROOT / "commands" / "evaluate.py")  # inside run()


def test_the_runtime_never_imports_training_bench_or_commands() -> None:
    bad = {
        f"{path.name}: {name}"
        for path in _modules(ROOT)
        if path.name not in ("cli.py", "__main__.py")
        for name in _imports(path)
        if _under(name, RUNTIME_NEVER)
    }
    assert not bad


def test_ml_imports_only_what_the_daemon_loads() -> None:
    bad = {
        f"ml/{path.name}: {name}"
        for path in _modules(ROOT / "ml")
        for name in _imports(path)
        if name != "cened" and not _under(name, ML_MAY)
    }
    assert not bad


def test_training_and_bench_keep_to_their_layers() -> None:
    bad = {
        f"training/{path.name}: {name}"
        for path in _modules(ROOT / "training")
        for name in _imports(path)
        if name != "cened" and not _under(name, TRAINING_MAY)
    }
    bad |= {
        f"bench/{path.name}: {name}"
        for path in _modules(ROOT / "bench")
        for name in _imports(path)
        if _under(name, BENCH_NEVER)
    }
    assert not bad


def test_nothing_but_cli_imports_the_commands() -> None:
    bad = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in ROOT.rglob("*.py")
        if path.parent.name != "commands" and path.name != "cli.py" and path.name != "__main__.py"
        for name in _imports(path)
        if _under(name, ("cened.commands", "cened.cli"))
    }
    assert not bad

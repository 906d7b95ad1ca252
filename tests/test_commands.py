"""One way to declare a command: a module of cened.commands each, listed by ``cened --help``.

And the promise that comes with it: a command that reads the log does not
pay for TensorFlow, numpy or the classifier.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cened.commands
from cened.cli import main
from cened.commands import COMMANDS
from cened.journal import Journal

#: What `cened history` must not import (the list the test prints must come back empty).
HEAVY = ("tensorflow", "keras", "numpy", "PIL", "ai_edge_litert")


def _config(tmp_path: Path) -> Path:
    """A config whose database exists, as after the daemon's first run."""
    database = tmp_path / "state" / "cened.sqlite3"
    database.parent.mkdir()
    Journal(database).close()
    config = tmp_path / "cened.toml"
    config.write_text(
        f'inbox = "{tmp_path / "inbox"}"\nlibrary = "{tmp_path / "library"}"\ndatabase = "{database}"\n'
    )
    return config


def test_every_command_module_declares_a_command_and_help_lists_them_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    found = {m.name for m in pkgutil.iter_modules(cened.commands.__path__) if not m.name.startswith("_")}
    assert found == set(COMMANDS) and len(COMMANDS) == len(set(COMMANDS))
    modules = [importlib.import_module(f"cened.commands.{name}") for name in COMMANDS]
    for module in modules:
        assert isinstance(module.NAME, str) and isinstance(module.HELP, str), module.__name__
        assert callable(module.add_arguments) and callable(module.run), module.__name__
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    for module in modules:
        assert f"    {module.NAME} " in listed and module.HELP.split()[0] in listed


def test_history_imports_neither_tensorflow_nor_numpy_nor_the_classifier(tmp_path: Path) -> None:
    code = (
        "import sys; from cened.cli import main; main(['--config', sys.argv[1], 'history']); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        "or m.startswith('cened.ml') or m.startswith('cened.training')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


@pytest.mark.parametrize(
    "words",
    [[name.replace("_", "-")] for name in COMMANDS]
    + [["album", action] for action in ("add", "remove", "list")]
    + [["model", action] for action in ("list", "use", "rollback")],
    ids=" ".join,
)
def test_each_command_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cened {' '.join(words)} ")


def test_a_commands_options_are_there_whatever_words_come_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even a config file named like another command: the command is what argparse chose."""
    monkeypatch.chdir(tmp_path)
    _config(tmp_path).rename(tmp_path / "train")
    assert main(["--config", "train", "doctor", "--fix"]) == 0
    assert capsys.readouterr().out == "all consistent\n"

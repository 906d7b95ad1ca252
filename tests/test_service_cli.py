"""The service's CLI for the people who use it: its config found by itself, refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_config
from daemon_helpers import run_cli
from fs_helpers import immutable

from cened import config
from cened.cli import main
from cened.config import Settings
from cened.errors import ExitCode
from cened.journal import Entry, Journal


def test_without_config_a_command_finds_the_installed_services(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sudo -u cened cened history` must show the service's log, not open one under the user's home."""
    with Journal(settings.database) as journal:
        journal.add(
            [Entry(action="moved", source=settings.inbox / "a.jpg", destination=settings.library / "a")]
        )
    monkeypatch.delenv("CENED_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", write_config(tmp_path / "etc.toml", settings))
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["filed"] == 1
    # The user's own service's config comes first.
    elsewhere = tmp_path / "x.sqlite3"
    mine = tmp_path / "home" / ".config" / "cened" / "config.toml"
    mine.parent.mkdir(parents=True)
    write_config(mine, settings, database=str(elsewhere))
    assert main(["stats", "--json"]) == ExitCode.DATABASE  # its database is not there: refused, not made
    assert str(elsewhere) in capsys.readouterr().err and not elsewhere.exists()


def test_a_permission_problem_is_one_line_not_a_traceback(tmp_path: Path, settings: Settings) -> None:
    config_file = write_config(tmp_path / "cened.toml", settings)
    settings.learned_dir.mkdir(parents=True)
    with immutable(settings.learned_dir):  # nobody, root included, may make the lock file in it
        done = run_cli("model", "use", "shipped", config=config_file)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("cened: permission denied: ") and done.stderr.count("\n") == 1, done.stderr

"""File names are shown, never obeyed: a terminal's control characters in a name come out escaped."""

from __future__ import annotations

from pathlib import Path

from conftest import write_config, write_photo
from daemon_helpers import run_cli

from cened.config import Settings
from cened.logsetup import printable

RED = "esc\x1b[31mred\nline.jpg"


def test_control_characters_are_escaped() -> None:
    assert printable(RED) == "esc\\x1b[31mred\\nline.jpg"
    assert printable("caf\udce9.jpg") == "caf\\xe9.jpg"  # a byte that is not UTF-8
    assert printable("plain é.jpg") == "plain é.jpg"


def test_history_doctor_and_undo_print_names_escaped(tmp_path: Path, settings: Settings, filing) -> None:
    file, _journal = filing
    (outcome,) = file(write_photo(settings.inbox / RED, "sea"))
    stranger = write_photo(settings.library / "sea" / "[bold]x\x1b[0m.jpg", "sea", seed=2)
    config = write_config(tmp_path / "cened.toml", settings)
    history = run_cli("history", config=config)  # piped, as by `| less`
    assert history.returncode == 0, history.stderr
    doctor = run_cli("doctor", config=config)
    undo = run_cli("undo", "--dry-run", str(outcome.entry.id), config=config)
    for out in (history.stdout, undo.stdout):
        assert "\x1b" not in out and "\\x1b[31mred\\nline.jpg" in out, out
    assert "\x1b" not in doctor.stdout
    assert f"not in the log: {settings.library}/sea/[bold]x\\x1b[0m.jpg" in doctor.stdout
    assert stranger.exists()
    # Not on a terminal, a table is as wide as it needs: no name is folded onto two lines.
    assert any(f"inbox/{printable(RED)}" in line for line in history.stdout.splitlines()), history.stdout

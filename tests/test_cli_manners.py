"""Typos caught and a command line that behaves: a correction into no album, config errors that
say where, ``--config`` anywhere, a closed pipe, a cut list, and ``cened run`` at a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from conftest import write_config

from cened.cli import main
from cened.config import Settings, check_folders, load_settings
from cened.errors import ConfigError, ExitCode
from cened.journal import Action, Entry, Journal, State


def _rows(settings: Settings) -> list[tuple]:
    with sqlite3.connect(settings.database) as db:
        return db.execute("SELECT id, action, album, human_label FROM decisions ORDER BY id").fetchall()


def test_a_correction_into_no_album_is_refused_with_the_nearest_one(
    filed: tuple[Path, dict[str, int]], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids = filed
    before = _rows(settings)
    assert main(["--config", str(config), "correct", str(ids["c.jpg"]), "moutain"]) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "there is no album 'moutain'; did you mean 'mountain'?" in err
    assert f"cened correct {ids['c.jpg']} moutain --new-album" in err and "nothing was moved" in err
    assert _rows(settings) == before and not (settings.library / "moutain").exists()

    # A typo of an album that is no class but exists (a folder in the library) is caught too.
    (settings.library / "holidays").mkdir()
    assert main(["--config", str(config), "correct", str(ids["c.jpg"]), "holidyas"]) == ExitCode.REFUSED
    assert "did you mean 'holidays'?" in capsys.readouterr().err
    assert main(["--config", str(config), "correct", str(ids["c.jpg"]), "holidays"]) == 0

    assert main(["--config", str(config), "correct", str(ids["b.jpg"]), "cats", "--new-album"]) == 0
    assert (settings.library / "cats" / "b.jpg").is_file()
    assert _rows(settings)[-1][1:] == ("corrected", "cats", "cats")
    # Now that it exists, it needs no --new-album.
    assert main(["--config", str(config), "correct", str(ids["a.jpg"]), "cats"]) == 0


def test_config_errors_name_the_file_the_key_and_the_nearest_key(tmp_path: Path) -> None:
    cfg = tmp_path / "cened.toml"
    cfg.write_text("confidence_treshold = 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert str(caught.value) == (
        f"invalid configuration: {cfg}: unknown key 'confidence_treshold' "
        "(did you mean 'confidence_threshold'?)"
    )
    cfg.write_text("batch_size = 0\n")
    with pytest.raises(ConfigError, match=f"{cfg}: batch_size: Input should be greater than or equal to 1"):
        load_settings(cfg)


def test_a_bad_value_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CENED_BATCH_SIZE", "lots")
    with pytest.raises(ConfigError, match=r"\$CENED_BATCH_SIZE: batch_size: "):
        load_settings(None)


def test_config_works_after_the_command_too(
    filed: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = filed
    assert main(["history", "--json", "--config", str(config)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["stats", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["filed"] == 3


def test_history_says_when_the_limit_cut_the_list(
    filed: tuple[Path, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = filed
    assert main(["--config", str(config), "history", "--json", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and all(json.loads(line) for line in out.splitlines())
    assert "the newest 2 of 3 rows; --limit N shows more, --limit 0 all" in err
    assert main(["--config", str(config), "history", "--json", "--limit", "3"]) == 0
    assert capsys.readouterr().err == ""


def test_messages_name_actions_not_their_enum(
    filed: tuple[Path, dict[str, int]], settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = filed
    with Journal(settings.database) as journal:
        (note,) = journal.add([Entry(action=Action.SKIPPED, source=settings.inbox / "x.xmp", reason="alone")])
    assert main(["--config", str(config), "undo", str(note.id)]) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert f"#{note.id} is a skipped row" in err and "<Action" not in err


def test_history_says_an_other_photo_is_like_none_of_the_classes(
    filed: tuple[Path, dict[str, int]],
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _ = filed
    monkeypatch.setenv("COLUMNS", "250")  # one line per row: the table folds long cells
    kitchen = Entry(
        action=Action.OTHER,
        source=settings.inbox / "kitchen.jpg",
        destination=settings.library / "other" / "kitchen.jpg",
        label="buildings",
        album="other",
        confidence=0.92,
        state=State.DONE,
    )
    with Journal(settings.database) as journal:
        journal.add([kitchen])
    assert main(["--config", str(config), "history", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "none (nearest buildings)" in out


def test_a_closed_pipe_ends_quietly(filed: tuple[Path, dict[str, int]], settings: Settings) -> None:
    config, _ = filed
    with Journal(settings.database) as journal:  # more than a pipe holds, so the writer must block
        notes = [Entry(action=Action.SKIPPED, source=settings.inbox / (f"{i}.x" * 8)) for i in range(600)]
        journal.add(notes)
    reader = subprocess.Popen(
        [sys.executable, "-m", "cened", "history", "--json", "--limit", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert json.loads(reader.stdout.readline())["id"] == 1
    reader.stdout.close()  # what `| head -1` does
    assert reader.wait(timeout=60) == ExitCode.PIPE
    assert reader.stderr.read() == b""


def test_a_missing_folder_is_created_and_named_in_the_log(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"inbox": tmp_path / "typo" / "inbox"})
    with structlog.testing.capture_logs() as logs:
        check_folders(s)
    assert s.inbox.is_dir()
    created = [e for e in logs if e["event"] == "created-folder"]
    assert created == [
        {"event": "created-folder", "folder": "inbox", "path": str(s.inbox), "log_level": "info"},
        {
            "event": "created-folder",
            "folder": "quarantine",
            "path": str(s.quarantine_dir),
            "log_level": "info",
        },
    ]


def _at_a_terminal(command: list[str], until: bytes, timeout: float = 90.0) -> bytes:
    """What ``command`` prints on a terminal until ``until`` shows, then after a Ctrl-C."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(command, stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL, env=env)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while until not in seen and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.5)[0]:
                try:
                    seen += os.read(primary, 65536)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, seen.decode(errors="replace")
        while select.select([primary], [], [], 0.2)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    return seen


@pytest.mark.slow
def test_run_at_a_terminal_says_what_it_does_in_one_human_line(settings: Settings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cened.toml", settings, log_format="auto")
    run = [sys.executable, "-m", "cened", "run", "--config", str(config)]
    said = _at_a_terminal(run, b"Ctrl-C to stop").decode(errors="replace")
    line = f"cened: watching {settings.inbox}, filing into {settings.library}; Ctrl-C to stop"
    assert line in said
    lines = [ln for ln in said.splitlines() if ln.strip()]
    assert not any(ln.lstrip().startswith("{") for ln in lines), said  # no JSON at a terminal
    assert "started" in said and "'inbox':" not in said  # the config dump is for JSON logs

    said = _at_a_terminal([*run, "--log-format", "json"], b'"started"').decode(errors="replace")
    events = [json.loads(ln) for ln in said.splitlines() if ln.startswith("{")]
    assert any(e["event"] == "started" and "config" in e for e in events)
    assert "Ctrl-C to stop" not in said

"""history, undo, correct, stats and doctor against a real log and real files."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import write_config, write_photo

from cened.cli import main
from cened.config import Settings
from cened.errors import ExitCode
from cened.journal import Entry, Journal


def _cli(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_history_json_lists_every_field(filed, capsys) -> None:
    config, ids = filed
    assert _cli(config, "history", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == sorted(ids.values())
    row = rows[0]
    for key in (
        "batch_id",
        "time",
        "source",
        "destination",
        "sha256",
        "size",
        "label",
        "confidence",
        "probabilities",
        "model_version",
        "action",
        "state",
    ):
        assert row[key] is not None, key
    assert _cli(config, "history") == 0  # the table renders too
    assert "a.jpg" in capsys.readouterr().out


def test_history_filters_by_file(filed, settings: Settings, capsys) -> None:
    config, ids = filed
    assert _cli(config, "history", "--json", "--file", str(settings.library / "forest" / "b.jpg")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [ids["b.jpg"]]


def test_undo_by_id_restores_and_records(filed, settings: Settings) -> None:
    config, ids = filed
    data = (settings.library / "sea" / "a.jpg").read_bytes()
    assert _cli(config, "undo", str(ids["a.jpg"])) == 0
    assert (settings.inbox / "a.jpg").read_bytes() == data
    assert not (settings.library / "sea" / "a.jpg").exists()
    with sqlite3.connect(settings.database) as db:
        action, ref, state = db.execute(
            "SELECT action, ref_id, state FROM decisions ORDER BY id DESC"
        ).fetchone()
    assert (action, ref, state) == ("undone", ids["a.jpg"], "done")
    assert _cli(config, "undo", str(ids["a.jpg"])) == ExitCode.REFUSED  # not twice


def test_undo_refuses_changed_gone_or_taken_and_moves_nothing(filed, settings: Settings, capsys) -> None:
    config, _ids = filed
    (settings.library / "sea" / "a.jpg").write_bytes(b"edited since")
    (settings.library / "forest" / "b.jpg").unlink()
    write_photo(settings.inbox / "c.jpg", "street")  # the original name is taken again
    before = sorted(p for p in settings.library.rglob("*"))
    assert _cli(config, "undo", "--last", "3") == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "has changed" in err and "is gone" in err and "is taken" in err
    assert sorted(p for p in settings.library.rglob("*")) == before
    with sqlite3.connect(settings.database) as db:
        assert db.execute("SELECT count(*) FROM decisions WHERE action = 'undone'").fetchone()[0] == 0


def test_undo_since_and_batch(filed, settings: Settings) -> None:
    config, _ids = filed
    with sqlite3.connect(settings.database) as db:
        (batch,) = db.execute("SELECT DISTINCT batch_id FROM decisions").fetchone()
    assert _cli(config, "undo", "--batch", batch, "--dry-run") == 0
    assert len(list(settings.library.rglob("*.jpg"))) == 3
    assert _cli(config, "undo", "--since", "1h") == 0
    assert sorted(p.name for p in settings.inbox.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert _cli(config, "undo") == ExitCode.CONFIG  # says what to undo


def test_correct_moves_to_the_right_album_and_keeps_the_label(filed, settings: Settings) -> None:
    config, ids = filed
    assert _cli(config, "correct", str(ids["c.jpg"]), "mountain") == 0
    assert (settings.library / "mountain" / "c.jpg").exists()
    with sqlite3.connect(settings.database) as db:
        row = db.execute(
            "SELECT action, human_label, label, ref_id FROM decisions ORDER BY id DESC"
        ).fetchone()
    assert row == ("corrected", "mountain", "glacier", ids["c.jpg"])
    # Undoing the correction's row sends the photo back to the inbox it came from.
    with sqlite3.connect(settings.database) as db:
        (corrected_id,) = db.execute("SELECT max(id) FROM decisions").fetchone()
    assert _cli(config, "undo", str(ids["c.jpg"])) == ExitCode.REFUSED  # superseded by the correction
    assert _cli(config, "undo", str(corrected_id)) == 0
    assert (settings.inbox / "c.jpg").exists()


def test_stats_counts_albums_and_rates(filed, capsys) -> None:
    config, ids = filed
    assert _cli(config, "undo", str(ids["a.jpg"])) == 0
    capsys.readouterr()
    assert _cli(config, "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["filed"] == 3 and stats["undone"] == 1
    assert set(stats["albums"]) == {"sea", "forest", "glacier"}
    assert stats["undo_rate"] == pytest.approx(1 / 3, abs=1e-3)


def test_doctor_reports_then_mends_without_deleting(filed, settings: Settings, capsys) -> None:
    config, ids = filed
    moved_by_hand = settings.library / "favourites" / "a.jpg"
    moved_by_hand.parent.mkdir()
    os.rename(settings.library / "sea" / "a.jpg", moved_by_hand)
    (settings.library / "forest" / "b.jpg").unlink()
    stranger = write_photo(settings.library / "sea" / "from-camera.jpg", "sea")
    partial = settings.library / "sea" / ".x.jpg.cened-part"
    partial.write_bytes(b"half")
    assert _cli(config, "doctor") == ExitCode.REFUSED
    out = capsys.readouterr().out
    assert "missing" in out and "not in the log" in out and "stray partial" in out
    assert _cli(config, "doctor", "--fix") == 0
    assert moved_by_hand.exists() and stranger.exists()
    assert (settings.quarantine_dir / "x.jpg.partial").read_bytes() == b"half"
    capsys.readouterr()
    assert _cli(config, "doctor") == 0
    assert "all consistent" in capsys.readouterr().out
    # Moved by hand into another album: a correction, as the daemon records one it sees
    # (cened.library); it can still be undone from where it is now.
    with sqlite3.connect(settings.database) as db:
        corrected, label = db.execute(
            "SELECT id, human_label FROM decisions WHERE action = 'corrected'"
        ).fetchone()
    assert label == "favourites"
    assert _cli(config, "undo", str(corrected)) == 0
    assert (settings.inbox / "a.jpg").exists() and not moved_by_hand.exists()
    assert _cli(config, "undo", str(ids["b.jpg"])) == ExitCode.REFUSED  # recorded missing


def test_foreign_or_corrupt_database_is_refused_untouched(settings: Settings, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    settings.database.write_bytes(b"this is not sqlite" * 100)
    digest = hashlib.sha256(settings.database.read_bytes()).hexdigest()
    assert _cli(config, "history") == ExitCode.DATABASE
    assert "database problem" in capsys.readouterr().err
    assert hashlib.sha256(settings.database.read_bytes()).hexdigest() == digest
    settings.database.unlink()
    with sqlite3.connect(settings.database) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    assert _cli(config, "undo", "--last", "1") == ExitCode.DATABASE
    assert "not a cened database" in capsys.readouterr().err


def test_history_reads_while_a_writer_holds_the_database(settings: Settings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    writer = Journal(settings.database)
    writer.conn.execute("BEGIN IMMEDIATE")
    try:
        assert _cli(config, "history", "--json") == 0  # WAL: readers never wait for the writer
    finally:
        writer.conn.execute("ROLLBACK")
        writer.close()


def test_journal_settings_are_durable(settings: Settings) -> None:
    with Journal(settings.database) as journal:
        assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert journal.conn.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_a_version_1_log_is_upgraded_in_place_and_keeps_its_rows(settings: Settings) -> None:
    """A log written before ``pixel_source`` existed opens, gains the column, and loses nothing."""
    from cened import journal as journal_module

    settings.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.database) as old:
        old.executescript(journal_module._MIGRATIONS[1])
        old.execute(f"PRAGMA application_id = {journal_module.APPLICATION_ID}")
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO decisions (time, action, source, destination, label) "
            "VALUES ('2026-11-01T00:00:00.000+00:00', 'moved', '/in/a.jpg', '/lib/sea/a.jpg', 'sea')"
        )
    old.close()
    with Journal(settings.database) as journal:
        assert journal.conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION
        (row,) = journal.history()
        assert (row.label, row.destination, row.pixel_source) == ("sea", Path("/lib/sea/a.jpg"), None)
        (new,) = journal.add([Entry(action="moved", source=Path("/in/b.jpg"), pixel_source="exif-preview")])
        assert journal.get(new.id or 0) == new


def test_classify_prints_labels_and_moves_nothing(settings: Settings, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    folder = tmp_path / "old-photos"
    write_photo(folder / "1.jpg", "forest")
    write_photo(folder / "deeper" / "2.png", "street", fmt="PNG")
    (folder / "3.jpg").write_text("not an image")
    assert _cli(config, "classify", str(folder), "--json") == ExitCode.REFUSED  # one file was unusable
    rows = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["1.jpg"]["label"] == "forest" and rows["2.png"]["album"] == "street"
    assert rows["3.jpg"]["error"] == "not-an-image"
    # The dry run is the real filing code, simulating: the same destinations, nothing written.
    assert Path(rows["1.jpg"]["destination"]) == settings.library / "forest" / "1.jpg"
    assert rows["1.jpg"]["action"] == "moved" and rows["3.jpg"]["action"] == "quarantined"
    assert len(list(folder.rglob("*.*"))) == 3 and not settings.database.exists()


def test_classify_apply_files_like_the_daemon(settings: Settings, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    photo = write_photo(tmp_path / "elsewhere" / "p.jpg", "sea")
    assert _cli(config, "classify", str(photo), "--apply", "--json") == 0
    (row,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert row["action"] == "moved" and Path(row["destination"]) == settings.library / "sea" / "p.jpg"
    assert not photo.exists()
    assert _cli(config, "undo", str(row["id"])) == 0
    assert photo.exists()


def test_classify_decodes_one_batch_ahead_in_order(settings: Settings, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cened.pipeline import prepared_batches

    files = [write_photo(tmp_path / "many" / f"{i:02d}.jpg", "sea", seed=i) for i in range(7)]
    small = settings.model_copy(update={"batch_size": 3})

    class Counting(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            Counting.submitted += 1
            return super().submit(*args, **kwargs)

    seen = []
    with Counting(2) as pool:
        for batch in prepared_batches(files, small, (32, 32), pool):
            # This batch and the next are read; nothing further, so memory stays bounded.
            assert Counting.submitted == min(len(files), 3 * (len(seen) + 2))
            assert all(p.pixels is not None and p.pixels.shape == (32, 32, 3) for p in batch)
            seen.append([p.path for p in batch])
        assert list(prepared_batches([], small, (32, 32), pool)) == []
    assert [len(b) for b in seen] == [3, 3, 1] and [path for b in seen for path in b] == files


def test_corrections_are_exported_as_training_data(filed, settings: Settings, tmp_path: Path, capsys) -> None:
    config, ids = filed
    assert _cli(config, "correct", str(ids["c.jpg"]), "mountain") == 0
    out = tmp_path / "my-labels"
    assert _cli(config, "corrections", "--export", str(out)) == 0
    assert "glacier -> mountain" in capsys.readouterr().out
    exported = out / "mountain" / "c.jpg"
    assert exported.read_bytes() == (settings.library / "mountain" / "c.jpg").read_bytes()
    assert [p.relative_to(out) for p in out.rglob("*.jpg")] == [Path("mountain/c.jpg")]


@pytest.mark.slow
def test_doctor_fix_refuses_beside_a_running_daemon(settings: Settings, tmp_path: Path) -> None:
    """Mending resolves intents and moves files; beside a live daemon it would race it for them."""
    from daemon_helpers import RunningDaemon, run_cli

    config = write_config(tmp_path / "cened.toml", settings)
    with RunningDaemon(settings):
        refused = run_cli("doctor", "--fix", config=config)
        assert refused.returncode == ExitCode.REFUSED
        assert "in use by another cened daemon" in refused.stderr and "without --fix" in refused.stderr
        assert run_cli("doctor", config=config).returncode == 0  # looking is fine
    assert run_cli("doctor", "--fix", config=config).returncode == 0

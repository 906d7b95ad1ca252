"""Duplicates: a photo whose content is in the library already is not filed a second time."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import write_config, write_photo
from daemon_helpers import RunningDaemon, files_under, wait_until

from cened.cli import main
from cened.config import Duplicates, Settings, load_settings
from cened.errors import ConfigError
from cened.journal import Action, State
from cened.pipeline import Fate
from cened.undoing import carry_out, plan_undo, undoable


def _copy(photo: Path, name: str) -> Path:
    return Path(shutil.copy2(photo, photo.with_name(name)))


def test_a_photo_already_filed_goes_to_duplicates_naming_the_original(settings: Settings, filing) -> None:
    file, journal = filing
    photo = write_photo(settings.inbox / "beach.jpg", "sea", seed=1)
    copy = _copy(photo, "beach (1).jpg")
    (first,) = file(photo)
    assert first.fate == Fate.MOVED
    (dup,) = file(copy)
    assert dup.fate == Fate.DUPLICATE
    assert dup.entry.destination == settings.library / "_duplicates" / "beach (1).jpg"
    assert dup.entry.destination.read_bytes() == first.entry.destination.read_bytes()
    assert not copy.exists()
    row = journal.get(dup.entry.id)
    assert (row.action, row.state, row.ref_id) == (Action.DUPLICATE, State.DONE, first.entry.id)
    assert row.reason == f"duplicate of #{first.entry.id}: sea/beach.jpg"
    assert row.label == "sea" and row.album is None  # what the model said, filed apart
    stats = journal.stats()
    assert stats.albums["duplicate"].files == 1 and stats.albums["sea"].files == 1 and stats.filed == 2

    # The duplicate's row names the original's, and supersedes nothing: both can be undone.
    assert {r.id for r in undoable(journal)} == {first.entry.id, dup.entry.id}
    (done,) = carry_out(journal, plan_undo(journal, [dup.entry.id]), Action.UNDONE)
    assert done.state == State.DONE and copy.is_file() and not dup.entry.destination.exists()
    # Put back by undo, it stays in the inbox, as any photo does.
    (again,) = file(copy)
    assert again.fate == Fate.SKIPPED and again.reason == "restored-by-undo" and copy.is_file()


def test_two_copies_in_one_batch_the_second_waits_for_the_first(settings: Settings, filing) -> None:
    file, _ = filing
    photo = write_photo(settings.inbox / "a.jpg", "forest", seed=2)
    copy = _copy(photo, "b.jpg")
    first, second = sorted(file(photo, copy), key=lambda o: o.path.name)
    assert first.fate == Fate.MOVED
    assert second.fate == Fate.RETRY and second.twin and second.entry is None and copy.is_file()
    (later,) = file(copy)
    assert later.fate == Fate.DUPLICATE and later.entry.ref_id == first.entry.id


def test_an_original_gone_moved_or_changed_is_no_reason_to_set_a_photo_apart(
    settings: Settings, filing
) -> None:
    file, journal = filing
    photo = write_photo(settings.inbox / "a.jpg", "glacier", seed=3)
    data = photo.read_bytes()
    (first,) = file(photo)
    # Undone: the first is back in the inbox, not in the library.
    carry_out(journal, plan_undo(journal, [first.entry.id]), Action.UNDONE)
    photo.rename(settings.inbox / "renamed.jpg")  # renamed, so it is filed again
    (refiled,) = file(settings.inbox / "renamed.jpg")
    assert refiled.fate == Fate.MOVED
    # Deleted by hand from the library.
    refiled.entry.destination.unlink()
    (settings.inbox / "c.jpg").write_bytes(data)
    (third,) = file(settings.inbox / "c.jpg")
    assert third.fate == Fate.MOVED
    # Changed in place (another size): no longer the same photo.
    third.entry.destination.write_bytes(data + b"edited")
    (settings.inbox / "d.jpg").write_bytes(data)
    (fourth,) = file(settings.inbox / "d.jpg")
    assert fourth.fate == Fate.MOVED and fourth.entry.destination.name == "d.jpg"


def test_keep_files_a_duplicate_like_any_photo(settings: Settings, filing) -> None:
    file, _ = filing
    photo = write_photo(settings.inbox / "a.jpg", "sea", seed=4)
    copy = _copy(photo, "b.jpg")
    outcomes = file(photo, copy, duplicates="keep")
    assert [o.fate for o in outcomes] == [Fate.MOVED, Fate.MOVED]
    assert sorted(p.name for p in files_under(settings.library / "sea")) == ["a.jpg", "b.jpg"]


def test_skip_leaves_a_duplicate_in_the_inbox_noted_once(settings: Settings, filing) -> None:
    file, journal = filing
    photo = write_photo(settings.inbox / "a.jpg", "sea", seed=5)
    copy = _copy(photo, "b.jpg")
    (first,) = file(photo, duplicates="skip")
    for _ in range(2):
        (skipped,) = file(copy, duplicates="skip")
        assert skipped.fate == Fate.SKIPPED and skipped.keep is not None and copy.is_file()
    rows = journal.history(file=copy)
    assert [(r.action, r.ref_id) for r in rows] == [(Action.SKIPPED, first.entry.id)]
    assert rows[0].reason == f"duplicate of #{first.entry.id}: sea/a.jpg"
    assert not (settings.library / "_duplicates").exists()


def test_a_dry_run_reports_a_copy_of_a_photo_in_the_same_run(
    settings: Settings, tmp_path: Path, capsys
) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    folder = tmp_path / "old"
    photo = write_photo(folder / "1.jpg", "forest", seed=6)
    _copy(photo, "2.jpg")
    assert main(["--config", str(config), "classify", str(folder), "--json"]) == 0
    rows = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["1.jpg"]["action"] == "moved" and rows["2.jpg"]["action"] == "duplicate"
    assert rows["2.jpg"]["reason"] == f"same content as {photo}"
    assert Path(rows["2.jpg"]["destination"]) == settings.library / "_duplicates" / "2.jpg"
    # Applied, the second copy waits for the first and is then set apart.
    assert main(["--config", str(config), "classify", str(folder), "--apply", "--json"]) == 0
    rows = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert [rows[n]["action"] for n in ("1.jpg", "2.jpg")] == ["moved", "duplicate"]
    assert rows["2.jpg"]["reason"] == f"duplicate of #{rows['1.jpg']['id']}: forest/1.jpg"


def test_duplicates_setting_is_a_closed_set(tmp_path: Path) -> None:
    assert load_settings(None, duplicates="skip").duplicates is Duplicates.SKIP
    cfg = tmp_path / "c.toml"
    cfg.write_text('duplicates = "delete"\n')
    with pytest.raises(ConfigError, match="duplicates"):
        load_settings(cfg)


@pytest.mark.slow
def test_the_daemon_sets_copies_apart_and_keeps_one_in_the_album(settings: Settings, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    photo = write_photo(staging / "p.jpg", "street", seed=7)
    with RunningDaemon(settings) as daemon:
        for name in ("p.jpg", "p copy.jpg", "p copy 2.jpg"):  # likely in one batch
            shutil.copy2(photo, settings.inbox / name)
        assert wait_until(lambda: daemon.filed >= 3, timeout=30)
    assert len(files_under(settings.library / "street")) == 1
    assert len(files_under(settings.library / "_duplicates")) == 2 and not files_under(settings.inbox)
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT id, action, ref_id FROM decisions WHERE state = 'done'").fetchall()
    (original,) = [i for i, a, _ in rows if a == "moved"]
    assert sorted((a, r) for _, a, r in rows) == [("duplicate", original)] * 2 + [("moved", None)]

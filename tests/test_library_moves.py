"""Photos moved or removed by hand in the library: corrections, relocations and removals in the log.

The unit tests apply cened.library to a real journal and real files; the
daemon tests move files with ``os.rename`` under a running daemon (its own
watchdog observer on the library) and poll the journal for the rows.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from conftest import write_config, write_photo
from daemon_helpers import RunningDaemon, run_cli, wait_until

from cened import doctor, library
from cened.config import Settings
from cened.daemon import Daemon
from cened.journal import Action, Entry, Journal, State
from cened.library import Change, Changes, Places
from cened.undoing import carry_out, companions_of, plan_correct, plan_undo


def clean(journal: Journal, settings: Settings) -> bool:
    return doctor.examine(journal, settings.library, settings.quarantine_dir).clean


def file_one(file, settings: Settings, cls: str, name: str, seed: int = 0) -> Entry:
    (o,) = [o for o in file(write_photo(settings.inbox / name, cls, seed=seed)) if o.path.name == name]
    return o.entry


def test_changes_fold_into_where_each_thing_started_and_ended(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    changes = Changes()
    changes.moved(a, b)
    changes.moved(b, c)
    assert changes.take() == [Change(a, c)]
    changes.moved(a, b)
    changes.gone(b)
    assert changes.take() == [Change(a, None)]
    changes.moved(a, b)
    changes.moved(b, a)
    assert changes.take() == [] and not changes
    # A folder renamed, then a file in it moved on: the file's own start is in the old folder.
    old, new, other = tmp_path / "sea", tmp_path / "ocean", tmp_path / "forest"
    changes.moved(old, new, folder=True)
    changes.moved(new / "x.jpg", other / "x.jpg")
    assert changes.take() == [Change(old, new, True), Change(old / "x.jpg", other / "x.jpg")]


def test_a_photo_moved_to_another_album_is_a_correction_and_undo_follows_it(
    settings: Settings, filing
) -> None:
    file, journal = filing
    filed = file_one(file, settings, "sea", "a.jpg")
    moved = settings.library / "forest" / "beach.jpg"
    moved.parent.mkdir(parents=True, exist_ok=True)
    os.rename(filed.destination, moved)
    done = library.record(journal, Places.of(settings), [Change(filed.destination, moved)])
    (row,) = done.entries
    assert (row.action, row.human_label, row.album, row.ref_id) == (
        Action.CORRECTED,
        "forest",
        "forest",
        filed.id,
    )
    assert (row.source, row.destination, row.reason) == (filed.destination, moved, library.MOVED_BY_HAND)
    assert (row.sha256, row.size, row.label, row.probabilities) == (
        filed.sha256,
        filed.size,
        filed.label,
        journal.get(filed.id).probabilities,
    )
    assert clean(journal, settings)
    # Looked at again, nothing more is recorded: the journal now accounts for it.
    assert library.record(journal, Places.of(settings), [Change(filed.destination, moved)]).entries == []
    (back,) = carry_out(journal, plan_undo(journal, [row.id]), Action.UNDONE)
    assert back.destination == settings.inbox / "a.jpg" and back.destination.is_file()


@pytest.mark.parametrize(
    ("where", "action", "album"),
    [
        ("sea/trip/a.jpg", Action.RELOCATED, "sea"),  # a folder of its own inside the album
        ("review/a.jpg", Action.RELOCATED, "review"),  # set aside: no label
        ("_duplicates/a.jpg", Action.RELOCATED, None),
        ("_quarantine/a.jpg", Action.RELOCATED, None),
        (".Trash-1000/files/a.jpg", Action.RELOCATED, None),  # a hidden folder is no album
        ("other/a.jpg", Action.CORRECTED, "other"),
    ],
)
def test_where_a_photo_moved_decides_the_row(
    settings: Settings, filing, where: str, action: Action, album: str | None
) -> None:
    file, journal = filing
    filed = file_one(file, settings, "sea", "a.jpg")
    moved = settings.library / where
    moved.parent.mkdir(parents=True, exist_ok=True)
    os.rename(filed.destination, moved)
    (row,) = library.record(journal, Places.of(settings), [Change(filed.destination, moved)]).entries
    assert (row.action, row.album, row.destination) == (action, album, moved)
    assert row.human_label == (album if action == Action.CORRECTED else None)
    assert clean(journal, settings)


def test_a_photo_taken_out_is_removed_and_one_not_seen_going_is_missing(
    settings: Settings, filing, tmp_path: Path
) -> None:
    file, journal = filing
    out = file_one(file, settings, "sea", "a.jpg")
    lost = file_one(file, settings, "forest", "b.jpg")
    shutil.move(out.destination, tmp_path / "a.jpg")
    (row,) = library.record(journal, Places.of(settings), [Change(out.destination, None)]).entries
    assert (row.action, row.ref_id, row.destination) == (Action.REMOVED, out.id, None)
    lost.destination.unlink()
    (row,) = library.reconcile(journal, Places.of(settings)).entries
    assert (row.action, row.ref_id, row.reason) == (Action.MISSING, lost.id, library.NOT_FOUND)
    assert clean(journal, settings)
    assert library.reconcile(journal, Places.of(settings)).entries == []


def test_a_deletion_is_a_move_when_the_file_is_elsewhere_in_the_library(settings: Settings, filing) -> None:
    # A move into a folder made a moment before, not watched yet, reads as a deletion.
    file, journal = filing
    filed = file_one(file, settings, "sea", "a.jpg")
    other = file_one(file, settings, "sea", "b.jpg", seed=1)  # same size, other content
    moved = settings.library / "mountain" / "a.jpg"
    moved.parent.mkdir()
    os.rename(filed.destination, moved)
    (row,) = library.record(journal, Places.of(settings), [Change(filed.destination, None)]).entries
    assert (row.action, row.destination, row.human_label) == (Action.CORRECTED, moved, "mountain")
    assert other.destination.is_file() and clean(journal, settings)


def test_cened_own_moves_are_not_recorded_again(settings: Settings, filing) -> None:
    file, journal = filing
    places = Places.of(settings)
    filed = file_one(file, settings, "sea", "a.jpg")
    (corrected,) = carry_out(
        journal, plan_correct(journal, settings, filed.id, "forest"), Action.CORRECTED, "forest"
    )
    assert library.record(journal, places, [Change(filed.destination, None)]).entries == []
    # A correction under way (its intent written, its move not yet done): looked at again later.
    second = file_one(file, settings, "glacier", "b.jpg", seed=3)
    under_way = Entry(
        Action.CORRECTED, second.destination, settings.library / "x" / "b.jpg", ref_id=second.id
    )
    journal.add([replace(under_way, state=State.PENDING)])
    os.rename(second.destination, settings.library / "b.jpg")
    done = library.record(journal, places, [Change(second.destination, settings.library / "b.jpg")])
    assert done.entries == [] and done.waiting == [Change(second.destination, settings.library / "b.jpg")]
    # A file the daemon renames into place, or copies in, is no row's current place.
    assert (
        library.record(journal, places, [Change(settings.library / "sea" / ".t.cened-part", None)]).entries
        == []
    )
    assert corrected.destination.is_file()


def test_a_companion_left_behind_follows_its_photo_and_one_moved_with_it_is_recorded(
    settings: Settings, filing
) -> None:
    file, journal = filing
    places = Places.of(settings)
    sidecar = settings.inbox / "IMG_1.xmp"
    sidecar.write_bytes(b"<x:xmpmeta/>")
    os.utime(sidecar, (1e9, 1e9))  # settled long ago: it goes with its photo
    photo = file_one(file, settings, "sea", "IMG_1.jpg")
    assert (settings.library / "sea" / "IMG_1.xmp").is_file()
    album = settings.library / "forest"
    album.mkdir()
    os.rename(photo.destination, album / "beach.jpg")  # renamed too: its sidecar takes its new stem
    done = library.record(journal, places, [Change(photo.destination, album / "beach.jpg")])
    (row,) = done.entries
    (follower,) = done.followed
    assert (follower.action, follower.group_id, follower.destination) == (
        Action.CORRECTED,
        row.id,
        album / "beach.xmp",
    )
    assert (album / "beach.xmp").read_bytes() == b"<x:xmpmeta/>"
    assert [c.id for c in companions_of(journal, journal.get(row.id))] == [follower.id]
    assert clean(journal, settings)
    # Both moved by hand: both recorded, the sidecar's row naming the photo's.
    street = settings.library / "street"
    street.mkdir()
    for name in ("beach.jpg", "beach.xmp"):
        os.rename(album / name, street / name)
    changes = [Change(album / n, street / n) for n in ("beach.xmp", "beach.jpg")]
    done = library.record(journal, places, changes)
    photo_row, xmp_row = done.entries
    assert photo_row.destination == street / "beach.jpg" and xmp_row.group_id == photo_row.id
    assert done.followed == [] and clean(journal, settings)
    # A sidecar changed since it was filed is left where it is, and stays recorded there.
    (street / "beach.xmp").write_bytes(b"<x:xmpmeta edited='yes'/>")
    os.rename(street / "beach.jpg", album / "beach.jpg")
    done = library.record(journal, places, [Change(street / "beach.jpg", album / "beach.jpg")])
    assert len(done.entries) == 1 and done.followed == [] and (street / "beach.xmp").is_file()


def test_a_folder_renamed_moves_every_photo_in_it(settings: Settings, filing) -> None:
    file, journal = filing
    filed = [file_one(file, settings, "sea", f"{i}.jpg", seed=i) for i in range(3)]
    os.rename(settings.library / "sea", settings.library / "ocean")
    done = library.record(
        journal, Places.of(settings), [Change(settings.library / "sea", settings.library / "ocean", True)]
    )
    assert sorted((r.ref_id, r.action, r.human_label) for r in done.entries) == [
        (f.id, Action.CORRECTED, "ocean") for f in filed
    ]
    assert clean(journal, settings)


def test_doctor_records_what_the_daemon_would(settings: Settings, filing) -> None:
    file, journal = filing
    filed = file_one(file, settings, "sea", "a.jpg")
    moved = settings.library / "forest" / "a.jpg"
    moved.parent.mkdir()
    os.rename(filed.destination, moved)
    report = doctor.examine(journal, settings.library, settings.quarantine_dir)
    doctor.repair(journal, report, settings.library, settings.quarantine_dir, places=Places.of(settings))
    row = journal.history()[-1]
    assert (row.action, row.human_label, row.destination, row.reason) == (
        Action.CORRECTED,
        "forest",
        moved,
        library.FOUND_BY_HASH,
    )
    assert clean(journal, settings)


def test_doctor_has_a_companion_left_behind_follow_its_photo(settings: Settings, filing) -> None:
    file, journal = filing
    sidecar = settings.inbox / "IMG_2.xmp"
    sidecar.write_bytes(b"<x:xmpmeta/>")
    os.utime(sidecar, (1e9, 1e9))  # settled long ago: it goes with its photo
    photo = file_one(file, settings, "sea", "IMG_2.jpg")
    moved = settings.library / "forest" / "IMG_2.jpg"
    moved.parent.mkdir()
    os.rename(photo.destination, moved)  # while no daemon watched
    report = doctor.examine(journal, settings.library, settings.quarantine_dir)
    done = doctor.repair(
        journal, report, settings.library, settings.quarantine_dir, places=Places.of(settings)
    )
    assert (settings.library / "forest" / "IMG_2.xmp").read_bytes() == b"<x:xmpmeta/>"
    assert not (settings.library / "sea" / "IMG_2.xmp").exists()
    assert any("IMG_2.xmp" in line and "with its photo" in line for line in done)
    row = journal.last_at(moved)
    assert row is not None and [c.destination for c in companions_of(journal, row)] == [
        settings.library / "forest" / "IMG_2.xmp"
    ]
    assert clean(journal, settings)


# -- the daemon ----------------------------------------------------------------


def rows(settings: Settings, *actions: Action) -> list[Entry]:
    with Journal(settings.database) as journal:
        return journal.history(actions=list(actions) or None)


def wait_row(
    settings: Settings, action: Action, destination: Path | None = None, timeout: float = 20
) -> Entry:
    def found() -> list[Entry]:
        return [r for r in rows(settings, action) if destination is None or r.destination == destination]

    assert wait_until(lambda: bool(found()), timeout=timeout), f"no {action} row for {destination}"
    return found()[-1]


class Watching(RunningDaemon):
    """The daemon in a thread, once its library thread watches and has compared the library at start."""

    def __enter__(self) -> Daemon:
        daemon = super().__enter__()
        assert daemon.library_watched.wait(timeout=30)
        return daemon


def filed_at(settings: Settings, daemon: Daemon, count: int, path: Path) -> None:
    assert wait_until(lambda: daemon.filed >= count and path.is_file(), timeout=30), path


def marker(settings: Settings, daemon: Daemon, n: int) -> Entry:
    """A photo filed and moved by hand: once its row is in, every change made before it was handled."""
    write_photo(settings.inbox / "marker.jpg", "glacier", seed=77)
    filed_at(settings, daemon, n, settings.library / "glacier" / "marker.jpg")
    target = settings.library / "mountain" / "marker.jpg"
    target.parent.mkdir(exist_ok=True)
    os.rename(settings.library / "glacier" / "marker.jpg", target)
    return wait_row(settings, Action.CORRECTED, target)


@pytest.mark.slow
def test_the_daemon_records_a_move_by_hand_and_history_doctor_and_undo_agree(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the history table, unfolded
    config = write_config(tmp_path / "cened.toml", settings)
    with Watching(settings) as daemon:
        write_photo(settings.inbox / "a.jpg", "sea")
        filed_at(settings, daemon, 1, settings.library / "sea" / "a.jpg")
        (settings.library / "forest").mkdir()
        os.rename(settings.library / "sea" / "a.jpg", settings.library / "forest" / "a.jpg")
        row = wait_row(settings, Action.CORRECTED)
        assert (row.human_label, row.destination) == ("forest", settings.library / "forest" / "a.jpg")
        history = [
            json.loads(line) for line in run_cli("history", "--json", config=config).stdout.splitlines()
        ]
        assert [(h["action"], h["human_label"], h["reason"]) for h in history][-1] == (
            "corrected",
            "forest",
            library.MOVED_BY_HAND,
        )
        table = run_cli("history", config=config).stdout
        assert "corrected" in table and "human: forest" in table
        doctor_run = run_cli("doctor", config=config)
        assert doctor_run.returncode == 0 and "all consistent" in doctor_run.stdout
        assert run_cli("undo", str(row.id), config=config).returncode == 0
        assert (settings.inbox / "a.jpg").is_file()
        # Taken out of the library: removed, and doctor agrees.
        write_photo(settings.inbox / "b.jpg", "street", seed=2)
        filed_at(settings, daemon, 2, settings.library / "street" / "b.jpg")
        shutil.move(settings.library / "street" / "b.jpg", tmp_path / "b.jpg")
        removed = wait_row(settings, Action.REMOVED)
        assert removed.source == settings.library / "street" / "b.jpg"
        doctor_run = run_cli("doctor", config=config)
        assert doctor_run.returncode == 0, doctor_run.stdout
    assert [r.action for r in rows(settings, Action.UNDONE)] == [Action.UNDONE]


@pytest.mark.slow
def test_the_daemon_records_a_renamed_album_folder_and_moves_made_while_it_was_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    with Watching(settings) as daemon:
        for i in range(3):
            write_photo(settings.inbox / f"{i}.jpg", "sea", seed=i)
        filed_at(settings, daemon, 3, settings.library / "sea" / "2.jpg")
        os.rename(settings.library / "sea", settings.library / "ocean")
        assert wait_until(lambda: len(rows(settings, Action.CORRECTED)) == 3, timeout=20)
    assert {r.human_label for r in rows(settings, Action.CORRECTED)} == {"ocean"}
    # While it is stopped: one moved to another album, one deleted.
    (settings.library / "forest").mkdir()
    os.rename(settings.library / "ocean" / "0.jpg", settings.library / "forest" / "0.jpg")
    (settings.library / "ocean" / "1.jpg").unlink()
    with Watching(settings):
        row = wait_row(settings, Action.CORRECTED, settings.library / "forest" / "0.jpg")
        assert (row.human_label, row.reason) == ("forest", library.FOUND_BY_HASH)
        missing = wait_row(settings, Action.MISSING)
        assert missing.source == settings.library / "ocean" / "1.jpg"
    with Journal(settings.database) as journal:
        assert clean(journal, settings)


@pytest.mark.slow
def test_a_companion_follows_and_a_correction_by_the_cli_is_recorded_once(
    settings: Settings, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    with Watching(settings) as daemon:
        (settings.inbox / "IMG_1.xmp").write_bytes(b"<x:xmpmeta/>")
        write_photo(settings.inbox / "IMG_1.jpg", "sea")
        filed_at(settings, daemon, 1, settings.library / "sea" / "IMG_1.xmp")
        (settings.library / "forest").mkdir()
        os.rename(settings.library / "sea" / "IMG_1.jpg", settings.library / "forest" / "IMG_1.jpg")
        photo = wait_row(settings, Action.CORRECTED, settings.library / "forest" / "IMG_1.jpg")
        xmp = wait_row(settings, Action.CORRECTED, settings.library / "forest" / "IMG_1.xmp")
        assert xmp.group_id == photo.id and not (settings.library / "sea" / "IMG_1.xmp").exists()
        # The command line corrects it while the daemon watches: one row, no echo.
        assert run_cli("correct", str(photo.id), "street", config=config).returncode == 0
        assert (settings.library / "street" / "IMG_1.xmp").is_file()
        marker(settings, daemon, 2)
    by_hand = [r for r in rows(settings) if r.reason == library.MOVED_BY_HAND]
    assert [r.destination.name for r in by_hand] == ["IMG_1.jpg", "marker.jpg"]
    photo_rows = [r.destination for r in rows(settings, Action.CORRECTED) if r.destination.suffix == ".jpg"]
    assert [p.parent.name for p in photo_rows] == ["forest", "street", "mountain"]
    assert [r.human_label for r in rows(settings, Action.CORRECTED) if r.human_label == "street"] == [
        "street"
    ]
    assert rows(settings, Action.REMOVED, Action.MISSING, Action.RELOCATED) == []
    with Journal(settings.database) as journal:
        assert clean(journal, settings)


@pytest.mark.slow
def test_filing_makes_no_corrections_or_removals(settings: Settings, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    classes = ("sea", "forest", "street")
    with Watching(settings) as daemon:
        for i in range(30):
            os.rename(
                write_photo(staging / f"p{i}.jpg", classes[i % 3], seed=i), settings.inbox / f"p{i}.jpg"
            )
        assert wait_until(lambda: daemon.filed >= 30, timeout=60)
        marker(settings, daemon, 31)
    assert [r.destination.name for r in rows(settings, Action.CORRECTED)] == ["marker.jpg"]
    assert rows(settings, Action.REMOVED, Action.MISSING, Action.RELOCATED) == []


@pytest.mark.slow
def test_an_undo_under_a_watching_daemon_removes_its_empty_date_folder_and_records_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    dated = settings.model_copy(update={"layout": "{album}/{year}/{month}"})
    config = write_config(tmp_path / "cened.toml", settings, layout=dated.layout)
    july = datetime(2019, 7, 14, 12).timestamp()

    def drop(name: str, seed: int) -> None:
        staged = write_photo(tmp_path / "staging" / name, "sea", seed=seed)
        os.utime(staged, (july, july))  # no EXIF date: the file's own date files it
        os.rename(staged, settings.inbox / name)

    folder = settings.library / "sea" / "2019" / "07"
    with Watching(dated) as daemon:
        drop("a.jpg", 0)
        filed_at(dated, daemon, 1, folder / "a.jpg")
        (filed,) = rows(dated, Action.MOVED)
        assert run_cli("undo", str(filed.id), config=config).returncode == 0
        assert (settings.inbox / "a.jpg").is_file() and not (settings.library / "sea" / "2019").exists()
        assert (settings.library / "sea").is_dir()
        # Moved by hand after the undo: once its correction is in, the folder's removal was handled.
        drop("b.jpg", 1)
        filed_at(dated, daemon, 2, folder / "b.jpg")
        (settings.library / "forest").mkdir()
        os.rename(folder / "b.jpg", settings.library / "forest" / "b.jpg")
        wait_row(dated, Action.CORRECTED, settings.library / "forest" / "b.jpg")
    assert rows(settings, Action.REMOVED, Action.MISSING, Action.RELOCATED) == []
    assert (settings.inbox / "a.jpg").is_file()

"""Companions: sidecars, Live Photo videos and RAW files travel with their photo, and come back with it."""

from __future__ import annotations

import io
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import picture
from daemon_helpers import RunningDaemon, files_under, wait_until
from dng import dng

from cened import doctor
from cened.config import Settings
from cened.journal import Action, Journal, State
from cened.pipeline import Fate, FileOutcome
from cened.undoing import UndoError, carry_out, plan_correct, plan_undo


def aged(path: Path, seconds: float = 60) -> Path:
    """As if it had been copied in a while ago: settled, and past any wait for a partner."""
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return aged(path)


def heic(path: Path, cls: str, seed: int = 0) -> Path:
    picture(cls, seed=seed).save(path, "HEIF")
    return aged(path)


def jpeg(cls: str, seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    picture(cls, size, seed=seed).save(out, "JPEG")
    return out.getvalue()


def by_name(outcomes: list[FileOutcome]) -> dict[str, FileOutcome]:
    return {o.path.name: o for o in outcomes}


def test_a_live_photo_and_its_sidecars_are_one_intent_and_one_undo(settings: Settings, filing) -> None:
    file, journal = filing
    inbox = settings.inbox
    photo = heic(inbox / "IMG_1.HEIC", "sea")
    others = {
        "IMG_1.MOV": put(inbox / "IMG_1.MOV", os.urandom(3000)),
        "IMG_1.xmp": put(inbox / "IMG_1.xmp", b"<x:xmpmeta/>"),
        "IMG_1.AAE": put(inbox / "IMG_1.AAE", b"<plist/>"),
        "IMG_1.HEIC.json": put(inbox / "IMG_1.HEIC.json", b"{}"),
    }
    stranger = put(inbox / "IMG_10.MOV", b"another video")
    outcomes = by_name(file(photo))
    assert set(outcomes) == {"IMG_1.HEIC", *others}
    lead = outcomes["IMG_1.HEIC"].entry
    assert lead.destination == settings.library / "sea" / "IMG_1.HEIC"
    rows = [journal.get(o.entry.id) for o in outcomes.values()]
    assert {r.destination.name for r in rows} == set(outcomes)
    assert {r.destination.parent for r in rows} == {settings.library / "sea"}
    assert {(r.action, r.state, r.batch_id) for r in rows} == {(Action.MOVED, State.DONE, lead.batch_id)}
    assert sorted(r.group_id or 0 for r in rows) == [0] + [lead.id] * 4
    assert all(journal.get(o.entry.id).sha256 == o.entry.sha256 for o in outcomes.values())
    assert stranger.is_file() and sorted(p.name for p in files_under(inbox)) == ["IMG_10.MOV"]
    stats = journal.stats()  # photos, not files
    assert stats.filed == 1 and stats.albums["sea"].files == 1

    undone = carry_out(journal, plan_undo(journal, [lead.id]), Action.UNDONE)
    assert all(e.state == State.DONE for e in undone) and len(undone) == 5
    assert photo.is_file() and all(p.is_file() for p in others.values())
    assert not files_under(settings.library)
    # Put back, they all stay in the inbox.
    again = by_name(file(photo, *others.values()))
    assert {o.fate for o in again.values()} == {Fate.SKIPPED} and photo.is_file()


def test_takeout_supplemental_metadata_travels_with_its_photo(settings: Settings, filing) -> None:
    """Newer Google Takeout names: ``NAME.EXT.supplemental-metadata.json``, cut short in long names."""
    file, journal = filing
    inbox = settings.inbox
    long_name = "PXL_20240612_181527123.PORTRAIT"
    photos = [heic(inbox / "IMG_4.HEIC", "sea"), heic(inbox / f"{long_name}.HEIC", "sea", seed=1)]
    full = put(inbox / "IMG_4.HEIC.supplemental-metadata.json", b"{}")
    cut = put(inbox / f"{long_name}.HEIC.supplemental-met.json", b"{}")
    outcomes = by_name(file(*photos))
    assert set(outcomes) == {p.name for p in photos} | {full.name, cut.name}
    lead = outcomes["IMG_4.HEIC"].entry
    assert journal.get(outcomes[full.name].entry.id).group_id == lead.id
    assert not files_under(inbox)
    # One arriving after its photo follows it, renamed with it when the name was taken.
    late = put(inbox / "IMG_4.heic.supplemental-metadata.json", b'{"late": 1}')
    (follows,) = file(late)
    assert follows.entry.destination == settings.library / "sea" / late.name


def test_a_group_takes_one_free_stem_in_the_album(settings: Settings, filing) -> None:
    file, _ = filing
    put(
        settings.library / "sea" / "IMG_2.MOV", b"an older video"
    )  # the photo's name is free, the video's not
    photo = heic(settings.inbox / "IMG_2.HEIC", "sea")
    video = put(settings.inbox / "IMG_2.MOV", b"this one's video")
    outcomes = by_name(file(video, photo))  # the video in the batch too, before its photo
    assert outcomes["IMG_2.HEIC"].entry.destination.name == "IMG_2-1.HEIC"
    assert outcomes["IMG_2.MOV"].entry.destination.name == "IMG_2-1.MOV"
    assert (settings.library / "sea" / "IMG_2.MOV").read_bytes() == b"an older video"


def test_one_arriving_first_waits_and_one_arriving_later_follows_and_comes_back(
    settings: Settings, filing
) -> None:
    file, journal = filing
    inbox = settings.inbox
    photo = heic(inbox / "IMG_3.HEIC", "sea")
    video = put(inbox / "IMG_3.MOV", b"live")
    (waiting,) = file(video)
    assert waiting.fate == Fate.RETRY and waiting.reason == "waits for its photo" and waiting.waiting
    assert journal.history() == [] and video.is_file()
    outcomes = by_name(file(photo))
    lead = outcomes["IMG_3.HEIC"].entry
    assert outcomes["IMG_3.MOV"].entry.group_id == lead.id and not video.exists()

    sidecar = put(inbox / "IMG_3.xmp", b"<x:xmpmeta/>")  # later, on its own
    (follows,) = file(sidecar)
    assert follows.fate == Fate.MOVED and follows.entry.destination == settings.library / "sea" / "IMG_3.xmp"
    assert journal.get(follows.entry.id).group_id == lead.id and follows.entry.batch_id != lead.batch_id

    moved = carry_out(journal, plan_correct(journal, settings, lead.id, "forest"), Action.CORRECTED, "forest")
    assert sorted(e.destination.name for e in moved) == ["IMG_3.HEIC", "IMG_3.MOV", "IMG_3.xmp"]
    assert {e.destination.parent for e in moved} == {settings.library / "forest"}
    assert [e.human_label for e in moved] == ["forest", None, None]  # one correction, of the photo
    assert {e.group_id for e in moved[1:]} == {moved[0].id}
    # A sidecar later still follows the photo, to where it is now.
    (late,) = file(put(inbox / "IMG_3.AAE", b"<plist/>"))
    assert late.entry.destination == settings.library / "forest" / "IMG_3.AAE"
    assert journal.get(late.entry.id).group_id == moved[0].id

    back = carry_out(journal, plan_undo(journal, [moved[0].id]), Action.UNDONE)
    assert len(back) == 4 and all(e.state == State.DONE for e in back)
    assert sorted(p.name for p in files_under(inbox)) == ["IMG_3.AAE", "IMG_3.HEIC", "IMG_3.MOV", "IMG_3.xmp"]


def test_raw_and_jpeg_are_classified_once_from_the_jpeg(settings: Settings, filing) -> None:
    file, journal = filing
    inbox = settings.inbox
    # The RAW's own preview says forest: it must go where its JPEG goes, unread.
    raw = put(inbox / "DSC_4.NEF", dng(jpeg("forest", size=(320, 240))))
    photo = put(inbox / "DSC_4.JPG", jpeg("sea"))
    sidecar = put(inbox / "DSC_4.NEF.xmp", b"<x:xmpmeta/>")
    outcomes = by_name(file(raw, photo))
    assert {n: o.entry.destination.parent.name for n, o in outcomes.items()} == {
        "DSC_4.NEF": "sea",
        "DSC_4.JPG": "sea",
        "DSC_4.NEF.xmp": "sea",
    }
    row = journal.get(outcomes["DSC_4.NEF"].entry.id)
    assert (row.label, row.pixel_source, row.group_id) == ("sea", None, outcomes["DSC_4.JPG"].entry.id)
    assert not sidecar.exists()

    # The RAW arrives after its JPEG was filed: it follows it all the same.
    (jpg,) = file(put(inbox / "DSC_5.JPG", jpeg("street", seed=5)))
    (late,) = file(put(inbox / "DSC_5.CR2", dng(jpeg("glacier", size=(320, 240)))))
    assert late.entry.destination == settings.library / "street" / "DSC_5.CR2"
    assert journal.get(late.entry.id).group_id == jpg.entry.id
    # A RAW alone is a photo of its own, classified from its preview.
    (alone,) = file(put(inbox / "DSC_6.CR2", dng(jpeg("glacier", seed=6, size=(320, 240)))))
    assert alone.entry.album == "glacier" and alone.entry.group_id is None


def test_a_video_or_sidecar_without_its_photo_waits_then_stays_noted_once(settings: Settings, filing) -> None:
    file, journal = filing
    video = settings.inbox / "clip.mov"
    video.write_bytes(b"a film")
    (young,) = file(video)
    assert young.fate == Fate.RETRY and young.waiting and journal.history() == []
    for _ in range(2):
        (noted,) = file(video, companion_wait_s=0)
        assert noted.fate == Fate.SKIPPED and noted.keep and video.is_file()
    sidecar = put(settings.inbox / "notes.xmp", b"<x:xmpmeta/>")
    (alone,) = file(sidecar, companion_wait_s=0)
    assert alone.fate == Fate.SKIPPED and sidecar.is_file()
    assert [(r.source.name, r.reason) for r in journal.history()] == [
        ("clip.mov", "a video without a photo of its name"),
        ("notes.xmp", "a sidecar without a photo of its name"),
    ]
    (moved,) = file(video, companion_wait_s=0, videos_album="videos")
    assert moved.fate == Fate.MOVED and moved.entry.destination == settings.library / "videos" / "clip.mov"
    assert moved.entry.album == "videos" and moved.entry.label is None


def test_undo_checks_the_companions_and_doctor_records_one_gone(settings: Settings, filing) -> None:
    file, journal = filing
    photo = heic(settings.inbox / "IMG_7.HEIC", "sea")
    put(settings.inbox / "IMG_7.MOV", b"live")
    put(settings.inbox / "IMG_7.xmp", b"<x:xmpmeta/>")
    lead = by_name(file(photo))["IMG_7.HEIC"].entry
    filed_xmp = settings.library / "sea" / "IMG_7.xmp"
    filed_xmp.write_bytes(b"<x:xmpmeta edited='yes'/>")
    with pytest.raises(UndoError, match=r"IMG_7\.xmp has changed"):
        plan_undo(journal, [lead.id])
    filed_xmp.unlink()
    with pytest.raises(UndoError, match="doctor --fix"):
        plan_undo(journal, [lead.id])
    assert photo.exists() is False  # refused: nothing moved
    report = doctor.examine(journal, settings.library, settings.quarantine_dir)
    doctor.repair(journal, report, settings.library, settings.quarantine_dir)
    back = carry_out(journal, plan_undo(journal, [lead.id]), Action.UNDONE)
    assert sorted(e.destination.name for e in back) == ["IMG_7.HEIC", "IMG_7.MOV"]


def test_a_duplicate_takes_its_companions_to_duplicates(settings: Settings, filing) -> None:
    file, _ = filing
    first = heic(settings.inbox / "IMG_8.HEIC", "sea")
    data = first.read_bytes()
    file(first)
    copy = put(settings.inbox / "again" / "IMG_8.HEIC", data)
    put(settings.inbox / "again" / "IMG_8.MOV", b"live")
    outcomes = by_name(file(copy))
    assert {n: (o.fate, o.entry.destination.parent) for n, o in outcomes.items()} == {
        "IMG_8.HEIC": (Fate.DUPLICATE, settings.duplicates_dir),
        "IMG_8.MOV": (Fate.DUPLICATE, settings.duplicates_dir),
    }


def test_a_version_3_log_gains_group_ids(settings: Settings) -> None:
    from cened import journal as journal_module

    settings.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.database) as old:
        for version in (1, 2, 3):
            for statement in journal_module._MIGRATIONS[version].split(";"):
                old.execute(statement)
        old.execute(f"PRAGMA application_id = {journal_module.APPLICATION_ID}")
        old.execute("PRAGMA user_version = 3")
        old.execute(
            "INSERT INTO decisions (time, action, source) VALUES ('2026-11-01', 'moved', '/in/a.jpg')"
        )
    old.close()
    with Journal(settings.database) as journal:
        assert journal.conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION
        (row,) = journal.history()
        assert row.group_id is None


@pytest.mark.slow
def test_the_daemon_files_groups_whatever_order_they_arrive_in(settings: Settings, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    files = {
        "IMG_1.MOV": b"live video",  # before its photo
        "IMG_1.HEIC": None,
        "IMG_1.xmp": b"<x:xmpmeta/>",
        "DSC_2.JPG": jpeg("street", seed=2),
        "DSC_2.CR2": dng(jpeg("forest", size=(320, 240))),  # its own preview says forest
        "lone.mov": b"a film of its own",
    }
    s = settings.model_copy(update={"companion_wait_s": 1.0})
    with RunningDaemon(s):
        for name, data in files.items():
            if data is None:
                picture("sea").save(staging / name, "HEIF")
            else:
                (staging / name).write_bytes(data)
            os.replace(staging / name, s.inbox / name)
            time.sleep(0.2)
        assert wait_until(lambda: [p.name for p in files_under(s.inbox)] == ["lone.mov"], timeout=30)
        assert wait_until(lambda: notes(s.database), timeout=10)
    placed = {p.name: p.parent.name for p in files_under(s.library)}
    assert placed == {
        "IMG_1.MOV": "sea",
        "IMG_1.HEIC": "sea",
        "IMG_1.xmp": "sea",
        "DSC_2.CR2": "street",
        "DSC_2.JPG": "street",
    }
    assert notes(s.database) == [("lone.mov", "a video without a photo of its name")]


def notes(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT source, reason FROM decisions WHERE action = 'skipped'").fetchall()
    return [(Path(p).name, r) for p, r in rows]

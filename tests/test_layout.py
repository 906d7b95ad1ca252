"""Folder layouts: date folders from EXIF or mtime, and history, undo, correct and doctor below them."""

from __future__ import annotations

import io
import os
import re
from datetime import datetime
from pathlib import Path, PurePosixPath

import pytest
from conftest import picture, write_config, write_photo
from PIL import ExifTags, Image

from cened import doctor, layout
from cened.cli import main
from cened.config import Settings, load_settings
from cened.errors import ConfigError
from cened.journal import Action, Journal
from cened.ml.classifying import Classifier
from cened.pipeline import Fate, FileOutcome, Processor, prepare
from cened.undoing import carry_out, plan_correct, plan_undo

DATED = "{album}/{year}/{month}"


@pytest.fixture
def filing(settings: Settings, classifier: Classifier):
    """File paths as one batch with the real pipeline, under ``settings`` with another ``layout``."""
    journal = Journal(settings.database)

    def _file(*paths: Path, template: str = DATED) -> list[FileOutcome]:
        s = settings.model_copy(update={"layout": template})
        processor = Processor(classifier, journal, lambda: s)
        return processor.process([prepare(p, s, classifier.meta.input_size) for p in paths])

    yield _file, journal
    journal.close()


def exif_dated(path: Path, cls: str, when: str, fmt: str = "JPEG", seed: int = 0) -> Path:
    """A photo of ``cls`` whose EXIF says it was taken ``when`` (as cameras write it)."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = when
    buffer = io.BytesIO()
    picture(cls, seed=seed).save(buffer, fmt, exif=exif.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def with_mtime(path: Path, when: datetime) -> Path:
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


@pytest.mark.parametrize(
    "template,problem",
    [
        ("{albm}", "unknown field {albm}"),
        ("{album}/{yaer}", "unknown field {yaer}"),
        ("{album}/{}", "unknown field {}"),
        ("/{album}", "absolute"),
        ("../{album}", "'..'"),
        ("{album}/../x", "'..'"),
        ("{album}//{year}", "every folder needs a name"),
        ("{album}/", "every folder needs a name"),
        ("{year}/{month}", "must contain {album}"),
        ("{album}/{year:04}", "plain name"),
        ("{album}/{year", "not a template"),
    ],
)
def test_a_bad_layout_is_refused_at_load_naming_the_problem(
    tmp_path: Path, template: str, problem: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"layout = {template!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=r"layout: .*" + re.escape(problem)):
        load_settings(cfg)


def test_good_layouts_render_their_fields() -> None:
    when = datetime(2024, 3, 7, 9, 30)
    for template in ("{album}", DATED, "{year}/{album}", "{album}/{year}-{month}-{day}"):
        assert load_settings(None, layout=template).layout == template
    assert layout.folder("{album}", "sea", None) == PurePosixPath("sea")
    assert layout.folder(DATED, "sea", when) == PurePosixPath("sea/2024/03")
    assert layout.folder("{year}/{album}", "sea", when) == PurePosixPath("2024/sea")
    assert layout.folder("{album}/{year}-{month}-{day}", "sea", when) == PurePosixPath("sea/2024-03-07")
    assert layout.album_of("{year}/{album}", PurePosixPath("2024/sea/a.jpg")) == "sea"
    assert layout.album_of(DATED, PurePosixPath("sea/2024/03/a.jpg")) == "sea"
    assert layout.album_of(DATED, PurePosixPath("sea/a.jpg")) is None  # not laid out this way


def test_photos_go_to_date_folders_from_exif_then_mtime(settings: Settings, filing) -> None:
    file, _ = filing
    inbox = settings.inbox
    photos = [
        exif_dated(inbox / "exif.jpg", "sea", "2019:07:14 10:11:12", seed=1),
        exif_dated(inbox / "exif.heic", "forest", "2018:12:31 23:59:59", fmt="HEIF", seed=2),
        with_mtime(
            exif_dated(inbox / "bad.jpg", "glacier", "0000:00:00 00:00:00", seed=3), datetime(2017, 5, 2)
        ),
        with_mtime(write_photo(inbox / "none.png", "street", fmt="PNG", seed=4), datetime(2021, 3, 5, 12)),
    ]
    outcomes = {o.path.name: o for o in file(*photos)}
    where = {name: o.entry.destination.relative_to(settings.library) for name, o in outcomes.items()}
    assert where == {
        "exif.jpg": Path("sea/2019/07/exif.jpg"),
        "exif.heic": Path("forest/2018/12/exif.heic"),
        "bad.jpg": Path("glacier/2017/05/bad.jpg"),
        "none.png": Path("street/2021/03/none.png"),
    }
    assert all(o.entry.album == o.entry.label for o in outcomes.values())
    assert all((settings.library / p).is_file() for p in where.values())
    # Another template, the year first; the default is today's flat album folder.
    photo = exif_dated(inbox / "later.jpg", "sea", "2020:01:02 03:04:05", seed=5)
    (o,) = file(photo, template="{year}/{album}")
    assert o.entry.destination == settings.library / "2020" / "sea" / "later.jpg"
    flat = write_photo(inbox / "flat.jpg", "sea", seed=6)
    assert prepare(flat, settings, (32, 32)).taken is None  # no date is read for a layout without one
    (o,) = file(flat, template="{album}")
    assert o.entry.destination == settings.library / "sea" / "flat.jpg"


def test_a_name_taken_in_a_date_folder_is_never_overwritten(settings: Settings, filing) -> None:
    file, _ = filing
    there = exif_dated(settings.library / "sea" / "2019" / "07" / "a.jpg", "sea", "2019:07:01 00:00:00")
    kept = there.read_bytes()
    photos = [
        exif_dated(settings.inbox / d / "a.jpg", "sea", "2019:07:14 10:11:12", seed=i)
        for i, d in enumerate(("x", "y"), 1)
    ]
    outcomes = file(*photos)
    assert sorted(o.entry.destination.name for o in outcomes) == ["a-1.jpg", "a-2.jpg"]
    assert there.read_bytes() == kept


def test_correct_keeps_the_date_folders_and_undo_restores(settings: Settings, filing, tmp_path: Path) -> None:
    file, journal = filing
    photo = exif_dated(settings.inbox / "p.jpg", "sea", "2019:07:14 10:11:12")
    (o,) = file(photo)
    s = settings.model_copy(update={"layout": DATED})
    (corrected,) = carry_out(
        journal, plan_correct(journal, s, o.entry.id, "forest"), Action.CORRECTED, "forest"
    )
    assert corrected.destination == settings.library / "forest" / "2019" / "07" / "p.jpg"
    assert corrected.destination.is_file() and journal.get(corrected.id).album == "forest"
    (undone,) = carry_out(journal, plan_undo(journal, [corrected.id]), Action.UNDONE)
    assert undone.destination == photo and photo.is_file()
    # The command line, with the layout in the config.
    (o,) = file(photo.rename(settings.inbox / "q.jpg"))  # renamed, or it would stay put
    config = write_config(tmp_path / "cened.toml", settings, layout=DATED)
    assert main(["--config", str(config), "correct", str(o.entry.id), "street"]) == 0
    assert (settings.library / "street" / "2019" / "07" / "q.jpg").is_file()
    assert main(["--config", str(config), "correct", str(o.entry.id + 1), "street"]) != 0  # already there


def test_doctor_finds_and_adopts_files_in_nested_folders_by_album(settings: Settings, filing, capsys) -> None:
    file, journal = filing
    (o,) = file(exif_dated(settings.inbox / "p.jpg", "sea", "2019:07:14 10:11:12"), template="{year}/{album}")
    moved = settings.library / "2019" / "forest" / "p.jpg"  # moved by hand to another album
    moved.parent.mkdir(parents=True)
    o.entry.destination.rename(moved)
    stray = write_photo(settings.library / "2020" / "street" / "own.jpg", "street")
    report = doctor.examine(journal, settings.library, settings.quarantine_dir)
    assert [r.id for r in report.missing] == [o.entry.id]
    assert sorted(report.unlogged) == [moved, stray]
    doctor.repair(journal, report, settings.library, settings.quarantine_dir, "{year}/{album}")
    rows = {r.destination: r for r in journal.history() if r.action in (Action.CORRECTED, Action.ADOPTED)}
    assert (rows[moved].action, rows[moved].album, rows[moved].human_label) == (
        Action.CORRECTED,
        "forest",
        "forest",
    )
    assert (rows[stray].action, rows[stray].album) == (Action.ADOPTED, "street")
    assert doctor.examine(journal, settings.library, settings.quarantine_dir).clean


def test_the_default_layout_is_flat(settings: Settings, filing) -> None:
    file, _ = filing
    (o,) = file(exif_dated(settings.inbox / "p.jpg", "sea", "2019:07:14 10:11:12"), template="{album}")
    assert o.fate == Fate.MOVED and o.entry.destination == settings.library / "sea" / "p.jpg"


@pytest.mark.parametrize(
    "template,folder,kept",
    [
        (DATED, "sea/2019/07", 1),
        (DATED, "sea/2019", 1),
        (DATED, "sea", None),  # an album's own folder
        (DATED, "sea/trip", None),  # a folder of the user's own
        (DATED, "sea/2019/07/more", None),
        ("{year}/{album}", "2019/sea", 0),
        ("{year}/{album}", "_duplicates", None),
        ("{album}/{year}-{month}", "sea/2019-07", 1),
        ("{album}", "sea", None),
    ],
)
def test_date_folders_are_the_layouts_own(template: str, folder: str, kept: int | None) -> None:
    assert layout.kept_above(template, PurePosixPath(folder)) == kept


def test_undo_and_correct_remove_the_date_folders_they_empty(
    settings: Settings, filing, tmp_path: Path
) -> None:
    file, _ = filing
    july = [
        exif_dated(settings.inbox / f"july{i}.jpg", "sea", "2019:07:14 10:11:12", seed=i) for i in range(2)
    ]
    (a, b, c) = file(*july, exif_dated(settings.inbox / "jan.jpg", "sea", "2020:01:02 10:11:12", seed=3))
    sea = settings.library / "sea"
    assert {o.entry.destination.parent for o in (a, b, c)} == {sea / "2019" / "07", sea / "2020" / "01"}
    (sea / "trip").mkdir()  # a folder of the user's own, empty
    config = write_config(tmp_path / "cened.toml", settings, layout=DATED)

    assert main(["--config", str(config), "undo", str(c.entry.id)]) == 0
    assert not (sea / "2020").exists() and (sea / "2019" / "07").is_dir()
    assert main(["--config", str(config), "correct", str(a.entry.id), "forest"]) == 0
    assert (sea / "2019" / "07").is_dir()  # b is still in it
    assert main(["--config", str(config), "undo", str(b.entry.id)]) == 0
    assert not (sea / "2019").exists()
    assert sea.is_dir() and (sea / "trip").is_dir()  # the album's folder, and the user's own, stay
    assert (settings.library / "forest" / "2019" / "07" / "july0.jpg").is_file()
    assert sorted(p.name for p in settings.inbox.iterdir()) == ["jan.jpg", "july1.jpg"]

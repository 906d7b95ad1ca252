"""Near-duplicates and bursts: the same picture, or frames seconds apart, filed together.

Copies are made here as a messenger or an editor makes them (re-encoded, halved,
cropped, colours touched); distinct photos are made-up pictures of other seeds.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from cened import grouping
from cened.bench.photos import synthetic_picture
from cened.cli import main
from cened.config import Settings
from cened.journal import SCHEMA_VERSION, Action, Journal, State
from cened.layout import shot_at
from cened.ml import imaging, similar
from cened.pipeline import Fate
from cened.undoing import carry_out, plan_correct, plan_undo

SIZE = (480, 360)


def _jpeg(im: Image.Image, quality: int = 90, exif: bytes = b"") -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()


def _copies(im: Image.Image) -> dict[str, bytes]:
    """The copies of ``im`` that people make: each must be taken for the same picture."""
    w, h = im.size
    return {
        "re-encoded": _jpeg(im, 45),
        "halved": _jpeg(im.resize((w // 2, h // 2)), 80),
        "cropped": _jpeg(im.crop((w * 3 // 100, h * 2 // 100, w - w * 2 // 100, h - h * 3 // 100))),
        "brighter": _jpeg(ImageEnhance.Brightness(im).enhance(1.08)),
        "forwarded": _jpeg(im.resize((w // 2, h // 2)), 50),
    }


def _exif_time(second: int, fraction: str) -> bytes:
    exif = Image.Exif()
    inner = exif.get_ifd(0x8769)
    inner[0x9003] = f"2026:05:01 10:00:{second:02d}"  # DateTimeOriginal
    inner[0x9291] = fraction  # SubSecTimeOriginal
    return exif.tobytes()


@pytest.mark.parametrize("size", [(160, 160), (32, 32)])
def test_copies_are_the_same_picture_and_other_photos_are_not(size: tuple[int, int]) -> None:
    """At the shipped model's input size, and at the test model's, which the pipeline tests use."""
    original = synthetic_picture(11, SIZE)
    made = _copies(original)
    others = [_jpeg(synthetic_picture(seed, SIZE)) for seed in range(20, 40)]
    sigs = similar.Signatures.of(
        [similar.signature(imaging.decode(data, size)) for data in [_jpeg(original), *made.values(), *others]]
    )
    shots = np.full(len(sigs), np.nan)
    near = dict(grouping.kinds(similar.signature(imaging.decode(_jpeg(original), size)), None, sigs, shots))
    assert sorted(near) == list(range(len(made) + 1)), near  # itself and every copy, no other photo
    assert set(near.values()) == {grouping.Kind.SAME}


def test_the_hashes_rule_out_first_and_miss_nothing_the_limits_hold() -> None:
    """Measuring colour only where both hashes are near finds what measuring everything finds, bursts too."""
    rng = np.random.default_rng(3)
    pictures = [imaging.decode(_jpeg(synthetic_picture(seed, SIZE)), (64, 64)) for seed in range(60)]
    # Each picture a little changed, again and again: pairs at every distance around the limits.
    made = [
        np.clip(p.astype(int) + rng.integers(-k, k + 1, p.shape), 0, 255).astype(np.uint8)
        for p in pictures
        for k in (0, 20, 60)
    ]
    sigs = similar.Signatures.of([similar.signature(p) for p in made])
    shots = rng.uniform(0, 3, len(sigs))
    for i in range(0, len(sigs), 7):
        phash = np.array(
            [
                np.unpackbits(np.frombuffer(sigs.phash[j] ^ sigs.phash[i], np.uint8)).sum()
                for j in range(len(sigs))
            ]
        )
        dhash = np.array(
            [
                np.unpackbits(np.frombuffer(sigs.dhash[j] ^ sigs.dhash[i], np.uint8)).sum()
                for j in range(len(sigs))
            ]
        )
        colour = similar.colour_distance(sigs.colour[i], sigs.colour)
        gap = np.abs(shots - shots[i])
        burst = (gap > 0) & (gap <= similar.BURST_GAP_S) & similar.BURST.holds(phash, dhash, colour)
        expected = set(np.flatnonzero(similar.SAME_PICTURE.holds(phash, dhash, colour) | burst))
        found = grouping.kinds(bytes(similar.signature(made[i])), shots[i], sigs, shots)
        assert {j for j, _ in found} == expected and len(expected) < len(sigs)
        assert {j for j, kind in found if kind == grouping.Kind.BURST} == {j for j in expected if burst[j]}


def test_signatures_added_a_batch_at_a_time_are_those_made_at_once() -> None:
    rng = np.random.default_rng(4)
    sigs = [similar.signature(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(150)]
    store, used = similar.Signatures.of([]), 0
    for start in range(0, len(sigs), 23):
        more = similar.Signatures.of(sigs[start : start + 23])
        store = similar.appended(store, used, more)
        used += len(more)
        assert len(store) >= used
    whole, grown = similar.Signatures.of(sigs), store.head(used)
    for name in ("phash", "dhash", "colour"):
        assert np.array_equal(getattr(grown, name), getattr(whole, name))


def test_signature_is_a_fixed_size_and_versioned() -> None:
    sig = similar.signature(imaging.decode(_jpeg(synthetic_picture(1, SIZE)), (160, 160)))
    assert len(sig) == similar.SIZE and sig[0] == similar.VERSION and similar.usable(sig)
    assert not similar.usable(None) and not similar.usable(bytes([similar.VERSION + 1]) + sig[1:])


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_copy_is_filed_with_its_original_wherever_that_is_now(settings: Settings, filing) -> None:
    file, journal = filing
    picture = synthetic_picture(3, SIZE)
    (first,) = file(_write(settings.inbox / "IMG_1.jpg", _jpeg(picture)))
    assert first.fate in (Fate.MOVED, Fate.REVIEW) and first.entry.similar_id is None
    # A person put it in forest: the copy follows it there, whatever the model says of the copy.
    (fixed,) = carry_out(journal, plan_correct(journal, settings, first.entry.id, "forest"), Action.CORRECTED)
    (copy,) = file(_write(settings.inbox / "IMG_1 (WhatsApp).jpg", _copies(picture)["forwarded"]))
    assert copy.fate == Fate.MOVED, copy
    assert copy.entry.destination == settings.library / "forest" / "IMG_1 (WhatsApp).jpg"
    row = journal.get(copy.entry.id)
    assert (row.similar_id, row.album, row.state) == (first.entry.id, "forest", State.DONE)
    assert row.reason == f"near-duplicate of #{fixed.id}: forest/IMG_1.jpg, filed with it"
    assert similar.usable(row.signature)
    # A distinct photo is filed on its own.
    (other,) = file(_write(settings.inbox / "IMG_2.jpg", _jpeg(synthetic_picture(4, SIZE))))
    assert journal.get(other.entry.id).similar_id is None


def test_separate_sets_a_copy_apart_and_keep_files_it_alone(settings: Settings, filing) -> None:
    file, journal = filing
    picture = synthetic_picture(5, SIZE)
    (first,) = file(_write(settings.inbox / "a.jpg", _jpeg(picture)))
    (apart,) = file(
        _write(settings.inbox / "a-edit.jpg", _copies(picture)["brighter"]), near_duplicates="separate"
    )
    assert apart.fate == Fate.DUPLICATE and apart.entry.destination.parent == settings.duplicates_dir
    assert apart.entry.ref_id == first.entry.id and apart.entry.reason.startswith("near-duplicate of #")
    (kept,) = file(_write(settings.inbox / "a-crop.jpg", _copies(picture)["cropped"]), near_duplicates="keep")
    assert kept.fate.classified and journal.get(kept.entry.id).similar_id is None


def test_a_copy_in_the_same_batch_waits_for_its_original(settings: Settings, filing) -> None:
    file, journal = filing
    picture = synthetic_picture(6, SIZE)
    original = _write(settings.inbox / "b.jpg", _jpeg(picture))
    copy = _write(settings.inbox / "b-small.jpg", _copies(picture)["halved"])
    first, second = sorted(file(original, copy), key=lambda o: o.path != original)
    assert first.fate.classified and second.fate == Fate.RETRY and second.twin and copy.is_file()
    (later,) = file(copy)
    assert journal.get(later.entry.id).similar_id == first.entry.id
    assert later.entry.destination.parent == first.entry.destination.parent


def _burst(folder: Path, count: int) -> list[Path]:
    """``count`` frames 0.3 s apart: the camera moves a few pixels between them."""
    scene = synthetic_picture(8, (SIZE[0] + 40, SIZE[1] + 40))
    frames = []
    for i in range(count):
        second, fraction = divmod(300 * i, 1000)
        frame = scene.crop((4 * i, 3 * i, 4 * i + SIZE[0], 3 * i + SIZE[1]))
        data = _jpeg(frame, exif=_exif_time(second, f"{fraction:03d}"))
        frames.append(_write(folder / f"BURST_{i:02d}.jpg", data))
    return frames


def test_a_burst_lands_in_one_album_and_undo_and_correct_take_the_whole_group(
    settings: Settings, filing
) -> None:
    file, journal = filing
    frames = _burst(settings.inbox, 5)
    assert [shot_at(f.read_bytes()) % 60 for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2])
    outcomes = file(*frames)
    assert sum(o.fate == Fate.RETRY for o in outcomes) == 4  # they wait for the first
    lead = next(o for o in outcomes if o.fate != Fate.RETRY)
    later = file(*[o.path for o in outcomes if o.fate == Fate.RETRY])
    rows = [journal.get(o.entry.id) for o in later]
    assert {r.similar_id for r in rows} == {lead.entry.id}
    assert {r.destination.parent for r in rows} == {lead.entry.destination.parent}
    assert all("burst of #" in r.reason or "near-duplicate of #" in r.reason for r in rows)

    # Correcting one frame moves the whole burst.
    plans = plan_correct(journal, settings, rows[2].id, "mountain")
    assert len(plans) == 5
    carry_out(journal, plans, Action.CORRECTED, "mountain")
    assert sorted(p.name for p in (settings.library / "mountain").iterdir()) == [f.name for f in frames]

    # Undoing the first frame puts all five back.
    current = journal.history(actions=[Action.CORRECTED])
    lead_now = next(r for r in current if r.similar_id is None)
    done = carry_out(journal, plan_undo(journal, [lead_now.id]), Action.UNDONE)
    assert len(done) == 5 and all(e.state == State.DONE for e in done)
    assert sorted(p.name for p in settings.inbox.iterdir()) == [f.name for f in frames]


def test_a_version_4_log_gains_signatures(settings: Settings) -> None:
    from cened import journal as journal_module

    settings.database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.database) as old:
        for version in (1, 2, 3, 4):
            for statement in journal_module._MIGRATIONS[version].split(";"):
                old.execute(statement)
        old.execute(f"PRAGMA application_id = {journal_module.APPLICATION_ID}")
        old.execute("PRAGMA user_version = 4")
        old.execute(
            "INSERT INTO decisions (time, action, source) VALUES ('2026-11-01', 'moved', '/in/a.jpg')"
        )
    old.close()
    with Journal(settings.database) as journal:
        assert journal.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        (row,) = journal.history()
        assert (row.signature, row.shot_at, row.similar_id) == (None, None, None)
        assert not [row for row in journal.signed(0) if similar.usable(row[1])]


def test_the_measuring_command_finds_copies_and_no_distinct_photo(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    for cls, seeds in {"one": range(0, 12), "two": range(100, 112)}.items():
        for seed in seeds:
            _write(data / cls / f"{seed}.jpg", _jpeg(synthetic_picture(seed, (150, 150))))
    code = main(["near-duplicates", "--data", str(data), "--sample", "10", "--pairs", "1000", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    same = result["rates"][0]
    assert same["limits"] == {"phash": 100, "dhash": 106, "colour": 7.0}
    assert same["pairs"] == 2 * 66 and same["false_pairs"] == 0
    assert same["found"] >= 0.9, same["found_by_edit"]


def test_doctor_signs_what_it_adopts_so_a_copy_joins_it(settings: Settings, filing, tmp_path: Path) -> None:
    """A photo put in the library by hand, adopted by `cened doctor --fix`, draws its copies to it."""
    from conftest import write_config

    file, journal = filing
    picture = synthetic_picture(8, SIZE)
    by_hand = _write(settings.library / "sea" / "holiday.jpg", _jpeg(picture))
    _write(settings.library / "sea" / "holiday.xmp", b"<x:xmpmeta/>")  # a companion: adopted, not signed
    config = write_config(tmp_path / "cened.toml", settings)
    assert main(["--config", str(config), "doctor", "--fix"]) == 0
    ((adopted_id, sig, _),) = journal.signed(0)
    adopted = journal.get(adopted_id)
    assert (adopted.action, adopted.destination) == (Action.ADOPTED, by_hand) and similar.usable(sig)
    (copy,) = file(_write(settings.inbox / "holiday (WhatsApp).jpg", _copies(picture)["forwarded"]))
    assert copy.fate == Fate.MOVED and copy.entry.destination == settings.library / "sea" / copy.path.name
    assert journal.get(copy.entry.id).similar_id == adopted_id


def test_doctor_signs_photos_filed_before_signatures_so_copies_join_them(
    settings: Settings, filing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library filed by an older version (no signature, or one of an older version) is signed by doctor."""
    from conftest import write_config

    file, journal = filing
    picture = synthetic_picture(9, SIZE)
    (old,) = file(_write(settings.inbox / "old.jpg", _jpeg(picture)))
    (broken,) = file(_write(settings.inbox / "other.jpg", _jpeg(synthetic_picture(10, SIZE))))
    assert old.fate == broken.fate == Fate.MOVED
    with sqlite3.connect(settings.database) as conn:  # as an older version left them
        conn.execute(
            "UPDATE decisions SET signature = ? WHERE id = ?", (bytes([1]) * similar.SIZE, old.entry.id)
        )
        conn.execute("UPDATE decisions SET signature = NULL WHERE id = ?", (broken.entry.id,))
    broken.entry.destination.write_bytes(b"no longer a picture")  # undecodable: looked at once, then left
    config = write_config(tmp_path / "cened.toml", settings)
    assert (
        main(["--config", str(config), "doctor"]) == 0
    )  # not a disagreement: the exit code says all is well
    assert "2 photos filed before this version's near-duplicate signature" in capsys.readouterr().out
    assert not [row for row in journal.signed(0) if similar.usable(row[1])]
    assert main(["--config", str(config), "doctor", "--fix"]) == 0
    out = capsys.readouterr().out
    assert "signed 1 photos for near-duplicates; 1 could not be decoded" in out
    ((signed_id, sig, _),) = [row for row in journal.signed(0) if similar.usable(row[1])]
    assert signed_id == old.entry.id and sig == old.entry.signature
    assert main(["--config", str(config), "doctor"]) == 0
    assert capsys.readouterr().out == "all consistent\n"
    (copy,) = file(_write(settings.inbox / "old (WhatsApp).jpg", _copies(picture)["forwarded"]))
    assert journal.get(copy.entry.id).similar_id == old.entry.id

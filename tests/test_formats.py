"""HEIF/HEIC, AVIF and camera RAW files: decoded upright, filed whole, and quarantined when cut short.

Every file here is real: HEIF is written by pillow-heif (libheif), AVIF by
Pillow (libavif), and DNG by :mod:`dng` in this folder, read back by LibRaw.
Orientation is checked on pictures whose top and bottom halves differ, stored
turned as a camera stores them, with the EXIF orientation that turns them back.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, picture
from daemon_helpers import RunningDaemon, files_under, wait_until
from dng import dng
from PIL import ExifTags, Image

from cened.config import DEFAULT_EXTENSIONS, Settings
from cened.journal import Journal
from cened.ml import imaging
from cened.ml.classifying import Classifier
from cened.pipeline import FileOutcome, Processor, prepare
from cened.watching import is_candidate

MODEL_INPUT = (32, 32)
TOP, BOTTOM = "sea", "forest"
#: How a camera stores a picture that the EXIF orientation turns upright (exif_transpose's inverse).
STORED = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def two_tone(size: tuple[int, int] = (80, 60)) -> Image.Image:
    """Upright, the top half is ``TOP``'s colour and the bottom half ``BOTTOM``'s."""
    w, h = size
    pixels = np.empty((h, w, 3), np.uint8)
    pixels[: h // 2], pixels[h // 2 :] = COLOURS[TOP], COLOURS[BOTTOM]
    return Image.fromarray(pixels)


def stored(upright: Image.Image, orientation: int) -> Image.Image:
    method = STORED[orientation]
    return upright if method is None else upright.transpose(method)


def exif(orientation: int) -> bytes:
    block = Image.Exif()
    block[ExifTags.Base.Orientation] = orientation
    return block.tobytes()


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def heif(im: Image.Image, orientation: int = 1, **params: object) -> bytes:
    return encode(im, "HEIF", quality=90, exif=exif(orientation), **params)


def nearest(pixels: np.ndarray) -> str:
    mean = pixels.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2)))


def assert_upright(pixels: np.ndarray) -> None:
    quarter = pixels.shape[0] // 4
    assert (nearest(pixels[:quarter]), nearest(pixels[-quarter:])) == (TOP, BOTTOM), (
        pixels[:quarter].mean(axis=(0, 1)),
        pixels[-quarter:].mean(axis=(0, 1)),
    )


def exif_first(jpeg: bytes) -> bytes:
    """``jpeg`` without Pillow's JFIF segment, so that its EXIF block comes first, as in a camera's preview.

    LibRaw adds an EXIF block of its own, with the RAW's orientation, to a
    preview that does not begin with one.
    """
    assert jpeg[2:4] == b"\xff\xe0"
    return jpeg[:2] + jpeg[4 + int.from_bytes(jpeg[4:6], "big") :]


def raw_file(orientation: int = 1, preview: str = "jpeg", preview_exif: int | None = None) -> bytes:
    """A DNG whose preview is the two-tone picture as the sensor saw it (turned by ``orientation``)."""
    seen = stored(two_tone((160, 120)), orientation)
    if preview == "bitmap":
        return dng(np.asarray(seen), orientation=orientation)
    if preview_exif is not None:  # a preview with its own EXIF block, turned by it instead
        jpeg = encode(stored(two_tone((160, 120)), preview_exif), "JPEG", exif=exif(preview_exif))
        return dng(exif_first(jpeg), orientation=orientation)
    return dng(encode(seen, "JPEG", quality=90), orientation=orientation)


@pytest.fixture
def run(settings: Settings, classifier: Classifier) -> Iterator:
    journal = Journal(settings.database)
    processor = Processor(classifier, journal, lambda: settings)

    def _run(path: Path) -> FileOutcome:
        (outcome,) = processor.process([prepare(path, settings, classifier.meta.input_size)])
        return outcome

    yield _run
    journal.close()


# -- HEIF and AVIF ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_and_avif_are_decoded_upright(fmt: str, orientation: int) -> None:
    data = encode(stored(two_tone(), orientation), fmt, quality=90, exif=exif(orientation))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == fmt
    pixels, source = imaging.decode_with_source(data, MODEL_INPUT)
    assert source == imaging.FROM_PHOTO
    assert_upright(pixels)


@pytest.mark.parametrize(
    ("thumbnails", "min_side", "source"),
    [
        pytest.param([320], 200, imaging.FROM_HEIF_THUMBNAIL, id="thumbnail"),
        pytest.param([320], 0, imaging.FROM_PHOTO, id="thumbnails-off"),
        pytest.param([320], 241, imaging.FROM_PHOTO, id="thumbnail-below-min-side"),
        pytest.param([], 200, imaging.FROM_PHOTO, id="no-thumbnail"),
    ],
)
def test_large_heic_is_classified_from_its_own_thumbnail_when_it_may(
    thumbnails: list[int], min_side: int, source: str
) -> None:
    # 800x600 upright, stored 600x800 and turned by orientation 6; the thumbnail is 240x320.
    data = heif(stored(two_tone((800, 600)), 6), 6, thumbnails=thumbnails)
    pixels, got = imaging.decode_with_source(data, MODEL_INPUT, thumbnail_min_side=min_side)
    assert got == source
    assert_upright(pixels)


def test_heic_thumbnail_stands_for_the_photo() -> None:
    photo = picture("glacier", (800, 600), seed=3)
    data = heif(photo, thumbnails=[320])
    full = imaging.decode(data, (64, 64))
    pixels, source = imaging.decode_with_source(data, (64, 64), thumbnail_min_side=200)
    assert source == imaging.FROM_HEIF_THUMBNAIL
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 4


# -- RAW ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("preview", ["jpeg", "bitmap"])
def test_raw_is_classified_upright_from_its_preview(preview: str, orientation: int) -> None:
    pixels, source = imaging.decode_with_source(raw_file(orientation, preview), MODEL_INPUT)
    assert source == imaging.FROM_RAW_PREVIEW
    assert_upright(pixels)


@pytest.mark.parametrize("raw_orientation", [1, 6])
def test_raw_preview_with_its_own_exif_orientation_is_turned_by_it(raw_orientation: int) -> None:
    # The preview's own EXIF block says 6; the RAW says "as stored", or 6 too (turned once, not twice).
    data = raw_file(raw_orientation, preview_exif=6)
    pixels, source = imaging.decode_with_source(data, MODEL_INPUT)
    assert source == imaging.FROM_RAW_PREVIEW
    assert_upright(pixels)


def test_raw_without_preview_is_quarantined(settings: Settings, run) -> None:
    path = settings.inbox / "bare.dng"
    path.write_bytes(dng(None))
    content = path.read_bytes()
    outcome = run(path)
    assert outcome.fate == "quarantined", outcome
    assert outcome.reason is not None and outcome.reason.startswith("raw-without-preview"), outcome.reason
    assert (settings.quarantine_dir / "bare.dng").read_bytes() == content


def test_tiffs_that_are_no_raw_still_decode_with_pillow(settings: Settings, run) -> None:
    # LibRaw reads a 16-bit grey TIFF as sensor data without a preview: Pillow decodes it, as before.
    deep = settings.inbox / "scan.tif"
    Image.fromarray(np.full((48, 64), 230 * 257, dtype=np.uint16)).save(deep, "TIFF")
    colour = settings.inbox / "colour.tiff"
    picture("forest").save(colour, "TIFF", compression="tiff_lzw")
    for path, label in ((deep, "glacier"), (colour, "forest")):
        assert imaging.decode_with_source(path.read_bytes(), MODEL_INPUT)[1] == imaging.FROM_PHOTO
        outcome = run(path)
        assert outcome.fate == "moved" and outcome.entry is not None, outcome
        assert outcome.entry.label == label, outcome.entry.probabilities


# -- truncated files ---------------------------------------------------------------------------


@functools.cache
def _truncatable(kind: str) -> bytes:
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    if kind == "heic":
        return heif(noisy, thumbnails=[320])
    if kind == "heic-grid":  # as iPhones write them: tiles, which libheif decodes even when some are missing
        return heif(noisy, thumbnails=[320], tile_size=256)
    if kind == "avif":
        return encode(noisy, "AVIF", quality=60, speed=10)
    sensor = np.random.default_rng(2).integers(0, 4096, (480, 640))
    return dng(encode(two_tone((320, 240)), "JPEG"), sensor)  # the preview comes before the sensor data


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.999])
@pytest.mark.parametrize("kind", ["heic", "heic-grid", "avif", "dng"])
def test_truncated_heif_avif_and_raw_are_quarantined(settings: Settings, run, kind: str, cut: float) -> None:
    whole = _truncatable(kind)
    assert imaging.decode_with_source(whole, MODEL_INPUT, thumbnail_min_side=200)
    path = settings.inbox / f"cut.{'dng' if kind == 'dng' else kind[:4]}"
    path.write_bytes(whole[: int(len(whole) * cut)])
    outcome = run(path)
    assert outcome.fate == "quarantined", outcome
    assert outcome.reason is not None and outcome.reason.startswith("corrupt"), outcome.reason


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("junk.raf", b"FUJIFILMCCD-RAW 0201FF383501"),
        ("junk.orf", b"IIRO\x08\x00\x00\x00"),
        ("junk.rw2", b"IIU\x00\x18\x00\x00\x00"),
        ("junk.cr3", b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom"),
        ("junk.nef", b"MM\x00*\x00\x00\x00\x08"),
        ("junk.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
    ],
)
def test_junk_that_begins_like_a_raw_or_heif_is_quarantined(
    settings: Settings, run, name: str, head: bytes
) -> None:
    path = settings.inbox / name
    path.write_bytes(head + bytes(range(256)) * 4)
    outcome = run(path)
    assert outcome.fate == "quarantined", outcome


# -- the daemon ---------------------------------------------------------------------------------


def test_new_formats_are_watched() -> None:
    assert all(ext == ext.lower() for ext in DEFAULT_EXTENSIONS)
    inbox = Path("/inbox")
    names = ("IMG_0001.HEIC", "a.heif", "b.avif", "c.DNG", "d.CR2", "e.cr3", "f.NEF", "g.ARW", "h.RAF")
    for name in (*names, "i.ORF", "j.RW2"):
        assert is_candidate(inbox / name, inbox, list(DEFAULT_EXTENSIONS), []), name


@pytest.mark.slow
def test_heic_and_raw_dropped_into_the_inbox_are_filed_whole(settings: Settings, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    sea = picture("sea", (800, 600), seed=4)
    made = {
        "IMG_0001.HEIC": heif(stored(sea, 6), 6, thumbnails=[320]),
        "DSC_0002.DNG": dng(encode(stored(picture("sea", (320, 240), seed=5), 8), "JPEG"), orientation=8),
        "IMG_0003.heic": heif(picture("sea", (80, 60), seed=6)),
    }
    whole_dng = made["DSC_0002.DNG"]
    made["cut-raw.dng"] = whole_dng[: len(whole_dng) - 100]
    whole_heic = made["IMG_0001.HEIC"]
    made["cut.heic"] = whole_heic[: len(whole_heic) // 2]
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in made.items()}
    old = time.time() - 3600  # long finished: quarantined at once, not waited for (unfinished_grace_s)
    with RunningDaemon(settings):
        for name, data in made.items():
            (staging / name).write_bytes(data)
            os.utime(staging / name, (old, old))
            os.replace(staging / name, settings.inbox / name)  # whole, at once
        assert wait_until(lambda: not files_under(settings.inbox), timeout=30), files_under(settings.inbox)
    filed = {p.name: p for p in files_under(settings.library / "sea")}
    assert sorted(filed) == ["DSC_0002.DNG", "IMG_0001.HEIC", "IMG_0003.heic"]
    quarantined = {p.name: p for p in files_under(settings.quarantine_dir)}
    assert sorted(quarantined) == ["cut-raw.dng", "cut.heic"]
    for name, path in {**filed, **quarantined}.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[name], f"{name} changed on the way"
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT source, action, pixel_source, reason, sha256 FROM decisions").fetchall()
    logged = {Path(row[0]).name: row[1:] for row in rows}
    assert logged["IMG_0001.HEIC"][:2] == ("moved", imaging.FROM_HEIF_THUMBNAIL)
    assert logged["DSC_0002.DNG"][:2] == ("moved", imaging.FROM_RAW_PREVIEW)
    assert logged["IMG_0003.heic"][:2] == ("moved", imaging.FROM_PHOTO)
    for name in ("cut-raw.dng", "cut.heic"):
        action, _, reason, sha = logged[name]
        assert action == "quarantined" and reason.startswith("corrupt") and sha == digests[name], logged[name]

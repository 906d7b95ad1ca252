"""Large JPEGs classified from their camera-made EXIF preview, and only when it can stand for the photo.

The preview and the photo are drawn in different classes' colours on purpose,
so which of the two the model saw is visible in where the file is filed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, picture
from PIL import Image

from cened.bench.photos import exif_with_preview, with_mpf_preview
from cened.config import Settings
from cened.journal import Journal
from cened.ml.classifying import Classifier
from cened.ml.imaging import Rejected, decode, decode_with_source
from cened.pipeline import FileOutcome, Processor, prepare

PHOTO = (800, 600)


def jpeg(im: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, **params)
    return out.getvalue()


def camera_jpeg(
    photo: Image.Image, preview: Image.Image | bytes, orientation: int = 1, preview_format: str = "JPEG"
) -> bytes:
    if isinstance(preview, Image.Image):
        out = io.BytesIO()
        preview.save(out, preview_format)
        preview = out.getvalue()
    return jpeg(photo, exif=exif_with_preview(preview, orientation))


def nearest_class(pixels: np.ndarray) -> str:
    mean = pixels.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2)))


@pytest.fixture
def run(settings: Settings, classifier: Classifier) -> Iterator:
    journal = Journal(settings.database)

    def _run(path: Path, thumbnail_min_side: int) -> FileOutcome:
        current = settings.model_copy(update={"thumbnail_min_side": thumbnail_min_side})
        processor = Processor(classifier, journal, lambda: current)
        (outcome,) = processor.process([prepare(path, current, classifier.meta.input_size)])
        return outcome

    yield _run
    journal.close()


@pytest.mark.parametrize(("min_side", "album"), [(200, "sea"), (0, "forest"), (241, "forest")])
def test_large_jpeg_is_filed_by_its_preview_when_allowed(
    settings: Settings, run, min_side: int, album: str
) -> None:
    path = settings.inbox / "camera.jpg"
    path.write_bytes(camera_jpeg(picture("forest", PHOTO), picture("sea", (320, 240))))
    outcome = run(path, min_side)
    assert outcome.fate == "moved", outcome
    assert outcome.entry is not None and outcome.entry.destination == settings.library / album / "camera.jpg"
    with Journal(settings.database) as journal:
        logged = journal.get(outcome.entry.id or 0)
    assert logged is not None and logged.pixel_source == ("exif-preview" if album == "sea" else "photo")


def test_truncated_photo_is_quarantined_even_with_an_intact_preview(settings: Settings, run) -> None:
    data = camera_jpeg(picture("forest", PHOTO), picture("sea", (320, 240)))
    path = settings.inbox / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    outcome = run(path, 200)
    assert outcome.fate == "quarantined"
    assert outcome.reason is not None and outcome.reason.startswith("corrupt"), outcome.reason


@pytest.mark.parametrize(
    ("photo_size", "preview", "tail"),
    [
        pytest.param(PHOTO, picture("sea", (320, 180)), b"", id="preview-of-another-shape"),
        pytest.param(PHOTO, picture("sea", (160, 120)), b"", id="preview-below-min-side"),
        pytest.param((240, 180), picture("sea", (200, 150)), b"", id="photo-small-enough-to-decode"),
        pytest.param(PHOTO, b"not a jpeg at all", b"", id="preview-not-an-image"),
        pytest.param(PHOTO, "PNG", b"", id="preview-not-a-jpeg"),
        pytest.param(PHOTO, picture("sea", (320, 240)), b"ftypmp42 motion photo", id="data-after-the-image"),
    ],
)
def test_preview_that_cannot_stand_for_the_photo_is_ignored(
    photo_size: tuple[int, int], preview: Image.Image | bytes | str, tail: bytes
) -> None:
    photo = picture("forest", photo_size)
    if preview == "PNG":
        flat = Image.new("RGB", (320, 240), COLOURS["sea"])  # noise would not fit in an EXIF block as PNG
        data = camera_jpeg(photo, flat, preview_format="PNG")
    else:
        assert not isinstance(preview, str)
        data = camera_jpeg(photo, preview)
    data += tail
    assert nearest_class(decode(data, (64, 64), thumbnail_min_side=150)) == "forest"


def test_preview_is_turned_upright_like_the_photo() -> None:
    """Orientation 6: the photo is stored on its side; the preview too, and both need the same turn."""
    stored = np.zeros((600, 800, 3), np.uint8)
    stored[:, :400] = COLOURS["sea"]
    stored[:, 400:] = COLOURS["forest"]
    photo = Image.fromarray(stored)
    data = camera_jpeg(photo, photo.resize((320, 240)), orientation=6)
    full = decode(data, (64, 48))
    from_preview = decode(data, (64, 48), thumbnail_min_side=200)
    assert full.shape == from_preview.shape == (64, 48, 3)
    # Upright, sea is on top and forest below: the turn was applied to both.
    assert nearest_class(from_preview[:24]) == nearest_class(full[:24]) == "sea"
    assert nearest_class(from_preview[40:]) == nearest_class(full[40:]) == "forest"
    assert float(np.abs(full.astype(int) - from_preview.astype(int)).mean()) < 8


# -- the large preview cameras store after the photo (MPF) -----------------------------


def mpf_jpeg(photo: Image.Image, preview: Image.Image, *, large_thumbnail: bool = True) -> bytes:
    """A camera JPEG: the photo, then its preview as an MPF "large thumbnail" (or as another type)."""
    data = with_mpf_preview(jpeg(photo), jpeg(preview))
    if not large_thumbnail:  # as a phone's HDR gain map or a stereo pair's other eye is marked
        data = data.replace(struct.pack("<L", 0x010002), struct.pack("<L", 0), 1)
    return data


@pytest.mark.parametrize(
    ("min_side", "album", "source"), [(160, "sea", "mpf-preview"), (0, "forest", "photo")]
)
def test_camera_jpeg_is_filed_by_its_mpf_preview(
    settings: Settings, run, min_side: int, album: str, source: str
) -> None:
    path = settings.inbox / "DSC_0001.JPG"
    path.write_bytes(mpf_jpeg(picture("forest", PHOTO), picture("sea", (400, 300))))
    with Image.open(path) as im:
        assert im.format == "MPO"
    outcome = run(path, min_side)
    assert outcome.entry is not None and outcome.entry.destination == settings.library / album / path.name
    with Journal(settings.database) as journal:
        assert journal.get(outcome.entry.id or 0).pixel_source == source


def test_mpf_images_that_are_no_preview_are_ignored() -> None:
    data = mpf_jpeg(picture("forest", PHOTO), picture("sea", (400, 300)), large_thumbnail=False)
    pixels, source = decode_with_source(data, (64, 64), thumbnail_min_side=160)
    assert (nearest_class(pixels), source) == ("forest", "photo")
    small = mpf_jpeg(picture("forest", PHOTO), picture("sea", (200, 150)))  # below min_side
    assert decode_with_source(small, (64, 64), thumbnail_min_side=160)[1] == "photo"


def test_a_cut_mpf_file_is_read_from_the_photo_or_refused() -> None:
    data = mpf_jpeg(picture("forest", PHOTO), picture("sea", (400, 300)))
    preview_at = data.rindex(b"\xff\xd8")  # the preview's start of image, after the photo
    pixels, source = decode_with_source(data[: preview_at + 200], (64, 64), thumbnail_min_side=160)
    assert (nearest_class(pixels), source) == ("forest", "photo")  # the photo is whole: decoded
    with pytest.raises(Rejected) as caught:
        decode_with_source(data[: preview_at // 2], (64, 64), thumbnail_min_side=160)
    assert caught.value.reason == "corrupt"

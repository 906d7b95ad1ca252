"""Every photo reaches the model with the detail the training photos had (150 px), never more.

The network and its "other" detector were fitted on 150 px photos enlarged to the
model's input; a sharper photo is what neither ever saw (docs/model.md).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cened.ml import imaging

MODEL = (160, 160)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Detail at every scale: the worst case for a reduction, and what a sharp photo has."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _detail(pixels: np.ndarray) -> float:
    """Mean difference between neighbouring pixels: how much fine detail a picture holds."""
    return float(np.abs(np.diff(pixels.astype(int), axis=1)).mean())


def _as_training_photo(pixels: np.ndarray) -> np.ndarray:
    """The centre square at 150 px, as the training photos were made."""
    h, w = pixels.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = Image.fromarray(pixels[top : top + s, left : left + s])
    return np.asarray(square.resize((imaging.DETAIL_SIDE,) * 2, Image.Resampling.BILINEAR))


@pytest.mark.parametrize(
    "shape", [(600, 600), (600, 800), (1200, 900)], ids=["square", "landscape", "portrait"]
)
def test_a_sharp_photo_is_seen_as_its_150_px_copy(shape: tuple[int, int]) -> None:
    sharp = _noise(*shape)
    seen = imaging.decode(_png(sharp), MODEL).astype(int)
    as_training = imaging.decode(_png(_as_training_photo(sharp)), MODEL).astype(int)
    # The same two resizes, but a large photo is first shrunk by a whole factor in strips.
    assert np.abs(seen - as_training).mean() <= 1.0
    straight = np.asarray(Image.fromarray(sharp).resize(MODEL, Image.Resampling.BILINEAR)).astype(int)
    # Without the 150 px step the model would see more of the noise than any training photo holds.
    assert _detail(seen) <= 1.1 * _detail(as_training) and _detail(seen) < 0.8 * _detail(straight)


def test_a_training_sized_photo_is_only_enlarged() -> None:
    photo = _noise(150, 150, seed=1)
    enlarged = np.asarray(Image.fromarray(photo).resize(MODEL, Image.Resampling.BILINEAR))
    assert np.array_equal(imaging.decode(_png(photo), MODEL), enlarged)


def test_a_camera_preview_is_reduced_to_the_training_detail() -> None:
    """The same rule on the route most camera photos take: a large JPEG read from its EXIF preview."""
    from cened.bench.photos import exif_with_preview

    coarse = Image.fromarray(_noise(60, 80, seed=2))  # detail finer than 150 px, and small enough for EXIF
    preview = np.asarray(coarse.resize((320, 240), Image.Resampling.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(preview).save(buf, "JPEG", quality=85)
    photo = Image.fromarray(np.asarray(Image.fromarray(preview).resize((1600, 1200))))
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90, exif=exif_with_preview(buf.getvalue()))
    pixels, source = imaging.decode_with_source(out.getvalue(), MODEL, thumbnail_min_side=240)
    assert source == imaging.FROM_PREVIEW
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:
        expected = imaging.decode(_png(_as_training_photo(np.asarray(decoded.convert("RGB")))), MODEL)
    assert np.abs(pixels.astype(int) - expected.astype(int)).mean() <= 1.0
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:  # the preview straight to 160 px
        straight = np.asarray(
            decoded.convert("RGB").resize(MODEL, Image.Resampling.BILINEAR, box=(40, 0, 280, 240))
        )
    assert _detail(pixels) < 0.9 * _detail(straight)

"""The short way for small JPEGs (simplejpeg) must give Pillow's pixels and Pillow's verdicts.

Each test decodes the same bytes twice: once as the daemon does, and once with
the short way turned off, which leaves Pillow alone.  The model was trained
and measured on what Pillow makes of a photo; any difference here would be a
photo the daemon sees differently from how the model card says it was seen.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from conftest import picture
from PIL import Image

from cened.ml import imaging

MODEL = (224, 224)


def _jpeg(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _pillow_only(data: bytes, monkeypatch: pytest.MonkeyPatch) -> np.ndarray | str:
    """What :func:`imaging.decode` gives without the short way: pixels, or the reason it refused."""
    with monkeypatch.context() as m:
        m.setattr(imaging, "_small_jpeg_pixels", lambda *_: None)
        return _outcome(data)


def _outcome(data: bytes) -> np.ndarray | str:
    try:
        return imaging.decode(data, MODEL)
    except imaging.Rejected as exc:
        return exc.reason


def _short_way_taken(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return imaging._small_jpeg_pixels(im, data, MODEL) is not None


@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((150, 150), {"quality": 75}),
        ((150, 113), {"quality": 95, "subsampling": 0}),
        ((97, 180), {"quality": 60, "subsampling": 1}),
        ((150, 150), {"quality": 85, "progressive": True}),
        ((223, 41), {"quality": 90, "optimize": True}),
        ((8, 8), {}),
    ],
)
def test_small_jpeg_gives_pillows_pixels(
    size: tuple[int, int], options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jpeg(picture("forest", size, seed=size[0]), **options)
    assert _short_way_taken(data)
    fast, pillow = _outcome(data), _pillow_only(data, monkeypatch)
    assert isinstance(fast, np.ndarray) and isinstance(pillow, np.ndarray)
    assert fast.shape == (224, 224, 3)
    np.testing.assert_array_equal(fast, pillow)


def _turned(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(img, exif=exif)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_jpeg(picture("sea", (224, 150))), id="as-wide-as-the-model"),
        pytest.param(_jpeg(picture("sea", (300, 300))), id="larger"),
        pytest.param(_turned(picture("sea", (150, 100))), id="exif-turned"),
        pytest.param(_jpeg(picture("sea", (150, 100)).convert("L")), id="greyscale"),
        pytest.param(_jpeg(picture("sea", (150, 100)).convert("CMYK")), id="cmyk"),
    ],
)
def test_other_jpegs_are_left_to_pillow(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _short_way_taken(data)
    np.testing.assert_array_equal(_outcome(data), _pillow_only(data, monkeypatch))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_small_jpeg_with_broken_exif_gives_pillows_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff garbage"
    data = _jpeg(picture("glacier", (150, 120)), exif=broken)
    np.testing.assert_array_equal(_outcome(data), _pillow_only(data, monkeypatch))


def test_exif_turned_small_jpeg_is_turned() -> None:
    # Left half forest green, right half sea blue; EXIF says "rotate 90° clockwise to view".
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (40, 160, 50)
    arr[:, 40:] = (30, 70, 210)
    out = imaging.decode(_turned(Image.fromarray(arr)), (40, 40))
    assert out[5, 20, 1] > 120 and out[35, 20, 2] > 150, (out[5, 20], out[35, 20])


def test_damaged_small_jpegs_get_pillows_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes flipped, cut out or slipped in, each file still ending as a JPEG should.

    simplejpeg would decode many of these to a picture with a grey band, which
    is why it runs ``strict``: whatever Pillow refuses must still be refused
    (and quarantined), and whatever it accepts must come out the same.
    """
    base = _jpeg(picture("mountain", (150, 150), seed=3), quality=90)
    rnd = random.Random(7)
    verdicts: dict[str, int] = {}
    for trial in range(150):
        data = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            i = rnd.randrange(20, len(data) - 2)
            if trial % 3 == 0:
                data[i] = rnd.randrange(256)
            elif trial % 3 == 1:
                del data[i : i + rnd.randint(1, 200)]
            else:
                data[i:i] = rnd.randbytes(rnd.randint(1, 50))
        if not data.endswith(b"\xff\xd9"):
            data += b"\xff\xd9"
        fast, pillow = _outcome(bytes(data)), _pillow_only(bytes(data), monkeypatch)
        if isinstance(pillow, str):
            assert fast == pillow, trial
            verdicts[pillow] = verdicts.get(pillow, 0) + 1
        else:
            assert isinstance(fast, np.ndarray), (trial, fast)
            np.testing.assert_array_equal(fast, pillow)
            verdicts["decoded"] = verdicts.get("decoded", 0) + 1
    # The damage must have produced both verdicts, or this test compared nothing.
    assert verdicts.get("corrupt", 0) >= 10 and verdicts.get("decoded", 0) >= 10, verdicts


def test_truncated_small_jpeg_is_corrupt() -> None:
    data = _jpeg(picture("street", (150, 150)))
    assert _outcome(data[: len(data) * 2 // 3]) == "corrupt"

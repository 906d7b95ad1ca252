"""Turning file bytes into the pixel array a model expects.

Training, evaluation and the daemon all call :func:`decode`, so a model sees
exactly the same pixels in production as it did when it was measured.  Every
way an image can be unusable ends in :class:`Rejected` with a short, stable
reason code that the journal records and users can filter on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Pixels above which we refuse to decode (a 12 MP photo is 12e6; 100 MP is generous).
DEFAULT_MAX_PIXELS = 100_000_000

# Truncated files must raise, never decode to a half-grey image we would then file.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own size check below is the limit; Pillow's warning between its limit and
# twice that would only be noise in the logs.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class Rejected(Exception):
    """The bytes are not an image we can classify; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb guard agree with ours.

    Pillow keeps this limit in a module global; the daemon sets it once from
    its settings at start-up.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode(data: bytes, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    The image is turned upright by its EXIF orientation, flattened onto white
    if it has transparency, reduced to its first frame if animated, and
    centre-cropped to the target aspect ratio before resizing (so a 4:3 photo
    is not squashed).  Large JPEGs are decoded at a reduced scale via
    ``draft()``, which is most of the cost of a 12-megapixel photo.
    """
    if not data:
        raise Rejected("empty", "the file has zero bytes")
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise Rejected("decompression-bomb", f"{w}x{h} pixels exceeds the limit of {max_pixels}")
            if im.format == "JPEG":
                # draft() keeps both sides >= the request; asking for a square of the
                # larger side leaves enough pixels after EXIF rotation and the crop.
                side = max(height, width)
                im.draft("RGB", (side, side))
            im.load()
            rgb = _to_rgb(_upright(im))
    except Rejected:
        raise
    except Image.DecompressionBombError as exc:
        raise Rejected("decompression-bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise Rejected("not-an-image", "Pillow does not recognise this file as an image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise Rejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    fitted = ImageOps.fit(rgb, (width, height), Image.Resampling.BILINEAR)
    return np.asarray(fitted, dtype=np.uint8)


def _upright(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no orientation"
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB without clipping or dropping content."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 255.0 if im.mode == "F" and arr.max(initial=0) <= 255 else 65535.0
        scaled = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")

"""Turning file bytes into the pixel array a model expects.

Training, evaluation and the daemon all call :func:`decode`, so a model sees
exactly the same pixels in production as it did when it was measured.  Every
way an image can be unusable ends in :class:`Rejected` with a short, stable
reason code that the journal records and users can filter on.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

#: Pixels above which we refuse to decode (a 12 MP photo is 12e6; 100 MP is generous).
DEFAULT_MAX_PIXELS = 100_000_000

#: The EXIF thumbnail is used only for photos with at least this many times the
#: model's pixels: below that the full decode is cheap and sharper.
THUMBNAIL_MIN_RATIO = 16
#: How far the thumbnail's aspect ratio may stray from the photo's (rounding to
#: whole pixels); more means it was letterboxed or belongs to another picture.
THUMBNAIL_ASPECT_TOLERANCE = 0.02
_JPEG_EOI = b"\xff\xd9"

# Resizing one small photo is far too little work to share out; OpenCV's worker
# threads would only compete with the model's for the same cores.
cv2.setNumThreads(1)

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


#: Where the pixels a model saw came from; recorded in the log for each photo.
FROM_PHOTO = "photo"
FROM_PREVIEW = "exif-preview"


def decode(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail_min_side: int = 0,
) -> np.ndarray:
    """The pixels of :func:`decode_with_source`, for callers that need not know where they came from."""
    return decode_with_source(data, size, max_pixels, thumbnail_min_side)[0]


def decode_with_source(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail_min_side: int = 0,
) -> tuple[np.ndarray, str]:
    """Decode ``data`` to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    The image is turned upright by its EXIF orientation, flattened onto white
    if it has transparency, reduced to its first frame if animated, and
    centre-cropped to the target aspect ratio before resizing (so a 4:3 photo
    is not squashed).  JPEGs smaller than ``size`` take a shorter way to the
    same pixels (:func:`_small_jpeg_pixels`).  Large JPEGs are decoded at a reduced scale via
    ``draft()``; even so, Huffman-decoding every pixel of a large photo stays costly.
    With ``thumbnail_min_side`` > 0 a large JPEG whose camera-made EXIF
    thumbnail is at least that many pixels on its short side is classified
    from the thumbnail instead (see :func:`_exif_thumbnail` for the checks);
    the second value says which (:data:`FROM_PHOTO` or :data:`FROM_PREVIEW`).
    """
    if not data:
        raise Rejected("empty", "the file has zero bytes")
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise Rejected("decompression-bomb", f"{w}x{h} pixels exceeds the limit of {max_pixels}")
            small = _small_jpeg_pixels(im, data, size)
            if small is not None:
                return enlarge(small, width, height), FROM_PHOTO
            preview = None
            if im.format == "JPEG" and thumbnail_min_side > 0:
                preview = _exif_thumbnail(im, data, size, thumbnail_min_side)
            if preview is None and im.format == "JPEG":
                # draft() keeps both sides >= the request; asking for a square of the
                # larger side leaves enough pixels after EXIF rotation and the crop.
                side = max(height, width)
                im.draft("RGB", (side, side))
            source = im if preview is None else preview
            source.load()
            rgb = upright_rgb(source)
    except Rejected:
        raise
    except Image.DecompressionBombError as exc:
        raise Rejected("decompression-bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise Rejected("not-an-image", "Pillow does not recognise this file as an image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise Rejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    return fit(rgb, width, height), FROM_PHOTO if preview is None else FROM_PREVIEW


def fit(rgb: Image.Image, width: int, height: int) -> np.ndarray:
    """Centre-crop ``rgb`` to the target's aspect ratio and resize it to ``width`` x ``height``.

    The crop is :func:`PIL.ImageOps.fit`'s (rounded to whole pixels when
    enlarging, where a sub-pixel offset is lost in the interpolation).  Shrinking goes through Pillow's
    bilinear filter, which widens with the scale and so does not alias when a
    photo is reduced several times over.  Enlarging, the case of every 150 px
    training photo going to a 224 px model, goes through OpenCV instead: for an
    upscale both are the same interpolation (pixels agree within one level), but
    OpenCV's is several times faster, and Pillow's cost more than decoding the
    small JPEG itself.
    """
    left, top, crop_w, crop_h = _crop_box(*rgb.size, width, height)
    if crop_w >= width:
        resized = rgb.resize(
            (width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
        )
        return np.asarray(resized, dtype=np.uint8)
    return enlarge(np.asarray(rgb, dtype=np.uint8), width, height)


def enlarge(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """:func:`fit` for an RGB array smaller than the target: centre-crop, then OpenCV's bilinear."""
    left, top, crop_w, crop_h = _crop_box(pixels.shape[1], pixels.shape[0], width, height)
    x0, y0 = round(left), round(top)
    pixels = pixels[y0 : y0 + max(1, round(crop_h)), x0 : x0 + max(1, round(crop_w))]
    return cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=cv2.INTER_LINEAR)


def _crop_box(w: int, h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Left, top, width and height of the centred crop of a ``w`` x ``h`` image to the target's aspect."""
    target = width / height
    crop_w, crop_h = (h * target, h) if w / h >= target else (w, w / target)
    return (w - crop_w) / 2, (h - crop_h) / 2, crop_w, crop_h


def _small_jpeg_pixels(im: Image.Image, data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """The pixels of a plain JPEG smaller than the model's input, or None to decode it with Pillow.

    For a photo this small, Pillow's own Python around the decode cost as much
    as the decode: simplejpeg hands the same libjpeg-turbo output straight to
    an array, which shows in the daemon's rate on small photos.  The pixels are
    the same as Pillow's, byte for byte (the same library with the same
    settings; ``tests/test_imaging.py`` checks it).  Only the plain case is
    taken: 8-bit RGB that EXIF does not turn, and ``strict`` decoding, which
    raises at the first warning of damaged data, so every damaged file still
    goes through Pillow and gets Pillow's verdict.
    """
    height, width = size
    w, h = im.size
    if im.format != "JPEG" or im.mode != "RGB" or w >= width or h >= height:
        return None
    try:
        if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            return None
    except Exception:  # noqa: BLE001 - broken EXIF is Pillow's to judge, as in _upright
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
    return pixels if pixels.shape == (h, w, 3) else None


def _exif_thumbnail(im: Image.Image, data: bytes, size: tuple[int, int], min_side: int) -> Image.Image | None:
    """The photo's EXIF (IFD1) thumbnail, loaded, or None to decode the photo itself.

    The thumbnail carries the photo's EXIF block, so :func:`_upright` turns it
    exactly as it turns the photo (a preview is stored as the sensor saw it).

    Cameras and phones store a preview (160x120 up to about 512x384) in nearly
    every JPEG.  From 240 px on it carries, at the model's resolution, nearly
    what the photo does (the training images are 150 px; smaller previews cost
    accuracy, see ``thumbnail_min_side``), and reading it skips the full
    Huffman decode.  It is trusted only when it can stand for the photo:

    - the photo is large (``THUMBNAIL_MIN_RATIO`` times the model's pixels);
    - the file ends with the JPEG end-of-image marker, so a truncated photo
      still gets the full decode that rejects it as corrupt (a file with data
      appended after the image, such as a motion photo, is simply decoded);
    - the thumbnail is itself a JPEG, at least ``min_side`` pixels on its short
      side, and has the photo's aspect ratio (a letterboxed or stale preview
      from another crop does not).
    """
    w, h = im.size
    if w * h < THUMBNAIL_MIN_RATIO * size[0] * size[1] or not data.endswith(_JPEG_EOI):
        return None
    try:
        exif = im.getexif()
        ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
        offset = ifd1.get(ExifTags.Base.JpegIFOffset)
        length = ifd1.get(ExifTags.Base.JpegIFByteCount)
        raw = im.info.get("exif", b"")
        if not (isinstance(offset, int) and isinstance(length, int) and raw.startswith(b"Exif\x00\x00")):
            return None
        blob = raw[6 + offset : 6 + offset + length]
        if len(blob) != length:
            return None
        with Image.open(io.BytesIO(blob)) as thumb:
            if thumb.format != "JPEG":
                return None
            tw, th = thumb.size
            if (
                tw * th >= w * h
                or min(tw, th) < min_side
                or abs(tw / th - w / h) > THUMBNAIL_ASPECT_TOLERANCE * (w / h)
            ):
                return None
            thumb.load()
        thumb.info["exif"] = raw
        return thumb
    except Exception:  # noqa: BLE001 - a broken preview only means "decode the photo"
        return None


def upright_rgb(im: Image.Image) -> Image.Image:
    """The image as a person sees it: turned by its EXIF orientation, in 8-bit RGB."""
    return _to_rgb(_upright(im))


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

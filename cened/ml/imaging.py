"""Turning file bytes into the pixel array a model expects.

Training, evaluation and the daemon all call :func:`decode`, so a model sees
exactly the same pixels in production as it did when it was measured.  Every
way an image can be unusable ends in :class:`Rejected` with a short, stable
reason code that the journal records and users can filter on.

Pillow reads the common formats and AVIF; the ``pillow-heif`` plugin, registered
here, adds HEIF/HEIC.  Camera RAW files go through LibRaw (``rawpy``) instead and
are classified from the preview the camera embedded (:func:`_raw_preview`).
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pillow_heif
import rawpy
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
# HEIF/HEIC through Pillow from here on.  One libheif thread per photo, as for OpenCV:
# the daemon already decodes several photos at once.  Depth maps and other auxiliary
# images are never looked at, so they are not even listed.
pillow_heif.register_heif_opener(decode_threads=1, depth_images=False, aux_images=False)

#: How RAW formats that are not TIFF files begin: Fujifilm RAF, Olympus ORF, Panasonic RW2.
_RAW_MAGIC = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
#: TIFF, as DNG, CR2, NEF, ARW, PEF and most other RAW formats are at heart (and plain TIFFs too).
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
#: EXIF orientation for each of LibRaw's ``sizes.flip`` values (dcraw's, the other way round).
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


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
#: A HEIF's own thumbnail item (iPhones store one beside every photo).
FROM_HEIF_THUMBNAIL = "heif-thumbnail"
#: The preview a camera embeds in its RAW file (a RAW is never demosaiced here).
FROM_RAW_PREVIEW = "raw-preview"


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
    A large HEIF is classified from its own thumbnail by the same rule
    (:data:`FROM_HEIF_THUMBNAIL`), a camera RAW always from its embedded preview
    (:data:`FROM_RAW_PREVIEW`, :func:`_raw_preview`).
    """
    if not data:
        raise Rejected("empty", "the file has zero bytes")
    raw = _raw_preview(data, size, max_pixels)
    if raw is not None:
        return raw
    _check_boxes(data)
    height, width = size
    heif_thumbnail = False
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
            if im.format == "HEIF" and thumbnail_min_side > 0:
                heif_thumbnail = _use_heif_thumbnail(im, size, thumbnail_min_side)
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
    if heif_thumbnail:
        return fit(rgb, width, height), FROM_HEIF_THUMBNAIL
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


def _use_heif_thumbnail(im: Image.Image, size: tuple[int, int], min_side: int) -> bool:
    """Make ``im`` (a HEIF) load its own thumbnail instead of the photo, where one can stand for it.

    A 12 MP HEIC costs far more to decode than a JPEG (HEVC, and no reduced-scale
    decode), and phones store a thumbnail item beside the photo.  The same rules
    as for a JPEG's EXIF preview (:func:`_exif_thumbnail`): a large photo, a
    thumbnail at least ``min_side`` on its short side.  pillow-heif's ``draft()``
    takes only a scaled copy of the photo (the same shape, rotation, crop and
    colour profile), and the smallest one that is large enough.  Truncated files
    never get here (:func:`_check_boxes`).
    """
    w, h = im.size
    if w * h < THUMBNAIL_MIN_RATIO * size[0] * size[1]:
        return False
    try:
        return im.draft(im.mode, (min_side, min_side)) is not None
    except Exception:  # noqa: BLE001 - a broken thumbnail only means "decode the photo"
        return False


def _check_boxes(data: bytes) -> None:
    """Reject an ISO media file (HEIF, AVIF) whose boxes run past its end: it was cut short.

    libheif decodes a grid image (every iPhone photo is one) with tiles missing
    and no error, and the thumbnail may survive a cut that the photo does not,
    so a truncated HEIC would be classified and filed.  Every box states its
    length, which makes the check cheap; bytes after the last box that are no box
    (appended by some other tool) are left alone, as after a JPEG's end.
    """
    if data[4:8] != b"ftyp":
        return
    at, end = 0, len(data)
    while at + 8 <= end:
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if not (kind.isascii() and kind.decode("ascii").isprintable()):
            return
        if length == 1 and at + 16 <= end:  # a 64-bit length follows the type
            length = int.from_bytes(data[at + 8 : at + 16], "big")
        elif length == 0:  # the last box, running to the end of the file
            return
        if length < 8:
            return
        if at + length > end:
            box = kind.decode("ascii")
            raise Rejected("corrupt", f"truncated: its '{box}' box ends at byte {at + length} of {end}")
        at += length


def _raw_preview(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, str] | None:
    """The pixels of a camera RAW file's embedded preview, or None when the file is no RAW.

    Every camera embeds a JPEG (sometimes a bitmap) preview in its RAW files, made
    by the camera from the same exposure; LibRaw finds the largest.  Developing the
    sensor data instead would cost many times more.  The sensor data is still
    unpacked once, without developing it: that is what proves the file whole, since
    the preview usually comes before it and would survive a truncated copy.

    None for data LibRaw does not take as RAW.  A TIFF may be both, such as a 16-bit
    scan, which LibRaw reads as a raw image with no preview: that is None too when
    Pillow can open it, and Pillow decodes it as before.  A RAW with no preview
    that Pillow can read either is ``raw-without-preview``.
    """
    if not (data.startswith(_RAW_MAGIC + _TIFF_MAGIC) or data[4:12] == b"ftypcrx "):  # CR3 is ISO media
        return None
    with rawpy.RawPy() as raw:
        try:
            raw.open_buffer(io.BytesIO(data))
        except rawpy.LibRawFileUnsupportedError:
            if data.startswith(_TIFF_MAGIC):
                return None  # an ordinary TIFF: Pillow's
            raise Rejected("corrupt", "LibRaw does not recognise this RAW file") from None
        except rawpy.LibRawError as exc:
            raise Rejected("corrupt", f"LibRaw cannot open it: {_libraw_message(exc)}") from exc
        sizes = raw.sizes
        if sizes.raw_width * sizes.raw_height > max_pixels:
            raise Rejected(
                "decompression-bomb",
                f"{sizes.raw_width}x{sizes.raw_height} sensor pixels exceeds the limit of {max_pixels}",
            )
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError) as exc:
            thumb = None
            missing = _libraw_message(exc)
        except rawpy.LibRawError as exc:
            raise Rejected("corrupt", f"reading its preview: {_libraw_message(exc)}") from exc
        try:
            raw.unpack()
        except rawpy.LibRawError as exc:
            raise Rejected("corrupt", f"its sensor data: {_libraw_message(exc)}") from exc
        orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
    if thumb is None:
        if data.startswith(_TIFF_MAGIC) and _pillow_opens(data):
            return None
        raise Rejected("raw-without-preview", f"the RAW file embeds no preview we can read ({missing})")
    try:
        preview = _raw_thumbnail_image(thumb, orientation)
        rgb = upright_rgb(preview)
    except Image.DecompressionBombError as exc:
        raise Rejected("decompression-bomb", f"its preview: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        detail = f"its preview does not decode: {type(exc).__name__}: {exc}"
        raise Rejected("raw-without-preview", detail) from exc
    return fit(rgb, size[1], size[0]), FROM_RAW_PREVIEW


def _raw_thumbnail_image(thumb: rawpy.Thumbnail, orientation: int) -> Image.Image:
    """A RAW's preview as a loaded Pillow image carrying the orientation it is to be shown in.

    A JPEG preview's own EXIF orientation wins (LibRaw writes the RAW's into
    previews that have no EXIF block); a preview stored without one, or with
    "as stored", takes the RAW's (``sizes.flip``).
    """
    if thumb.format == rawpy.ThumbFormat.JPEG:
        im = Image.open(io.BytesIO(thumb.data))
        im.load()
    else:
        pixels = np.asarray(thumb.data)
        if pixels.dtype != np.uint8:  # 16-bit bitmap previews
            pixels = (pixels.astype(np.uint32) >> 8).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[..., 0]
        im = Image.fromarray(np.ascontiguousarray(pixels))
    exif = im.getexif()
    if exif.get(ExifTags.Base.Orientation, 1) == 1:
        exif[ExifTags.Base.Orientation] = orientation
    return im


def _pillow_opens(data: bytes) -> bool:
    """Whether Pillow recognises ``data`` as an image (it decodes nothing yet)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001 - whatever Pillow objects to, it is not its image
        return False


def _libraw_message(exc: Exception) -> str:
    """LibRaw's errors carry its message as bytes."""
    text = exc.args[0] if exc.args else type(exc).__name__
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


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

"""Turning file bytes into the pixel array a model expects.

Training, evaluation and the daemon all call :func:`decode`, so a model sees
exactly the same pixels in production as it did when it was measured.  Every
way an image can be unusable ends in :class:`Rejected` with a short, stable
reason code that the journal records and users can filter on.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import IO

import numpy as np
import pillow_heif
import rawpy
import simplejpeg
from PIL import ExifTags, Image, ImageFile, ImageMode, ImageOps, PngImagePlugin, UnidentifiedImageError

#: The most pixels a file may claim per byte it holds; more is a decompression bomb.  The
#: densest images made to test this hold about 1,300 (a flat GIF) and 830 (a flat PNG,
#: deflate's best); real photos hold well under 100 (a 200 MP HEIC, 10 MB, holds 20).
#: A few hundred bytes that claim gigapixels are refused whatever route would read them.
MAX_PIXELS_PER_BYTE = 2000
#: Bytes one decode may hold when no shared :class:`MemoryBudget` says otherwise.
DEFAULT_MAX_DECODE_BYTES = 512 * 2**20

#: The formats decoded, each with the bytes its Pillow decoder holds at its peak
#: per byte of the image it makes (the image included), measured and rounded up.
#: Anything else is refused unread: icons, textures and game formats (ICO, ICNS,
#: BLP, DDS...) are not photos, and some hold a picture far larger than their
#: header says, so their cost cannot be known before decoding.
DECODERS: dict[str, float] = {
    "JPEG": 1.5,
    "MPO": 1.5,
    "PNG": 1.25,
    "GIF": 1.25,
    "BMP": 1.25,
    "DIB": 1.25,
    "TIFF": 1.5,
    "WEBP": 4.5,
    "AVIF": 5.0,
    # libheif's YCbCr planes beside the RGB image (7.2 bytes per pixel for a 36 MP
    # HEIC of 512 px tiles, where 5.0 had estimated 20).
    "HEIF": 2.0,
    "JPEG2000": 7.0,
    "PPM": 1.25,
    "TGA": 1.25,
    "PCX": 1.25,
    "SGI": 2.0,
    "QOI": 2.5,
}
#: A progressive JPEG keeps every DCT coefficient of the whole photo, at any
#: draft scale: two bytes per sample.
COEFFICIENT_BYTES = 2
#: Previews larger than this are not used, which bounds what loading one costs.
PREVIEW_MAX_PIXELS = 2_000_000
#: Images up to this size (decoded bytes) that need no reduction take the direct
#: way, which holds a few whole copies (turned, flattened, converted) at once.
DIRECT_MAX_BYTES = 4 * 2**20
DIRECT_COPIES = 6
#: Larger images are converted a strip of rows at a time, each strip about this big.
STRIP_BYTES = 4 * 2**20
#: What converting one pixel of a strip holds at most (16-bit samples go through float64).
STRIP_BYTES_PER_PIXEL = 32
#: Pillow keeps 2-, 3- and 4-band images in 4 bytes per pixel.
RGB_PIXEL_BYTES = 4
#: Allocations from this size up get a mapping of their own, returned to the system when freed.
MMAP_THRESHOLD = 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number

#: The EXIF thumbnail is used only for photos with at least this many times the
#: model's pixels: below that the full decode is cheap and sharper.
THUMBNAIL_MIN_RATIO = 16
#: How far the thumbnail's aspect ratio may stray from the photo's (rounding to
#: whole pixels); more means it was letterboxed or belongs to another picture.
THUMBNAIL_ASPECT_TOLERANCE = 0.02
_JPEG_EOI = b"\xff\xd9"

# Truncated files must raise, never decode to a half-grey image we would then file.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# What decoding costs in bytes (decode_cost) and the pixels per byte of the file
# (MAX_PIXELS_PER_BYTE) decide, not a pixel count: Pillow's limit of 89 MP would
# refuse what a current phone shoots (200 MP) before its thumbnail could be read.
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# HEIF/HEIC through Pillow from here on.  One libheif thread per photo:
# the daemon already decodes several photos at once.  Depth maps and other auxiliary
# images are never looked at, so they are not even listed.
pillow_heif.register_heif_opener(decode_threads=1, depth_images=False, aux_images=False)

#: How RAW formats that are not TIFF files begin: Fujifilm RAF, Olympus ORF, Panasonic RW2.
_RAW_MAGIC = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
#: TIFF, as DNG, CR2, NEF, ARW, PEF and most other RAW formats are at heart (and plain TIFFs too).
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
#: EXIF orientation for each of LibRaw's ``sizes.flip`` values (dcraw's, the other way round).
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
# PNG text chunks are decompressed when the header is read, outside any budget;
# a photo needs none of them, so a small allowance is plenty.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 2**20


class Reason(StrEnum):
    """Why a file has no pixels: the stable codes the journal records and users filter on."""

    EMPTY = "empty"
    NOT_AN_IMAGE = "not-an-image"
    UNSUPPORTED = "unsupported"
    CORRUPT = "corrupt"
    DECOMPRESSION_BOMB = "decompression-bomb"
    TOO_LARGE = "too-large"
    UNREADABLE = "unreadable"
    RAW_WITHOUT_PREVIEW = "raw-without-preview"
    DECODER_FAILED = "decoder-failed"  # a decoder raised what it should not have: its bug, this file's fate


#: What a file still being written can look like: cut short, or no header yet.
MAYBE_UNFINISHED = frozenset({Reason.EMPTY, Reason.NOT_AN_IMAGE, Reason.CORRUPT})


class Rejected(Exception):
    """The bytes are not an image we can classify; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MemoryBudget:
    """Bytes that the decodes in flight may hold together, shared by the decoding threads.

    A decode states what it will hold at most (:func:`decode_cost`) and waits
    until that much is free, first come first served, so however many threads
    decode, their images together stay within ``capacity``.  One that could
    never fit is refused at once as too large.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._next = 0  # ticket of the next arrival
        self._serving = 0  # ticket whose turn it is
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the body of the ``with``."""
        if nbytes > self.capacity:
            raise Rejected(
                Reason.TOO_LARGE,
                f"decoding needs about {_mib(nbytes)} MiB, more than the {_mib(self.capacity)} MiB"
                " allowed (decode_memory_mb)",
            )
        with self._cond:
            ticket = self._next
            self._next += 1
            # In turn, so a large image is not starved by a stream of small ones.
            self._cond.wait_for(lambda: ticket == self._serving and self._used + nbytes <= self.capacity)
            self._used += nbytes
            self._serving += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


def release_freed_images() -> bool:
    """Make the C allocator give every large freed buffer back to the system at once.

    glibc raises its mmap threshold after the first large free, so later images
    come from per-thread heaps that each keep their own peak: with several
    decoding threads the process would hold the sum of their peaks, not the
    peak of their sum that a :class:`MemoryBudget` bounds.  A fixed threshold
    stops that.  Process-wide; returns whether it applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _mib(nbytes: int) -> int:
    return math.ceil(nbytes / 2**20)


#: Where the pixels a model saw came from; recorded in the log for each photo.
FROM_PHOTO = "photo"
FROM_PREVIEW = "exif-preview"
#: A camera JPEG's large preview, stored after the photo as a second image (CIPA MPF).
FROM_MPF_PREVIEW = "mpf-preview"
#: A HEIF's own thumbnail item (iPhones store one beside every photo).
FROM_HEIF_THUMBNAIL = "heif-thumbnail"
#: The preview a camera embeds in its RAW file (a RAW is never demosaiced here).
FROM_RAW_PREVIEW = "raw-preview"


def decode(
    data: bytes,
    size: tuple[int, int],
    thumbnail_min_side: int = 0,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """The pixels of :func:`decode_with_source`, for callers that need not know where they came from."""
    return decode_with_source(data, size, thumbnail_min_side, max_bytes)[0]


def decode_with_source(
    data: bytes,
    size: tuple[int, int],
    thumbnail_min_side: int = 0,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
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

    Before any pixel is decoded, what the decode will hold at its peak is
    worked out from the header (:func:`decode_cost`), by the route it will
    take (a thumbnail, a reduced decode or the whole image); more than
    ``max_bytes`` is refused as too large, and a file that claims more pixels
    than its bytes can hold as a decompression bomb.  Whatever goes wrong with
    the file's content ends in :class:`Rejected`, never in another exception.
    """
    if not data:
        raise Rejected(Reason.EMPTY, "the file has zero bytes")
    raw = _raw_preview(data, size)
    if raw is not None:
        return raw
    _check_boxes(data)
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as im:
            stored = im.size
            cost = _plan(im, size, thumbnail_min_side, len(data))
            if cost > max_bytes:
                raise Rejected(
                    Reason.TOO_LARGE,
                    f"{stored[0]}x{stored[1]} {im.format} {im.mode}: decoding needs about {_mib(cost)} MiB,"
                    f" more than the {_mib(max_bytes)} MiB allowed (decode_memory_mb)",
                )
            small = _small_jpeg_pixels(im, data, size)
            if small is not None:
                return enlarge(small, width, height), FROM_PHOTO
            if im.format in ("JPEG", "MPO") and thumbnail_min_side > 0:
                preview = _exif_thumbnail(im, data, size, thumbnail_min_side, stored)
                if preview is not None:
                    return fit(upright_rgb(preview), width, height), FROM_PREVIEW
                preview = _mpf_preview(im, data, size, thumbnail_min_side, stored)
                if preview is not None:
                    return fit(upright_rgb(preview), width, height), FROM_MPF_PREVIEW
            im.load()
            # _plan() chose a HEIF's thumbnail where one can stand for the photo.
            source = FROM_HEIF_THUMBNAIL if im.format == "HEIF" and im.size != stored else FROM_PHOTO
            return _fit_loaded(im, width, height), source
    except Rejected:
        raise
    except UnidentifiedImageError as exc:
        raise Rejected(Reason.NOT_AN_IMAGE, "Pillow does not recognise this file as an image") from exc
    except NotImplementedError as exc:
        raise Rejected(Reason.UNSUPPORTED, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # whatever a decoder raises is this file's fault, never the daemon's
        raise Rejected(Reason.CORRUPT, f"{type(exc).__name__}: {exc}") from exc


def decode_cost(
    fp: IO[bytes], size: tuple[int, int], thumbnail_min_side: int = 0, limit: int | None = None
) -> int | None:
    """The bytes :func:`decode_with_source` will hold at most for the file open as ``fp``.

    Read from the header alone, so a caller can wait for room in a
    :class:`MemoryBudget` before reading the whole file.  None when the header
    says nothing usable: decoding will then say what is wrong.

    A HEIF that lists a thumbnail is costed as its whole photo, at most
    ``limit``: whether a thumbnail can stand for the photo is known only once
    pillow-heif has decoded it, and deciding that here decoded it twice.  The
    decode, given the result as its ``max_bytes``, still refuses a photo
    dearer than that when no thumbnail stands.
    """
    try:
        nbytes = os.fstat(fp.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        nbytes = fp.seek(0, io.SEEK_END)
        fp.seek(0)
    try:
        with Image.open(fp) as im:
            if im.format == "HEIF" and thumbnail_min_side > 0 and im.info.get("thumbnails"):
                whole = _plan(im, size, 0, nbytes)
                return whole if limit is None else min(whole, limit)
            return _plan(im, size, thumbnail_min_side, nbytes)
    except Exception:  # noqa: BLE001 - the decode itself gives the verdict
        return None


def check_density(pixels: int, nbytes: int, what: str) -> None:
    """Refuse a file whose header claims more pixels than ``nbytes`` can hold (MAX_PIXELS_PER_BYTE)."""
    if pixels > MAX_PIXELS_PER_BYTE * max(nbytes, 1):
        raise Rejected(
            Reason.DECOMPRESSION_BOMB,
            f"{what} claims {pixels} pixels in {nbytes} bytes, more than"
            f" {MAX_PIXELS_PER_BYTE} pixels per byte that any image holds",
        )


def _plan(im: Image.Image, size: tuple[int, int], thumbnail_min_side: int, nbytes: int) -> int:
    """Check an opened image, choose the route its decode takes, and return that route's cost in bytes.

    The cost is the decoder's peak (its own buffers and the image), plus what
    turning the image into the model's input holds beside it.  A JPEG's
    ``draft()`` is applied here, and so is the choice of a HEIF's thumbnail,
    so the decode that follows is the one costed.  ``nbytes`` is the file's
    size, against which the pixels the header claims are checked.
    """
    fmt = im.format or "unknown"
    overhead = DECODERS.get(fmt)
    if overhead is None:
        raise Rejected(Reason.UNSUPPORTED, f"{fmt} is not a photo format cened decodes")
    w, h = im.size
    check_density(w * h, nbytes, f"its {w}x{h} {fmt} header")
    cost = 0
    if fmt in ("JPEG", "MPO"):
        if im.info.get("progressive"):
            cost += math.ceil(COEFFICIENT_BYTES * w * h * _jpeg_samples_per_pixel(im))
        cost += math.ceil(PREVIEW_MAX_PIXELS * RGB_PIXEL_BYTES * overhead)  # a preview tried first
        # draft() keeps both sides >= the request; asking for a square of the
        # larger side leaves enough pixels after EXIF rotation and the crop.
        side = max(size)
        im.draft("RGB", (side, side))
        w, h = im.size
    elif fmt == "HEIF" and thumbnail_min_side > 0 and _use_heif_thumbnail(im, size, thumbnail_min_side):
        w, h = im.size
    cost += math.ceil(_image_bytes(im.mode, w, h) * overhead)
    # The orientation is not always known before decoding (a PNG may store its
    # EXIF after the pixels), so the dearer of the two ways to turn it counts.
    return cost + max(_fit_cost(im.mode, w, h, size, swap) for swap in (False, True))


def _jpeg_samples_per_pixel(im: Image.Image) -> float:
    """Samples a JPEG stores per pixel, all components together (1.5 for the usual 4:2:0 colour)."""
    layers = getattr(im, "layer", None)
    if not layers:
        return 4.0
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    return sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max)


def _image_bytes(mode: str, w: int, h: int) -> int:
    """What Pillow allocates for a ``w`` x ``h`` image of ``mode``."""
    try:
        desc = ImageMode.getmode(mode)
    except KeyError:
        return w * h * RGB_PIXEL_BYTES
    per_pixel = RGB_PIXEL_BYTES if len(desc.bands) > 1 else int(desc.typestr[-1])
    return w * h * per_pixel


@dataclass(frozen=True)
class _Reduction:
    """The part of a stored image the model will see, and the whole factor it can be shrunk by first."""

    box: tuple[int, int, int, int]  # left, top, right, bottom in stored (not upright) pixels
    factor: int

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def _reduction(w: int, h: int, size: tuple[int, int], swap: bool) -> _Reduction:
    """The crop :func:`fit` will take, in stored pixels (``swap``: EXIF turns the image a quarter).

    The factor leaves at least twice the model's size, as Pillow's own
    ``reducing_gap=2`` does, so the final resize still has pixels to average.
    """
    height, width = size
    upright_w, upright_h = (h, w) if swap else (w, h)
    _, _, crop_w, crop_h = _crop_box(upright_w, upright_h, width, height)
    factor = max(1, int(min(crop_w / width, crop_h / height) / 2))
    box_w, box_h = (crop_h, crop_w) if swap else (crop_w, crop_h)
    left, top = max(0, math.floor((w - box_w) / 2)), max(0, math.floor((h - box_h) / 2))
    right, bottom = min(w, math.ceil((w + box_w) / 2)), min(h, math.ceil((h + box_h) / 2))
    return _Reduction((left, top, max(right, left + 1), max(bottom, top + 1)), factor)


def _direct(mode: str, w: int, h: int, reduction: _Reduction) -> bool:
    """Whether an image is small enough, and too small to shrink, for the direct way (:func:`upright_rgb`)."""
    return reduction.factor < 2 and _image_bytes(mode, w, h) <= DIRECT_MAX_BYTES


def _strip_rows(width: int, factor: int) -> int:
    """Rows per strip: about STRIP_BYTES, and a whole number of reduction blocks."""
    return max(factor, STRIP_BYTES // (width * STRIP_BYTES_PER_PIXEL) // factor * factor)


def _fit_cost(mode: str, w: int, h: int, size: tuple[int, int], swap: bool) -> int:
    """What :func:`_fit_loaded` holds beside the decoded image."""
    r = _reduction(w, h, size, swap)
    if _direct(mode, w, h, r):
        return DIRECT_COPIES * _image_bytes(mode, w, h)
    reduced = math.ceil(r.width / r.factor) * math.ceil(r.height / r.factor) * RGB_PIXEL_BYTES
    # The reduced image, once turned, and one strip in conversion.
    return 2 * reduced + _strip_rows(r.width, r.factor) * r.width * STRIP_BYTES_PER_PIXEL


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}


def _fit_loaded(im: Image.Image, width: int, height: int) -> np.ndarray:
    """:func:`fit` of the upright RGB image, holding little beside the decoded one.

    Small images take the direct way.  Others are cropped, converted and
    shrunk by a whole factor a strip at a time, then turned by their EXIF
    orientation: the whole image is never copied, converted or turned.
    """
    w, h = im.size
    method = _TRANSPOSE.get(_orientation(im))
    reduction = _reduction(w, h, (height, width), method in _QUARTER_TURNS)
    if _direct(im.mode, w, h, reduction):
        return fit(upright_rgb(im), width, height)
    reduced = _reduced_rgb(im, reduction)
    return fit(reduced.transpose(method) if method is not None else reduced, width, height)


def _orientation(im: Image.Image) -> object:
    """The EXIF orientation value; a broken EXIF block means none (as in :func:`_upright`)."""
    try:
        return im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no orientation"
        return 1


def _reduced_rgb(im: Image.Image, reduction: _Reduction) -> Image.Image:
    """The reduction's box of ``im`` in 8-bit RGB, shrunk by its factor, converted a strip at a time."""
    left, top, right, bottom = reduction.box
    k = reduction.factor
    out = Image.new("RGB", (math.ceil(reduction.width / k), math.ceil(reduction.height / k)))
    peak = _sample_peak(im)
    rows = _strip_rows(reduction.width, k)
    for y in range(top, bottom, rows):
        strip = _to_rgb(im.crop((left, y, right, min(y + rows, bottom))), peak)
        out.paste(strip.reduce(k) if k > 1 else strip, (0, (y - top) // k))
    return out


def fit(rgb: Image.Image, width: int, height: int) -> np.ndarray:
    """Centre-crop ``rgb`` to the target's aspect ratio and resize it to ``width`` x ``height``.

    The crop is :func:`PIL.ImageOps.fit`'s.  Pillow's bilinear filter widens with
    the scale, so a photo reduced several times over does not alias; enlarging
    (every 150 px training photo going to the model's 160 px) it is plain bilinear
    interpolation.  Pillow, not OpenCV: its 173 MB were a third of the install,
    for this one call.
    """
    left, top, crop_w, crop_h = _crop_box(*rgb.size, width, height)
    resized = rgb.resize(
        (width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
    )
    return np.asarray(resized, dtype=np.uint8)


def enlarge(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """:func:`fit` for an RGB array (a small photo decoded straight to one)."""
    return fit(Image.fromarray(pixels), width, height)


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


def _exif_thumbnail(
    im: Image.Image, data: bytes, size: tuple[int, int], min_side: int, stored: tuple[int, int]
) -> Image.Image | None:
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
      from another crop does not);
    - it is no larger than PREVIEW_MAX_PIXELS, which :func:`decode_cost` counts on.

    ``stored`` is the photo's size as stored, before any ``draft()``.
    """
    w, h = stored
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
                or tw * th > PREVIEW_MAX_PIXELS
                or min(tw, th) < min_side
                or abs(tw / th - w / h) > THUMBNAIL_ASPECT_TOLERANCE * (w / h)
            ):
                return None
            thumb.load()
        thumb.info["exif"] = raw
        return thumb
    except Exception:  # noqa: BLE001 - a broken preview only means "decode the photo"
        return None


def _mpf_preview(
    im: Image.Image, data: bytes, size: tuple[int, int], min_side: int, stored: tuple[int, int]
) -> Image.Image | None:
    """A camera JPEG's large preview (an MPF "large thumbnail"), loaded, or None to decode the photo.

    Cameras store a 1-2 MP copy of the photo after it in the same file (CIPA
    DC-007: VGA- or Full-HD-sized "large thumbnails"), which decodes at 1/8
    scale in a few milliseconds where the photo's own Huffman data costs tens.
    Only those two image types are taken: other second images are another eye
    of a stereo pair, a panorama's next frame or a phone's HDR gain map.  The
    same rules as for the EXIF preview (:func:`_exif_thumbnail`): a large photo,
    a preview at least ``min_side`` on its short side and of the photo's shape.
    It comes after the photo, so a preview that ends in the file with its
    end-of-image marker proves the photo's bytes all there.
    """
    w, h = stored
    if im.format != "MPO" or w * h < THUMBNAIL_MIN_RATIO * size[0] * size[1]:
        return None
    try:
        base = _mpf_base(data)
        entries = getattr(im, "mpinfo", {}).get(0xB002, [])
        if base is None:
            return None
        for entry in sorted(entries[1:], key=lambda e: e["Size"]):  # the smallest good one is cheapest
            if not str(entry["Attribute"]["MPType"]).startswith("Large Thumbnail"):
                continue
            start = base + entry["DataOffset"]
            blob = data[start : start + entry["Size"]]
            if len(blob) != entry["Size"] or not (blob.startswith(b"\xff\xd8") and blob.endswith(_JPEG_EOI)):
                continue
            preview = Image.open(io.BytesIO(blob))
            tw, th = preview.size
            if (
                preview.format != "JPEG"
                or tw * th >= w * h
                or min(tw, th) < min_side
                or abs(tw / th - w / h) > THUMBNAIL_ASPECT_TOLERANCE * (w / h)
            ):
                continue
            side = max(size)
            preview.draft("RGB", (side, side))
            if preview.size[0] * preview.size[1] > PREVIEW_MAX_PIXELS:
                continue
            preview.load()
            # Stored as the sensor saw it, like the photo: the photo's EXIF turns it.
            preview.info["exif"] = im.info.get("exif", b"")
            return preview
    except Exception:  # noqa: BLE001 - a broken preview only means "decode the photo"
        return None
    return None


def _mpf_base(data: bytes) -> int | None:
    """Where the MPF offsets count from (its TIFF header, in the APP2 segment), or None without one."""
    at = 2
    while at + 8 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in (0xDA, 0xD9):  # the image data begins: no more headers
            return None
        if marker == 0xE2 and data[at + 4 : at + 8] == b"MPF\x00":
            return at + 8
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
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
            raise Rejected(Reason.CORRUPT, f"truncated: its '{box}' box ends at byte {at + length} of {end}")
        at += length


def _raw_preview(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, str] | None:
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
            raise Rejected(Reason.CORRUPT, "LibRaw does not recognise this RAW file") from None
        except rawpy.LibRawError as exc:
            raise Rejected(Reason.CORRUPT, f"LibRaw cannot open it: {_libraw_message(exc)}") from exc
        sizes = raw.sizes
        check_density(sizes.raw_width * sizes.raw_height, len(data), "its sensor")
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError) as exc:
            thumb = None
            missing = _libraw_message(exc)
        except rawpy.LibRawError as exc:
            raise Rejected(Reason.CORRUPT, f"reading its preview: {_libraw_message(exc)}") from exc
        try:
            raw.unpack()
        except rawpy.LibRawError as exc:
            raise Rejected(Reason.CORRUPT, f"its sensor data: {_libraw_message(exc)}") from exc
        orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
    if thumb is None:
        if data.startswith(_TIFF_MAGIC) and _pillow_opens(data):
            return None
        raise Rejected(Reason.RAW_WITHOUT_PREVIEW, f"the RAW file embeds no preview we can read ({missing})")
    try:
        preview = _raw_thumbnail_image(thumb, orientation, size)
        rgb = upright_rgb(preview)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        detail = f"its preview does not decode: {type(exc).__name__}: {exc}"
        raise Rejected(Reason.RAW_WITHOUT_PREVIEW, detail) from exc
    return fit(rgb, size[1], size[0]), FROM_RAW_PREVIEW


def _raw_thumbnail_image(thumb: rawpy.Thumbnail, orientation: int, size: tuple[int, int]) -> Image.Image:
    """A RAW's preview as a loaded Pillow image carrying the orientation it is to be shown in.

    A JPEG preview's own EXIF orientation wins (LibRaw writes the RAW's into
    previews that have no EXIF block); a preview stored without one, or with
    "as stored", takes the RAW's (``sizes.flip``).  Many cameras embed a preview
    of the sensor's full size: it is decoded at the smallest scale that still
    gives the model's ``size``, as a large JPEG is (:func:`_plan`).
    """
    if thumb.format == rawpy.ThumbFormat.JPEG:
        im = Image.open(io.BytesIO(thumb.data))
        check_density(im.size[0] * im.size[1], len(thumb.data), "its preview")
        side = max(size)
        im.draft("RGB", (side, side))
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


_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _sample_peak(im: Image.Image) -> float:
    """The sample value shown as white in a 16- or 32-bit image, judged on the whole image."""
    if im.mode == "F":
        extrema = im.getextrema()
        high = extrema[1] if isinstance(extrema, tuple) else 0
        return 255.0 if isinstance(high, int | float) and high <= 255 else 65535.0
    return 65535.0


def _to_rgb(im: Image.Image, peak: float | None = None) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB without clipping or dropping content.

    ``peak`` (from :func:`_sample_peak` of the whole image) keeps the strips
    of one image on one scale.
    """
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im, dtype=np.float64)
        if peak is None:
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

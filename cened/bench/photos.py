"""Made-up photos, as the benchmark, the evaluation and the tests need them.

:func:`image_set` makes (once, then keeps) deterministic JPEGs that cost what
camera photos cost to decode, optionally with the EXIF preview phones embed, or
the same pictures as HEIC files, optionally with the thumbnail iPhones embed.
:func:`unlike_photos` draws images of none of the model's classes.

A leaf module (Pillow and numpy only), so training may use it too.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: Bump when :func:`synthetic_photo` changes, so cached images are regenerated.
GENERATOR = 2
JPEG_QUALITY = 90
SMALL = (150, 150)
LARGE = (4000, 3000)
#: The EXIF preview written into the large photos, as phones embed one
#: (cameras that store only 160x120 get the full decode: see ``thumbnail_min_side``).
PREVIEW = (320, 240)
#: What many cameras store instead: a 160x120 EXIF preview, below ``thumbnail_min_side``, and
#: a large preview after the photo (MPF), here Sony's 1616 px wide one at 4:3.
CAMERA_THUMBNAIL = (160, 120)
MPF_PREVIEW = (1616, 1212)
#: HEIC quality: about the bytes per 12 megapixels that iPhones write (2-3 MB).
HEIC_QUALITY = 50
#: HEIC grid tile side: iPhones store a 12 MP photo as a grid of 512 px tiles.
HEIC_TILE = 512


def synthetic_picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """The pixels of :func:`synthetic_photo`: a sky-like gradient, a wavy texture and sensor-like noise."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    top, bottom = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    fx, fy, phase_x, phase_y = (
        rng.uniform(3, 40),
        rng.uniform(3, 40),
        rng.uniform(0, 6.3),
        rng.uniform(0, 6.3),
    )
    texture = np.sin(2 * np.pi * fx * x * (1 + 0.3 * y) + phase_x) * np.sin(
        2 * np.pi * fy * y + 3 * x + phase_y
    )
    pixels = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        channel = top[c] + (bottom[c] - top[c]) * y + 25 * texture + (x - 0.5) * rng.uniform(-40, 40)
        channel = channel + rng.standard_normal((height, width), dtype=np.float32) * 10
        pixels[..., c] = np.clip(channel, 0, 255)
    return Image.fromarray(pixels, "RGB")


def synthetic_photo(
    seed: int,
    size: tuple[int, int],
    preview: tuple[int, int] | None = None,
    mpf: tuple[int, int] | None = None,
) -> bytes:
    """A JPEG that costs what a camera photo costs to decode.

    Flat colour would compress to almost nothing and decode unrealistically
    fast; a sky-like gradient, a wavy texture and sensor-like noise give the
    3-6 MB per 12 megapixels that phones produce at quality 90.  ``preview``
    is the size of its EXIF preview, ``mpf`` of the large preview a camera
    stores after the photo (:func:`with_mpf_preview`).
    """
    return camera_jpeg(synthetic_picture(seed, size), preview, mpf)


def camera_jpeg(
    photo: Image.Image, preview: tuple[int, int] | None = None, mpf: tuple[int, int] | None = None
) -> bytes:
    """``photo`` as a camera writes it: JPEG at :data:`JPEG_QUALITY`, with an EXIF preview of
    ``preview`` and an MPF preview of ``mpf``."""
    from PIL import Image

    exif = b""
    if preview is not None:
        small = io.BytesIO()
        photo.resize(preview, Image.Resampling.BILINEAR).save(small, "JPEG", quality=85)
        exif = exif_with_preview(small.getvalue())
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif)
    if mpf is None:
        return out.getvalue()
    large = io.BytesIO()
    photo.resize(mpf, Image.Resampling.BILINEAR).save(large, "JPEG", quality=85)
    return with_mpf_preview(out.getvalue(), large.getvalue())


def with_mpf_preview(photo: bytes, preview: bytes) -> bytes:
    """A JPEG ``photo`` with ``preview`` (a JPEG) stored after it as its MPF large thumbnail, as cameras do.

    Pillow writes MPF (its MPO format) but marks second images "undefined";
    cameras mark a preview as a "large thumbnail", which is what cened takes.
    The photo keeps its own EXIF block, and so its EXIF preview, if any.
    """
    import struct

    from PIL import Image

    with Image.open(io.BytesIO(photo)) as first, Image.open(io.BytesIO(preview)) as second:
        out = io.BytesIO()
        # Re-encoding at this quality changes the photo little; its bytes then hold the MPF segment.
        first.save(
            out,
            "MPO",
            save_all=True,
            append_images=[second],
            quality=JPEG_QUALITY,
            exif=first.info.get("exif", b""),
        )
    data = bytearray(out.getvalue())
    at = data.index(b"MPF\x00") + 4  # the MP index's TIFF header
    tag = data.index(b"\x02\xb0\x07\x00", at)  # MPEntry (0xB002), little-endian as Pillow writes it
    entries = at + struct.unpack_from("<I", data, tag + 8)[0]  # the primary image's entry, then the preview's
    struct.pack_into("<L", data, entries + 16, 0x010002)  # "Large Thumbnail (Full HD Equivalent)"
    return bytes(data)


def synthetic_heic(seed: int, size: tuple[int, int], thumbnail: tuple[int, int] | None = None) -> bytes:
    """:func:`synthetic_photo`'s picture as an iPhone writes it: HEIC, a grid of tiles, maybe a thumbnail.

    ``thumbnail`` is the size of the HEIF thumbnail item (iPhones store 320x240).
    x265's fastest preset keeps making a few dozen 12 MP files bearable.
    """
    return camera_heic(synthetic_picture(seed, size), thumbnail)


def camera_heic(photo: Image.Image, thumbnail: tuple[int, int] | None = None) -> bytes:
    """``photo`` as an iPhone writes it: HEIC in tiles, with a thumbnail item of ``thumbnail``."""
    import pillow_heif

    pillow_heif.register_heif_opener()  # for saving; it leaves the options cened.ml.imaging chose
    out = io.BytesIO()
    photo.save(
        out,
        "HEIF",
        quality=HEIC_QUALITY,
        tile_size=HEIC_TILE,
        thumbnails=[max(thumbnail)] if thumbnail else [],
        enc_params={"preset": "ultrafast"},
    )
    return out.getvalue()


def exif_with_preview(preview_jpeg: bytes, orientation: int = 1) -> bytes:
    """An EXIF block holding ``orientation`` and a JPEG preview, as a camera writes it.

    Pillow reads EXIF previews but cannot write one (its ``Exif.tobytes`` has
    no IFD1), so the few bytes of TIFF structure are put together here: IFD0
    with the orientation, IFD1 pointing at the preview, then the preview.
    Pass the result as ``exif=`` to Pillow's JPEG ``save``.
    """
    import struct

    ifd0 = struct.pack("<HHHIHHI", 1, 0x0112, 3, 1, orientation, 0, 26)  # next IFD at 26
    preview_at = 26 + 2 + 3 * 12 + 4
    entries = [(0x0103, 3, 1, 6), (0x0201, 4, 1, preview_at), (0x0202, 4, 1, len(preview_jpeg))]
    ifd1 = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + struct.pack("<I", 0) + preview_jpeg
    return b"Exif\x00\x00" + tiff


def image_set(
    cache: Path,
    size: tuple[int, int],
    count: int,
    preview: tuple[int, int] | None = None,
    say: Callable[[str], None] | None = None,
    heic: bool = False,
    mpf: tuple[int, int] | None = None,
) -> list[Path]:
    """``count`` deterministic photos of ``size``, generated once and kept in ``cache``.

    JPEGs with ``preview`` in their EXIF block, or with ``heic`` HEIC files with a
    thumbnail item of that size.  ``say`` hears, once, that photos are being made
    (it can take a while, HEIC files above all).
    """
    tag = f"-p{preview[0]}x{preview[1]}" if preview else ""
    tag += f"-mpf{mpf[0]}x{mpf[1]}" if mpf else ""
    kind = f"heic-q{HEIC_QUALITY}" if heic else f"q{JPEG_QUALITY}"
    folder = cache / f"{size[0]}x{size[1]}-{kind}-g{GENERATOR}{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{seed:04d}.{'heic' if heic else 'jpg'}" for seed in range(count)]
    missing = [f for f in files if not f.is_file()]
    if missing and say is not None:
        say(f"generating {len(missing)} photos of {size[0]}x{size[1]} in {folder} (once)")
    for path in missing:
        tmp = path.with_suffix(".tmp")
        if heic:
            tmp.write_bytes(synthetic_heic(int(path.stem), size, preview))
        else:
            tmp.write_bytes(synthetic_photo(int(path.stem), size, preview, mpf))
        tmp.replace(path)
    return files


# -- the daemon as a subprocess ------------------------------------------------------


#: How long the reader lets the daemon's log lines gather in the pipe between reads.
#: Kinds of :func:`unlike_photos`: content that is none of the landscape classes.
UNLIKE_KINDS = ("documents", "screens", "plain")
_WORDS = (
    "invoice",
    "total",
    "amount",
    "due",
    "date",
    "payment",
    "account",
    "meeting",
    "agenda",
    "report",
    "summary",
    "results",
    "settings",
    "file",
    "edit",
    "view",
    "help",
    "window",
    "search",
    "user",
    "profile",
    "password",
    "login",
    "cancel",
    "save",
    "open",
    "close",
    "dear",
    "regards",
    "please",
    "attached",
    "thank",
    "you",
    "project",
    "status",
    "update",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "this",
)


def warm(files: Sequence[Path]) -> None:
    """Read ``files`` once, so that what is timed next finds them in the page cache.

    Photos copied into an inbox were just written, so they are there; the
    benchmark's cached photos are not, after minutes unread (this machine gives
    idle page cache back to its host), and a burst or a floor that reads them
    from disk times the disk, most in the first run of each set.
    """
    for path in files:
        with path.open("rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass


def unlike_photos(folder: Path, per_kind: int = 20, seed: int = 0) -> list[Path]:
    """JPEGs of things that are no landscape, made here: text pages, screenshots, flat colours and noise.

    Far from the training photos in a way no data set we hold is: tests and
    ``cened evaluate --ood`` use them beside real photos of pets and clothes.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)

    def colour(light: bool | None = None) -> tuple[int, int, int]:
        lo, hi = (0, 256) if light is None else ((200, 256) if light else (0, 70))
        r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
        return r, g, b

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS, n))

    def document(i: int) -> Image.Image:
        w, h = [(850, 1100), (600, 800), (1100, 850), (400, 600)][i % 4]
        image = Image.new("RGB", (w, h), colour(True))
        draw, ink = ImageDraw.Draw(image), colour(False)
        size, y = int(rng.integers(max(9, w // 60), max(12, w // 28))), h // 16
        font = ImageFont.load_default(size)
        draw.text((w // 12, y), words(4).title(), fill=ink, font=ImageFont.load_default(size * 2))
        y += size * 3
        while y < h * 0.92:
            draw.text((w // 12, y), words(int(rng.integers(3, 12))), fill=ink, font=font)
            y += int(size * rng.uniform(1.3, 1.8))
        return image

    def screen(i: int) -> Image.Image:
        w, h = [(1280, 800), (390, 844), (1024, 768), (1440, 900)][i % 4]
        dark = bool(rng.random() < 0.4)
        back, ink, accent = colour(not dark), colour(dark), colour()
        image = Image.new("RGB", (w, h), back)
        draw = ImageDraw.Draw(image)
        bar = max(18, h // 30)
        draw.rectangle((0, 0, w, bar), fill=accent)
        draw.text((bar * 3, 2), words(3), fill=ink, font=ImageFont.load_default(bar - 6))
        side = int(w * rng.uniform(0.15, 0.3))
        draw.rectangle((0, bar, side, h), fill=colour(dark))
        font, y = ImageFont.load_default(max(10, bar // 2 + 4)), bar + 8
        while y < h - bar:
            if rng.random() < 0.15:
                draw.rounded_rectangle((side + 10, y, side + 130, y + bar), radius=5, fill=accent)
            else:
                draw.text((side + 10, y), words(int(rng.integers(2, 10))), fill=ink, font=font)
            y += int(bar * 1.4)
        return image

    def plain(i: int) -> Image.Image:
        w, h = [(224, 224), (640, 480), (300, 200), (150, 150)][i % 4]
        kind = i % 3
        if kind == 0:
            return Image.new("RGB", (w, h), colour())
        if kind == 1:
            t = np.linspace(0.0, 1.0, w)[None, :, None]
            a, b = np.array(colour(), float), np.array(colour(), float)
            return Image.fromarray(np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8))
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    makers = {"documents": document, "screens": screen, "plain": plain}
    paths = []
    for kind in UNLIKE_KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_kind):
            path = folder / kind / f"{kind}-{i:03d}.jpg"
            makers[kind](i).save(path, "JPEG", quality=int(rng.integers(75, 96)))
            paths.append(path)
    return paths

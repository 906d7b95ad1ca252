"""Photos and a running daemon, as the benchmark and the tests need them.

:func:`image_set` makes (once, then keeps) deterministic JPEGs that cost what
camera photos cost to decode, optionally with the EXIF preview phones embed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Bump when :func:`synthetic_photo` changes, so cached images are regenerated.
GENERATOR = 2
JPEG_QUALITY = 90
SMALL = (150, 150)
LARGE = (4000, 3000)
#: The EXIF preview written into the large photos, as phones embed one
#: (cameras that store only 160x120 get the full decode: see ``thumbnail_min_side``).
PREVIEW = (320, 240)


def synthetic_photo(seed: int, size: tuple[int, int], preview: tuple[int, int] | None = None) -> bytes:
    """A JPEG that costs what a camera photo costs to decode.

    Flat colour would compress to almost nothing and decode unrealistically
    fast; a sky-like gradient, a wavy texture and sensor-like noise give the
    3-6 MB per 12 megapixels that phones produce at quality 90.
    """
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
    photo = Image.fromarray(pixels, "RGB")
    exif = b""
    if preview is not None:
        small = io.BytesIO()
        photo.resize(preview, Image.Resampling.BILINEAR).save(small, "JPEG", quality=85)
        exif = exif_with_preview(small.getvalue())
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif)
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
) -> list[Path]:
    """``count`` deterministic photos of ``size``, generated once and kept in ``cache``.

    ``say`` hears, once, that photos are being made (it can take a while).
    """
    tag = f"-p{preview[0]}x{preview[1]}" if preview else ""
    folder = cache / f"{size[0]}x{size[1]}-q{JPEG_QUALITY}-g{GENERATOR}{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{seed:04d}.jpg" for seed in range(count)]
    missing = [f for f in files if not f.is_file()]
    if missing and say is not None:
        say(f"generating {len(missing)} photos of {size[0]}x{size[1]} in {folder} (once)")
    for path in missing:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(synthetic_photo(int(path.stem), size, preview))
        tmp.replace(path)
    return files

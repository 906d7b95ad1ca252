"""Real DNG files for the tests, written here byte by byte.

A DNG is a TIFF: IFD0 holds the preview a camera embeds (a JPEG, or plain RGB
pixels) and a SubIFD the sensor's colour-filter-array data, with the DNG tags
LibRaw needs to read it.  With no preview, IFD0 is the sensor data itself.
Writing the few tags here keeps the tests free of a TIFF-writing dependency and
lets them put the preview, the orientation and the sensor data exactly where
they want.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image

# TIFF field types: code and bytes per value ("R"/"SR" are (numerator, denominator) pairs).
_TYPES = {"B": (1, "B"), "A": (2, "B"), "H": (3, "H"), "L": (4, "I"), "R": (5, "II"), "SR": (10, "ii")}
Entry = tuple[int, str, Any]

WHITE_LEVEL = 4095


def _ifd(entries: list[Entry], at: int) -> bytes:
    """One IFD placed at offset ``at``, its values that do not fit in 4 bytes right after it."""
    entries = sorted(entries)
    after = at + 2 + 12 * len(entries) + 4
    table, extra = b"", b""
    for tag, kind, values in entries:
        code, fmt = _TYPES[kind]
        if kind == "A":
            payload, count = values.encode() + b"\0", len(values) + 1
        else:
            flat = [v for pair in values for v in pair] if kind in ("R", "SR") else list(values)
            payload, count = struct.pack(f"<{len(flat)}{fmt[0]}", *flat), len(values)
        if len(payload) <= 4:
            table += struct.pack("<HHI", tag, code, count) + payload.ljust(4, b"\0")
        else:
            extra += b"\0" * (len(extra) % 2)  # values start on a word boundary
            table += struct.pack("<HHII", tag, code, count, after + len(extra))
            extra += payload
    return struct.pack("<H", len(entries)) + table + struct.pack("<I", 0) + extra


def _camera_tags(orientation: int) -> list[Entry]:
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    return [
        (271, "A", "cened"),
        (272, "A", "test camera"),
        (274, "H", [orientation]),
        (50706, "B", [1, 4, 0, 0]),  # DNGVersion
        (50707, "B", [1, 1, 0, 0]),  # DNGBackwardVersion
        (50708, "A", "cened test camera"),  # UniqueCameraModel
        (50721, "SR", identity),  # ColorMatrix1
        (50728, "R", [(1, 1), (1, 1), (1, 1)]),  # AsShotNeutral
        (50778, "H", [21]),  # CalibrationIlluminant1: D65
    ]


def _cfa_tags(sensor: np.ndarray, at: int, subfile: int) -> list[Entry]:
    h, w = sensor.shape
    return [
        (254, "L", [subfile]),
        (256, "L", [w]),
        (257, "L", [h]),
        (258, "H", [16]),
        (259, "H", [1]),
        (262, "H", [32803]),  # colour filter array
        (273, "L", [at]),
        (277, "H", [1]),
        (278, "L", [h]),
        (279, "L", [sensor.size * 2]),
        (33421, "H", [2, 2]),  # CFARepeatPatternDim
        (33422, "B", [0, 1, 1, 2]),  # CFAPattern: RGGB
        (50714, "L", [0]),  # BlackLevel
        (50717, "L", [WHITE_LEVEL]),
    ]


def _preview_tags(preview: bytes | np.ndarray, at: int, sub_at: int) -> list[Entry]:
    if isinstance(preview, bytes):
        with Image.open(io.BytesIO(preview)) as im:
            (w, h), length = im.size, len(preview)
        compression, photometric = 7, 6  # JPEG, YCbCr
    else:
        (h, w), length = preview.shape[:2], preview.size
        compression, photometric = 1, 2  # uncompressed RGB
    return [
        (254, "L", [1]),  # a reduced-resolution copy
        (256, "L", [w]),
        (257, "L", [h]),
        (258, "H", [8, 8, 8]),
        (259, "H", [compression]),
        (262, "H", [photometric]),
        (273, "L", [at]),
        (277, "H", [3]),
        (278, "L", [h]),
        (279, "L", [length]),
        (330, "L", [sub_at]),  # SubIFDs: the sensor data
    ]


def dng(
    preview: bytes | np.ndarray | None,
    sensor: np.ndarray | None = None,
    orientation: int = 1,
) -> bytes:
    """A DNG holding ``preview`` (JPEG bytes, an RGB uint8 array, or none) and ``sensor`` data.

    ``sensor`` is a 2-D array of 12-bit values (noise, 64x48, by default);
    ``orientation`` is the EXIF orientation of the RAW, which LibRaw reports
    as ``sizes.flip``.  The sensor data comes last, as in most cameras' files.
    """
    if sensor is None:
        sensor = np.random.default_rng(0).integers(0, WHITE_LEVEL, (48, 64))
    sensor_bytes = sensor.astype("<u2").tobytes()
    pad = lambda b: b + b"\0" * (len(b) % 2)  # noqa: E731 - every block starts on a word boundary
    if preview is None:
        ifd0_size = len(_ifd(_cfa_tags(sensor, 0, 0) + _camera_tags(orientation), 8))
        sensor_at = 8 + ifd0_size + ifd0_size % 2
        ifd0 = _ifd(_cfa_tags(sensor, sensor_at, 0) + _camera_tags(orientation), 8)
        return b"II*\0" + struct.pack("<I", 8) + pad(ifd0) + sensor_bytes
    preview_bytes = preview if isinstance(preview, bytes) else np.asarray(preview, np.uint8).tobytes()
    # Offsets do not change the sizes of the IFDs: lay them out with zeros, then for real.
    ifd0_size = len(_ifd(_preview_tags(preview, 0, 0) + _camera_tags(orientation), 8))
    sub_at = 8 + ifd0_size + ifd0_size % 2
    sub_size = len(_ifd(_cfa_tags(sensor, 0, 0), sub_at))
    preview_at = sub_at + sub_size + sub_size % 2
    sensor_at = preview_at + len(pad(preview_bytes))
    ifd0 = _ifd(_preview_tags(preview, preview_at, sub_at) + _camera_tags(orientation), 8)
    sub = _ifd(_cfa_tags(sensor, sensor_at, 0), sub_at)
    return b"II*\0" + struct.pack("<I", 8) + pad(ifd0) + pad(sub) + pad(preview_bytes) + sensor_bytes

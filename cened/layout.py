"""Where in the library a photo goes: the folder layout, and the date a photo is filed under.

``layout`` is a template of folders below the library, ``"{album}"`` (one flat
folder per album) or e.g. ``"{album}/{year}/{month}"`` or ``"{year}/{album}"``.
Its fields are :data:`FIELDS`; the date ones come from the photo's EXIF
DateTimeOriginal, or else from the file's modification time, in local time
(a camera writes its owner's wall-clock time, without a zone).
Quarantine and ``_duplicates`` stay flat: they are not albums.
"""

from __future__ import annotations

import functools
import re
import string
from datetime import datetime
from io import BytesIO
from pathlib import Path, PurePosixPath

DEFAULT = "{album}"
#: What a template may name, each with the pattern of what it renders to.
FIELDS = {"album": r"[^/]+?", "year": r"\d{4}", "month": r"\d{2}", "day": r"\d{2}"}
DATE_FIELDS = frozenset({"year", "month", "day"})
_EXIF_DATE = "%Y:%m:%d %H:%M:%S"


def check(template: str) -> str:
    """``template`` if it is a usable layout; a ValueError naming what is wrong otherwise."""
    if template.startswith("/"):
        raise ValueError(f"{template!r} must be relative to the library, not absolute")
    parts = template.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\0" in template:
        raise ValueError(f"{template!r}: every folder needs a name, and '.' or '..' is none")
    names = fields(template)
    unknown = sorted(names - set(FIELDS))
    if unknown:
        known = ", ".join(f"{{{f}}}" for f in FIELDS)
        raise ValueError(f"unknown field {{{unknown[0]}}} in {template!r}; the fields are {known}")
    if "album" not in names:
        raise ValueError(f"{template!r} must contain {{album}}, or albums would share folders")
    return template


@functools.cache
def fields(template: str) -> frozenset[str]:
    """The fields ``template`` names; a ValueError for a malformed one (an unclosed brace, a format spec)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a template: {exc}") from exc
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{template!r}: a field is a plain name in braces, e.g. {{year}}")
        names.add(name)
    return frozenset(names)


def uses_date(template: str) -> bool:
    return not DATE_FIELDS.isdisjoint(fields(template))


def folder(template: str, album: str, when: datetime | None) -> PurePosixPath:
    """The folder, relative to the library, of a photo of ``album`` taken ``when`` (unused if undated)."""
    if when is None:
        if uses_date(template):
            raise ValueError(f"{template!r} needs the date the photo was taken")
        return PurePosixPath(template.format(album=album))
    date = {"year": f"{when.year:04d}", "month": f"{when.month:02d}", "day": f"{when.day:02d}"}
    return PurePosixPath(template.format(album=album, **date))


def kept_above(template: str, relative: PurePosixPath | Path) -> int | None:
    """How many folders of ``relative`` (a folder below the library) are not the layout's date folders.

    A date folder (``2019`` and ``07`` of ``sea/2019/07`` under
    ``{album}/{year}/{month}``, or everything from the year down under
    ``{year}/{album}``) exists for the photos in it, and may go once it is
    empty; an album's own folder stays.  None when ``relative`` is no date
    folder of the layout: a layout without dates, an album's folder, a folder
    of the user's own (``sea/trip``), quarantine or ``_duplicates``.
    """
    parts = template.split("/")
    dated = next((i for i, part in enumerate(parts) if not DATE_FIELDS.isdisjoint(fields(part))), None)
    depth = len(relative.parts)
    if dated is None or not dated < depth <= len(parts):
        return None
    return dated if _pattern("/".join(parts[:depth])).fullmatch(relative.as_posix()) else None


def album_of(template: str, relative: PurePosixPath | Path) -> str | None:
    """The album of a file at ``relative`` (to the library) under ``template``, if it fits the template."""
    parts = relative.parent.parts
    pattern = _pattern(template)
    match = pattern.fullmatch("/".join(parts)) if len(parts) == template.count("/") + 1 else None
    return match["album"] if match else None


def album_within(template: str, relative: PurePosixPath | Path) -> str | None:
    """The album of a file at ``relative`` by the template's folders down to ``{album}`` only.

    A photo dragged straight into an album's folder (``forest/p.jpg`` under
    ``{album}/{year}/{month}``), or into a folder of its own below one
    (``sea/trip/p.jpg``), is in that album all the same.
    """
    parts = template.split("/")
    depth = next(i for i, part in enumerate(parts) if "{album}" in part) + 1
    folders = relative.parent.parts
    if len(folders) < depth:
        return None
    head = "/".join(parts[:depth])
    match = _pattern(head).fullmatch("/".join(folders[:depth]))
    return match["album"] if match else None


def _pattern(template: str) -> re.Pattern[str]:
    out, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name is not None:
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{FIELDS[name]})")
            seen.add(name)
    return re.compile("".join(out))


def taken(photo: bytes | Path, mtime: float) -> datetime:
    """When a photo was taken: its EXIF DateTimeOriginal, else ``mtime`` (seconds), local time.

    Only the header is parsed (Pillow opens lazily), from the bytes already in
    memory or from the file.
    """
    from PIL import ExifTags, Image  # here: the log commands import this module, and need no Pillow

    try:
        with Image.open(BytesIO(photo) if isinstance(photo, bytes) else photo) as im:
            value = im.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        if isinstance(value, bytes):
            value = value.decode("ascii")
        return datetime.strptime(value.strip("\0 ")[:19], _EXIF_DATE)
    except Exception:  # noqa: BLE001 - a missing or bad EXIF date, of any kind, means the file's own date
        return datetime.fromtimestamp(mtime)


#: How far into a JPEG its EXIF may start: two segments of at most 64 KiB each before it.
_EXIF_WITHIN = 2 * 65_536


def shot_at(photo: bytes) -> float | None:
    """When a photo was taken by its EXIF (DateTimeOriginal and its fraction), in seconds; None without one.

    The wall-clock time as the camera wrote it, counted as if UTC: only the
    gaps between photos matter (the frames of a burst, cened.grouping).
    """
    # A JPEG's EXIF is an APP1 segment right after its start (the EXIF standard; a JFIF APP0 may
    # come first): without it near the start, opening the file tells nothing.
    if photo[:2] == b"\xff\xd8" and photo.find(b"Exif\x00\x00", 0, _EXIF_WITHIN) < 0:
        return None
    from PIL import ExifTags, Image

    try:
        with Image.open(BytesIO(photo)) as im:
            exif = im.getexif().get_ifd(ExifTags.IFD.Exif)
        value = exif.get(ExifTags.Base.DateTimeOriginal)
        if isinstance(value, bytes):
            value = value.decode("ascii")
        when = datetime.strptime(value.strip("\0 ")[:19], _EXIF_DATE)
        fraction = str(exif.get(ExifTags.Base.SubsecTimeOriginal) or "").strip("\0 ")
        seconds = (when - datetime(1970, 1, 1)).total_seconds()
        return seconds + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)
    except Exception:  # noqa: BLE001 - a missing or bad EXIF date, of any kind, means none
        return None

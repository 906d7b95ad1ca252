"""Companions: the files that belong with a photo, found by name, and moved with it.

* sidecars: ``IMG_1.xmp``, ``IMG_1.JPG.xmp``, ``IMG_1.AAE``, Google Takeout's ``IMG_1.jpg.json``
  and ``IMG_1.jpg.supplemental-metadata.json`` (cut short in long names: ``….supplemental-me.json``);
* a Live Photo's video: ``IMG_1.MOV`` beside ``IMG_1.HEIC`` (or ``.JPG``; ``.mp4`` too);
* a camera's RAW beside its JPEG: ``IMG_1.CR2`` with ``IMG_1.JPG``, classified once, from the JPEG.

A companion is in its photo's folder and its name starts with the photo's
stem exactly; only the extensions' case may differ (lower or upper).  Names
are probed with ``lstat`` rather than by listing the folder, which for an
inbox of 100,000 photos would cost a listing of them all per photo.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from cened.config import DEFAULT_EXTENSIONS, RAW_EXTENSIONS, SIDECAR_EXTENSIONS, VIDEO_EXTENSIONS, Settings

#: What a sidecar named after a whole photo name (``IMG_1.JPG.xmp``) may name.
PHOTO_EXTENSIONS = frozenset(DEFAULT_EXTENSIONS)
#: What newer Google Takeout exports put between a photo's name and ``.json``; names over
#: its length limit lose the end of it, down to a few letters.
SUPPLEMENTAL = ".supplemental-metadata"
SUPPLEMENTAL_SHORTEST = 3  # ".su"


class Kind(StrEnum):
    """What a file in the inbox is to the photo it may belong to."""

    PHOTO = "photo"  # classified on its own (a RAW with no JPEG beside it too)
    SIDECAR = "sidecar"
    VIDEO = "video"
    RAW = "raw"  # beside a JPEG (or HEIC…) of its stem: travels with it


def kind(path: Path, settings: Settings) -> Kind:
    ext = path.suffix.lower()
    if ext in SIDECAR_EXTENSIONS:
        return Kind.SIDECAR
    if ext in VIDEO_EXTENSIONS:
        return Kind.VIDEO
    if ext in RAW_EXTENSIONS and _existing(path.parent, path.stem, _developed(settings)):
        return Kind.RAW
    return Kind.PHOTO


class Listings:
    """The names in each folder, listed at most once per ``ttl`` seconds, for :func:`find`.

    One listing serves a whole batch and the next ones: probing each name a
    companion might have costs a few dozen system calls per photo.  A name
    that arrived since the listing is missed, and its file follows its photo
    later; a name gone since is found gone when it is read.  Only the filer
    thread uses one.
    """

    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._names: dict[Path, tuple[float, frozenset[str]]] = {}
        self._families: dict[Path, tuple[float, dict[str, frozenset[str]]]] = {}

    def __call__(self, folder: Path) -> frozenset[str]:
        now = self._clock()
        self._names = {f: v for f, v in self._names.items() if now - v[0] < self.ttl}
        if folder not in self._names:
            try:
                names = frozenset(os.listdir(folder))
            except OSError:
                names = frozenset()
            self._names[folder] = (now, names)
        return self._names[folder][1]

    def family(self, folder: Path, stem: str) -> frozenset[str]:
        """The names in ``folder`` that share ``stem`` (:func:`family`), the photo's own included.

        Indexed once per listing: most photos have no companion, and for them
        this one lookup replaces generating every name a companion could have.
        """
        names = self(folder)
        listed, index = self._families.get(folder, (None, {}))
        if listed != self._names[folder][0]:
            grouped: dict[str, set[str]] = {}
            for name in names:
                grouped.setdefault(family(Path(name)), set()).add(name)
            index = {k: frozenset(v) for k, v in grouped.items()}
            self._families = {f: v for f, v in self._families.items() if f in self._names}
            self._families[folder] = (self._names[folder][0], index)
        return index.get(stem, frozenset())


def find(photo: Path, settings: Settings, listings: Listings | None = None) -> list[Path]:
    """The companions of ``photo`` on disk: its RAW, its video, then the sidecars of each.

    By ``listings`` of its folder if given, else by probing each name.
    """
    folder, stem = photo.parent, photo.stem
    names = listings.family(folder, stem) if listings is not None else None
    if names is not None and not names - {photo.name}:
        return []
    raw = [e for e in settings.extensions if e in RAW_EXTENSIONS]
    raws = [] if photo.suffix.lower() in RAW_EXTENSIONS else _existing(folder, stem, raw, names)
    videos = _existing(folder, stem, VIDEO_EXTENSIONS, names)
    # Sidecars named by stem, or by the whole name of the photo or of its RAW.
    bases = [stem] + [stem + ext for p in (photo, *raws) for ext in _cases(p.suffix)]
    sidecars = [p for base in bases for p in _existing(folder, base, SIDECAR_EXTENSIONS, names)]
    for base in bases[1:]:
        for end in range(SUPPLEMENTAL_SHORTEST, len(SUPPLEMENTAL) + 1):
            sidecars += _existing(folder, base + SUPPLEMENTAL[:end], (".json",), names)
    found, seen = [], {_inode(photo)}
    for path in (*raws, *videos, *sidecars):
        inode = _inode(path)  # one file under two spellings, where the filesystem ignores case
        if inode is not None and inode not in seen:
            seen.add(inode)
            found.append(path)
    return found


def family(path: Path) -> str:
    """The stem a companion shares with its photo: ``IMG_1`` for ``IMG_1.MOV`` and ``IMG_1.JPG.xmp``."""
    base = _named(path)
    if path.suffix.lower() in SIDECAR_EXTENSIONS and Path(base).suffix.lower() in PHOTO_EXTENSIONS:
        return Path(base).stem
    return base


def _named(path: Path) -> str:
    """A sidecar's name without its own extension or Takeout's ``.supplemental-metadata`` (or its start)."""
    base = path.stem
    if path.suffix.lower() == ".json":
        head, dot, end = base.rpartition(".")
        if dot and "." in head and len(end) + 1 >= SUPPLEMENTAL_SHORTEST and SUPPLEMENTAL[1:].startswith(end):
            return head
    return base


def lead_names(path: Path, settings: Settings) -> list[Path]:
    """Where the photo a companion belongs to would be, best first (whether or not it is there)."""
    folder, ext = path.parent, path.suffix.lower()
    stem = family(path)
    if ext in SIDECAR_EXTENSIONS and stem != path.stem:  # IMG_1.JPG.xmp: that photo only
        named = Path(_named(path)).suffix
        return [folder / (stem + e) for e in _cases(named)]
    if ext in RAW_EXTENSIONS:
        return [folder / (stem + e) for x in _developed(settings) for e in _cases(x)]
    photos = [*_developed(settings), *(e for e in settings.extensions if e in RAW_EXTENSIONS)]
    return [folder / (stem + e) for x in photos for e in _cases(x)]


def leads(path: Path, settings: Settings) -> list[Path]:
    """The photos on disk now that ``path`` belongs to, best first."""
    return [p for p in lead_names(path, settings) if _is_file(p) and p != path]


def renamed(companion: Path, photo_name: str) -> str:
    """The companion's name beside its photo filed as ``photo_name`` (``IMG_1-1.HEIC`` → ``IMG_1-1.MOV``)."""
    return Path(photo_name).stem + companion.name[len(family(companion)) :]


def tail(companion: Path) -> str:
    """What follows the shared stem in a companion's name: ``.MOV``, ``.JPG.xmp``."""
    return companion.name[len(family(companion)) :]


def _developed(settings: Settings) -> list[str]:
    """The photo extensions a RAW may travel with: every one but the RAW ones."""
    return [e for e in settings.extensions if e not in RAW_EXTENSIONS]


@functools.cache
def _cases(ext: str) -> tuple[str, ...]:
    lower, upper = ext.lower(), ext.upper()
    return (ext, *(e for e in (lower, upper) if e != ext))


def _existing(
    folder: Path, stem: str, extensions: tuple[str, ...] | list[str], names: frozenset[str] | None = None
) -> list[Path]:
    """The files ``stem + ext`` in ``folder``, for each of ``extensions`` in either case."""
    wanted = [stem + e for x in extensions for e in _cases(x)]
    if names is not None:
        wanted = [n for n in wanted if n in names]
    base = os.path.join(folder, "")
    return [folder / n for n in wanted if _is_file(base + n)]


def _is_file(path: Path | str) -> bool:
    """A regular file, not followed if a link: a link is never ours to move."""
    # access() answers "no" without raising, which most probes get: far cheaper than lstat.
    if not os.access(path, os.F_OK, follow_symlinks=False):
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino

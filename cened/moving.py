"""Moving a file without ever overwriting, duplicating or losing it.

On one filesystem a move is ``link(src, dst)`` then ``unlink(src)``: unlike
``rename``, ``link`` refuses to replace an existing file, so a name that
appeared after we chose it can never be clobbered.  Across filesystems the
bytes are copied to a hidden temporary name beside the destination, fsynced,
and only then linked into place, so the destination name never shows a
partial file.  Either way a crash leaves at worst the source plus a complete
destination (or a hidden temporary), which :mod:`cened.recovery` resolves
using the intent journal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Collection, Iterable
from pathlib import Path

from cened.faults import crash_point

PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".cened-part"


def partial_path(dst: Path) -> Path:
    """Where a cross-device copy is assembled; fixed, so recovery can find it."""
    return dst.with_name(f"{PARTIAL_PREFIX}{dst.name}{PARTIAL_SUFFIX}")


def completed_path(partial: Path) -> Path:
    """The destination a partial copy was assembled for: the inverse of :func:`partial_path`."""
    return partial.with_name(partial.name[len(PARTIAL_PREFIX) : -len(PARTIAL_SUFFIX)])


def free_name(directory: Path, name: str, reserved: Collection[Path] = ()) -> Path:
    """``directory/name``, or ``stem-1.ext``, ``stem-2.ext``… if taken on disk or reserved.

    Deterministic for a given state of the disk, so re-planning after a crash
    picks the same name as before unless that name was meanwhile used.
    """
    candidate = directory / name
    stem, suffix = os.path.splitext(name)
    n = 0
    while candidate in reserved or os.path.lexists(candidate) or os.path.lexists(partial_path(candidate)):
        n += 1
        candidate = directory / f"{stem}-{n}{suffix}"
    return candidate


def fsync_dirs(dirs: Iterable[Path]) -> None:
    """Make renames durable; done once per batch for each directory touched."""
    for directory in set(dirs):
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; raises ``FileExistsError`` rather than replace anything.

    Modification time and permissions are kept (they travel with the inode,
    or are copied by ``copy2``).
    """
    try:
        _link(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_across(src, dst)
        elif exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK) and not isinstance(
            exc, FileExistsError
        ):
            # Filesystems without hard links (FAT, some FUSE): rename, having
            # checked the name is free just before.
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "destination exists", str(dst)) from exc
            os.rename(src, dst)
            return
        else:
            raise
    crash_point("after-link")
    os.unlink(src)


def _link(src: Path, dst: Path) -> None:
    """``link()``, creating the album folder when it is missing.

    The folder is made only after a link failed for want of it, not before
    every move: ``mkdir`` on a folder that exists fails, and Python builds an
    exception for it, which cost about as much as the link itself.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileNotFoundError:  # the folder, or the source, is missing
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst, follow_symlinks=False)


def _copy_across(src: Path, dst: Path) -> None:
    tmp = partial_path(dst)
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point("after-copy")
        os.link(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

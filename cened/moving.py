"""Moving a file without ever overwriting, duplicating or losing it.

On one filesystem a move is ``link(src, dst)`` then ``unlink(src)``: unlike
``rename``, ``link`` refuses to replace an existing file, so a name that
appeared after we chose it can never be clobbered.  Across filesystems the
bytes are copied to a hidden temporary name beside the destination, fsynced,
and only then linked into place, so the destination name never shows a
partial file.  Either way a crash leaves at worst the source plus a complete
destination (or a hidden temporary), which :mod:`cened.recovery` resolves
using the intent journal.

When the source cannot be removed (a read-only inbox) the link or copy just
made is taken back, so a move either happens or leaves exactly the source:
never two copies, however often it is retried.

Every name made here fits the filesystem's NAME_MAX, in bytes: a long stem is
shortened to make room for a collision suffix (``-1``) or for the hidden
temporary's prefix and suffix.

A move into a folder below a *root* (the library, the quarantine, the inbox)
opens that folder one level at a time from the root's own descriptor, never
following a symbolic link: an album folder replaced by a link to somewhere
else raises :class:`LinkedFolder`, and nothing is written through it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from cened.faults import crash_point

PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".cened-part"
#: NAME_MAX of ext4, XFS, btrfs and tmpfs; used where the filesystem cannot be asked.
NAME_MAX = 255
#: Names up to this many bytes fit every Linux filesystem (eCryptfs allows the fewest,
#: 143), so only longer ones cost a ``pathconf`` to learn the real limit.
PORTABLE_NAME_MAX = 143
#: A longer "extension" is part of the name, not a type to keep intact when shortening.
EXTENSION_MAX = 16


class SourceKept(OSError):
    """The source could not be removed once its link or copy was made, so it was kept.

    ``undone`` says whether the link or copy was taken back: if not, the photo
    is in both places (the destination could not be removed either).
    """

    undone: bool = True


class LinkedFolder(OSError):
    """A folder on the way to a destination below a root is a symbolic link (or not a folder at all).

    Never written through: the photo would land outside the library while the
    journal says it is inside.
    """


def partial_path(dst: Path) -> Path:
    """Where a cross-device copy is assembled; fixed, so recovery can find it.

    A destination name too long to take the prefix and suffix is shortened,
    with a hash of the full name so two long names never share a temporary.
    """
    extra = len(PARTIAL_PREFIX) + len(PARTIAL_SUFFIX)
    name = dst.name
    size = len(os.fsencode(name)) + extra
    if size > PORTABLE_NAME_MAX and size > name_max(dst.parent):
        stem, ext = _split(name)
        tag = "~" + hashlib.blake2s(os.fsencode(name), digest_size=4).hexdigest()
        name = _fit(dst.parent, stem, tag + ext, extra)
    return dst.with_name(f"{PARTIAL_PREFIX}{name}{PARTIAL_SUFFIX}")


def completed_path(partial: Path) -> Path:
    """The destination a partial copy was assembled for, as far as its name tells.

    The inverse of :func:`partial_path` except for names it had to shorten;
    to ask whether a partial belongs to a destination, compare ``partial_path(dst)``.
    """
    return partial.with_name(partial.name[len(PARTIAL_PREFIX) : -len(PARTIAL_SUFFIX)])


def free_name(directory: Path, name: str, reserved: Collection[Path] = ()) -> Path:
    """``directory/name``, or ``stem-1.ext``, ``stem-2.ext``… if taken on disk or reserved.

    Deterministic for a given state of the disk, so re-planning after a crash
    picks the same name as before unless that name was meanwhile used.  The
    stem is shortened where the name would not fit NAME_MAX.
    """
    stem, suffix = _split(name)
    candidate = directory / _fit(directory, stem, suffix)
    n = 0
    while candidate in reserved or os.path.lexists(candidate) or os.path.lexists(partial_path(candidate)):
        n += 1
        candidate = directory / _fit(directory, stem, f"-{n}{suffix}")
    return candidate


def free_names(
    directory: Path, stem: str, tails: Sequence[str], reserved: Collection[Path] = ()
) -> list[Path]:
    """``directory/stem+tail`` for each of ``tails``, or each with ``-1``, ``-2``… after the stem.

    For a photo and the files that travel with it (``IMG_1.HEIC``, ``IMG_1.MOV``):
    they keep one stem, so a later look still pairs them by name.
    """
    n = 0
    while True:
        tag = f"-{n}" if n else ""
        names = [directory / _fit(directory, stem, tag + tail) for tail in tails]
        if not any(p in reserved or os.path.lexists(p) or os.path.lexists(partial_path(p)) for p in names):
            return names
        n += 1


def name_max(directory: Path) -> int:
    """The longest name, in bytes, that the filesystem holding ``directory`` (or its nearest parent) takes."""
    for folder in (directory, *directory.parents):
        try:
            return os.pathconf(folder, "PC_NAME_MAX")
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            break
    return NAME_MAX


def _split(name: str) -> tuple[str, str]:
    """``os.path.splitext``, except that an implausibly long extension stays with the stem."""
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > EXTENSION_MAX:
        return name, ""
    return stem, ext


def _fit(directory: Path, stem: str, tail: str, extra: int = 0) -> str:
    """``stem + tail``, the stem shortened until the name plus ``extra`` bytes fits in ``directory``.

    Whole characters are dropped, never bytes, so a UTF-8 name stays valid
    UTF-8 (an undecodable byte, held as a surrogate escape, is one character).
    """
    name = stem + tail
    size = len(os.fsencode(name)) + extra
    if size <= PORTABLE_NAME_MAX:
        return name
    limit = name_max(directory)
    while size > limit and len(stem) > 1:
        stem = stem[:-1]
        size = len(os.fsencode(stem + tail)) + extra
    return stem + tail


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


def move(src: Path, dst: Path, root: Path | None = None) -> None:
    """Move ``src`` to ``dst``; raises ``FileExistsError`` rather than replace anything.

    With ``root``, ``dst``'s folder is reached from it without following a
    link (:func:`open_folder`).  Modification time and permissions are kept
    (they travel with the inode, or are copied).  A source that cannot be
    removed raises :class:`SourceKept`, the destination having been taken back.
    """
    folder = open_folder(root, dst.parent) if root is not None else _open_plain(dst.parent)
    try:
        _move_into(src, folder, dst)
    finally:
        os.close(folder)


def _move_into(src: Path, folder: int, dst: Path) -> None:
    """:func:`move`, ``dst`` being ``dst.name`` in the open folder ``folder``."""
    made: tuple[int, int] | None = None  # the copy's inode; a link's is the source's
    try:
        os.link(src, dst.name, dst_dir_fd=folder, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            made = _copy_across(src, folder, dst)
        elif exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK) and not isinstance(
            exc, FileExistsError
        ):
            # Filesystems without hard links (FAT, some FUSE): rename, having
            # checked the name is free just before.
            if _exists_in(folder, dst.name):
                raise FileExistsError(errno.EEXIST, "destination exists", str(dst)) from exc
            os.rename(src, dst.name, dst_dir_fd=folder)
            return
        else:
            raise
    crash_point("after-link")
    try:
        os.unlink(src)
    except FileNotFoundError:
        return  # someone else removed the inbox copy: ours, complete, is the one left
    except OSError as exc:
        kept = SourceKept(exc.errno, exc.strerror, os.fsdecode(src))
        kept.undone = take_back(src, dst, made)
        raise kept from exc


def open_folder(root: Path, folder: Path) -> int:
    """A descriptor of ``folder``, reached from ``root`` one folder at a time, never through a link.

    Missing folders are made on the way (each one's entry fsynced, as
    :func:`make_folder` does); a link or a file where a folder should be raises
    :class:`LinkedFolder`.  ``root`` itself is the configuration's to name, and
    may be a link.
    """
    if not folder.is_relative_to(root):
        return _open_plain(folder)
    fd = _open_plain(root)
    here = root
    try:
        for part in folder.relative_to(root).parts:
            here = here / part
            try:
                below = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                os.fsync(fd)
                below = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError as exc:  # also what O_NOFOLLOW gives a link, with O_DIRECTORY
                try:
                    linked = stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                except OSError:
                    linked = False
                what = "is a symbolic link, which cened never writes through" if linked else "is not a folder"
                raise LinkedFolder(exc.errno, f"{os.fsdecode(here)} {what}", os.fsdecode(here)) from exc
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _open_plain(folder: Path) -> int:
    """A descriptor of ``folder``, made (with its parents) when missing."""
    try:
        return os.open(folder, _FOLDER)
    except FileNotFoundError:
        make_folder(folder)
        return os.open(folder, _FOLDER)


def _exists_in(folder: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


def take_back(src: Path, dst: Path, made: tuple[int, int] | None = None) -> bool:
    """Remove ``dst``, the copy of ``src`` we made as inode ``made`` (st_dev, st_ino), or its link.

    Only while ``dst`` is still that inode (for a link: ``src``'s inode) and
    ``src`` is still there, so the removal can never lose the last copy of a
    photo.  True when nothing of ours is left at ``dst``.
    """
    try:
        there = os.lstat(src)
        st = os.lstat(dst)
    except FileNotFoundError:
        return not os.path.lexists(dst)  # with the source gone, dst is the one copy: it stays
    except OSError:
        return False
    if made is None:
        made = (there.st_dev, there.st_ino)
    if (st.st_dev, st.st_ino) != made:
        return True  # replaced since: what is there is not ours to remove
    try:
        os.unlink(dst)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    fsync_dirs([dst.parent])  # the removal must last, or a power cut brings the duplicate back
    return True


def remove_empty(folder: Path, keep: Path) -> None:
    """Remove ``folder``, then each parent below ``keep``, while they are empty.

    ``rmdir`` removes only an empty folder, so a photo that lands in one
    meanwhile keeps it; a move that finds its folder gone makes it again
    (:func:`move`).
    """
    while folder != keep and folder.is_relative_to(keep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = folder.parent


def make_folder(folder: Path) -> None:
    """``mkdir -p`` that makes each folder it creates last: its entry in its parent is fsynced.

    The batch fsyncs the folder a photo lands in, not the new ones above it
    (a month's date folder): a power cut must not take those, and the photo
    with them, once its inbox copy's removal is on disk.
    """
    missing: list[Path] = []
    while not os.path.isdir(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(new)
        fsync_dirs([new.parent])


#: How a cross-device copy's temporary is made: new, never through a link.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_across(src: Path, folder: int, dst: Path) -> tuple[int, int]:
    """Copy ``src`` to ``dst`` (in the open ``folder``) on another filesystem; returns the copy's inode."""
    tmp = partial_path(dst).name
    try:
        with (
            open(src, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as source,
            open(tmp, "wb", opener=lambda p, _: os.open(p, _NEW_FILE, 0o600, dir_fd=folder)) as copy,
        ):
            shutil.copyfileobj(source, copy, 1024 * 1024)
            copy.flush()
            st_src = os.fstat(source.fileno())
            os.fchmod(copy.fileno(), stat.S_IMODE(st_src.st_mode))
            os.utime(copy.fileno(), ns=(st_src.st_atime_ns, st_src.st_mtime_ns))
            os.fsync(copy.fileno())
            st = os.fstat(copy.fileno())
        crash_point("after-copy")
        os.link(tmp, dst.name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
    return st.st_dev, st.st_ino

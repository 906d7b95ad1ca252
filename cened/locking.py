"""One process at a time may change a database's intents: the daemon, or ``cened doctor --fix``;
and one daemon at a time watches an inbox or a library.

An exclusive ``flock`` on ``<database>.lock`` is held for as long as either
runs, and the daemon holds one on its inbox and library folders themselves.
The kernel releases a lock however the process ends, so a crashed daemon
never leaves a stale one; the PID written in the database's is only for the
message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import structlog

from cened.errors import ConfigError, JournalError

log = structlog.get_logger("cened.locking")


def lock_path(database: Path) -> Path:
    """The file a daemon holds locked for as long as it uses ``database``."""
    return database.with_name(database.name + ".lock")


def hold_lock(database: Path) -> int:
    """Lock ``database`` for this process; returns the lock's descriptor, to close at the end.

    ``flock`` is released by the kernel however the process ends, so a
    crashed daemon never leaves a stale lock; the PID inside is only for the
    message the next daemon gives.
    """
    path = lock_path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise JournalError(f"cannot create the lock file {path}: {exc.strerror}") from exc
    try:
        locked = _flock(fd)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise JournalError(
            f"{database} is in use by another cened daemon (pid {holder}); "
            "one daemon per database: stop the other one first"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise JournalError(f"cannot lock {path}: {exc.strerror}") from exc
    if not locked:
        log.warning("database-not-locked", lock=str(path))
        return fd
    with contextlib.suppress(OSError):  # the PID is for the message only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def exclusive(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` for the body of the ``with``.

    With ``wait``, waits for another holder to finish; without it, yields
    False at once if another process holds it.  Yields True on a filesystem
    without flock: nothing can be held there, and that must not stop cened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, and works on a lock file another user made.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            _flock(fd, wait=wait)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def hold_folders(folders: dict[str, Path]) -> list[int]:
    """Lock each folder itself (a ``flock`` on its descriptor: nothing is written in it).

    Two daemons with different databases on one inbox would race to file the
    same photos, and on one library record each other's filing as moves by
    hand; the second is refused with a :class:`ConfigError` (exit 2), the
    mistake being in its configuration.
    """
    held: list[int] = []
    try:
        for key, folder in folders.items():
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            held.append(fd)
            try:
                _flock(fd)
            except BlockingIOError:
                raise ConfigError(
                    f"{key} {folder} is used by another cened daemon, with another database; "
                    "give each daemon its own inbox and library"
                ) from None
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _flock(fd: int, *, wait: bool = False) -> bool:
    """Take an exclusive lock (by default without waiting); False where the filesystem has no flock.

    A filesystem without flock (some network ones) must not keep cened from
    running.  Raises BlockingIOError when another process holds the lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return False
        raise
    return True

"""Finishing or abandoning the moves a crash interrupted.

Every pending row in the journal is an intent to move ``source`` to
``destination``.  What is on disk says how far it got:

========================  =====================================================
source     destination    resolution
========================  =====================================================
gone       our file       the move finished: mark done
present    same inode     crashed between link and unlink: unlink source, done
present    our file       cross-device copy finished: unlink source, done
present    absent         never happened: drop any partial copy, mark failed
                          (the file is still in the inbox and is taken again)
gone       absent         the file vanished: mark failed, nothing to do
present    someone else's leave both, mark failed
========================  =====================================================

"Our file" means the destination's sha256 equals the hash in the intent; a
source is only ever removed once a byte-identical destination exists.  A
source that cannot be removed (a read-only inbox) keeps the photo: the
destination is taken back and the intent fails, to be retried.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from cened import moving
from cened.hashing import sha256_or_none
from cened.journal import Entry, Journal, State

log = structlog.get_logger("cened.recovery")


@dataclass(frozen=True)
class Resolution:
    id: int
    state: State  # DONE or FAILED
    reason: str | None


def resolve(entry: Entry) -> Resolution:
    """Decide and carry out what one pending intent needs; see the module table."""
    assert entry.id is not None and entry.destination is not None
    src, dst = entry.source, entry.destination
    src_there = os.path.lexists(src)
    dst_there = os.path.lexists(dst)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(moving.partial_path(dst))
    if dst_there and src_there and _same_file(src, dst):
        return _drop_source(entry.id, src, dst)
    if dst_there and sha256_or_none(dst) == entry.sha256:
        if src_there and sha256_or_none(src) == entry.sha256:
            return _drop_source(entry.id, src, dst, copy=True)
        if src_there:
            return Resolution(entry.id, State.FAILED, "recovery: source changed after the copy; both kept")
        return Resolution(entry.id, State.DONE, None)
    if dst_there:
        return Resolution(
            entry.id, State.FAILED, "recovery: destination holds another file; source left alone"
        )
    if src_there:
        return Resolution(entry.id, State.FAILED, "recovery: interrupted before the move; will retry")
    return Resolution(entry.id, State.FAILED, "recovery: file vanished")


def reconcile(journal: Journal) -> list[Resolution]:
    """Resolve every pending intent; returns what was decided, for the start-up log."""
    pending = journal.pending()
    resolutions = [resolve(entry) for entry in pending]
    if resolutions:
        moving.fsync_dirs(p.parent for e in pending for p in (e.source, e.destination) if p is not None)
        journal.set_state((r.id, r.state, r.reason) for r in resolutions)
        for r in resolutions:
            log.warning("recovered-intent", id=r.id, state=r.state, reason=r.reason)
    return resolutions


def _drop_source(row_id: int, src: Path, dst: Path, *, copy: bool = False) -> Resolution:
    """Finish a move whose destination is complete: remove the source, or else take the destination back."""
    made = None  # a link is the source's inode; a copy is its own
    if copy:
        st = os.lstat(dst)
        made = (st.st_dev, st.st_ino)
    try:
        os.unlink(src)
    except FileNotFoundError:
        pass
    except OSError as exc:
        kept = "kept in the inbox" if moving.take_back(src, dst, made) else "the copy too: both kept"
        return Resolution(
            row_id, State.FAILED, f"recovery: cannot remove the source ({exc.strerror}); {kept}"
        )
    return Resolution(row_id, State.DONE, None)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

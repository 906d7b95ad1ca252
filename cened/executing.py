"""The journal's intent → move → done protocol: the one way cened moves a file it keeps a row of.

The order of side effects is the crash-safety argument, the same for the
filer, undo and correct, the library follower and doctor:

1. every planned move is committed to the journal as a *pending* intent
   (a photo and its companions in one transaction);
2. files are moved (link + unlink, never overwriting), a companion only once
   its photo has;
3. the folders are fsync'd, and the intents marked *done* or *failed* in one
   transaction.

A crash between 1 and 3 leaves pending rows that :mod:`cened.recovery`
resolves from what is on disk: each file is where it was or where it was going.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from cened import moving
from cened.faults import crash_point
from cened.journal import Entry, Journal, State


class Orphan(StrEnum):
    """What becomes of a companion whose photo did not move."""

    DROP = "drop"  # its intent is dropped: it stays, and goes with the photo's next try (the filer)
    FAIL = "fail"  # its row is failed, naming why (undo, correct: a person asked for this move)


#: The reason of a companion's failed row when its photo did not move.
PHOTO_NOT_MOVED = "not moved: its photo was not"

log = structlog.get_logger("cened.executing")
#: Folders found to be links, said once each in the log (every move into one fails alike).
_linked: set[str] = set()
_linked_lock = threading.Lock()


@dataclass
class Executed:
    """One intent after its try: done, failed (``error``) or left with its photo (``orphaned``)."""

    entry: Entry
    error: OSError | None = None
    orphaned: bool = False


def failed_move(_entry: Entry, exc: OSError) -> str | None:
    """The reason a failed move's row keeps; None drops the intent instead (the caller has a row for it)."""
    return f"move failed: {exc.strerror or exc}"


def execute(
    journal: Journal,
    intents: Sequence[Entry],
    *,
    roots: Sequence[Path],
    notes: Sequence[Entry] = (),
    orphan: Orphan = Orphan.FAIL,
    on_failure: Callable[[Entry, OSError], str | None] = failed_move,
) -> list[Executed]:
    """Journal ``intents`` (pending rows with a source and a destination), move each file, settle the rows.

    ``roots`` are the folders (library, quarantine, inbox) below which no
    folder is reached through a symbolic link (:func:`cened.moving.open_folder`).
    ``notes`` are rows without a move, committed in the same transaction.  A
    companion's ``lead`` must come before it.  A missing destination folder
    is made.  ``on_failure`` gives a failed move's reason, or None to drop
    its intent.
    """
    journal.add([*intents, *notes])
    crash_point("after-intent")
    executed: list[Executed] = []
    updates: list[tuple[int, State, str | None]] = []
    orphans: list[int] = []  # dropped before the failures: their rows name their photo's
    dropped: list[int] = []
    touched: set[Path] = set()
    for entry in intents:
        row_id, dst = entry.id, entry.destination
        assert row_id is not None and dst is not None
        if entry.lead is not None and entry.lead.state != State.DONE:
            if orphan == Orphan.DROP:
                orphans.append(row_id)
            else:
                entry.state, entry.reason = State.FAILED, PHOTO_NOT_MOVED
                updates.append((row_id, State.FAILED, entry.reason))
            executed.append(Executed(entry, orphaned=True))
            continue
        try:
            moving.move(entry.source, dst, _root(dst, roots))
        except OSError as exc:
            if isinstance(exc, moving.LinkedFolder):
                _say_linked(exc)
            touched.update((entry.source.parent, dst.parent))  # a move cut short may have linked
            reason = on_failure(entry, exc)
            if reason is None:
                dropped.append(row_id)
            else:
                entry.state, entry.reason = State.FAILED, reason
                updates.append((row_id, State.FAILED, reason))
            executed.append(Executed(entry, error=exc))
            continue
        entry.state = State.DONE
        updates.append((row_id, State.DONE, None))
        touched.update((entry.source.parent, dst.parent))
        executed.append(Executed(entry))
    moving.fsync_dirs(touched)
    crash_point("before-done")
    if updates or orphans or dropped:
        journal.set_state(updates, discard=orphans + dropped)
    return executed


def _root(path: Path, roots: Sequence[Path]) -> Path | None:
    """The innermost of ``roots`` that ``path`` is below, if any."""
    below = [root for root in roots if path.is_relative_to(root)]
    return max(below, key=lambda root: len(root.parts)) if below else None


def _say_linked(exc: moving.LinkedFolder) -> None:
    with _linked_lock:
        if exc.filename in _linked:
            return
        _linked.add(exc.filename)
    log.error(
        "folder-is-a-link",
        folder=os.fsdecode(exc.filename),
        error=exc.strerror,
        action="nothing is moved into it until it is a folder again; the files wait where they are",
    )

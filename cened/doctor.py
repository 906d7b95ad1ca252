"""``cened doctor``: find where the log and the disk disagree, and mend it without deleting.

Checks, in order:

* **pending intents** -- moves a crash interrupted (normally resolved at
  start-up; doctor resolves them too, with :mod:`cened.recovery`);
* **missing files** -- the log says a photo is at a path where nothing is.
  If a file with the same size and sha256 is elsewhere in the library
  (someone moved it by hand) a ``corrected`` row (in another album now) or
  a ``relocated`` one records where, exactly as the daemon records a move it
  sees (cened.library); otherwise a ``missing`` row records the loss, so
  undo refuses it with a clear reason;
* **unlogged files** -- photos in the library that no row accounts for
  (copied in by hand, or filed by another tool): an ``adopted`` row records
  them so history and stats include them, with what the photo looks like
  (``look``), so that a copy of it arriving later is filed beside it;
* **stray partial copies** (``.name.cened-part``) with no intent behind them:
  moved to quarantine, never deleted;
* **quarantined files that changed** since their row (size, sha256): a writer
  that had not finished went on writing into one; put back in the inbox, to
  be read again (:func:`cened.undoing.return_changed`);
* **unsigned photos** -- filed before near-duplicates were looked for, or
  signed by an older version (:mod:`cened.ml.similar`): copies of them are not
  recognised until ``look`` signs them.  Not a disagreement, so the exit code
  ignores them.

Without ``--fix`` nothing is changed and the exit code says whether all is well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cened import executing, layout, moving, recovery, undoing
from cened.hashing import sha256_file
from cened.journal import LIBRARY_ACTIONS, Action, Entry, Journal, State
from cened.library import (
    FOUND_BY_HASH,
    NOT_FOUND,
    Places,
    current_rows,
    files,
    follow_companions,
    follow_ups,
    match,
)
from cened.ml import similar

__all__ = ["Report", "current_rows", "examine", "repair"]


@dataclass
class Report:
    pending: list[Entry] = field(default_factory=list)
    missing: list[Entry] = field(default_factory=list)
    unlogged: list[Path] = field(default_factory=list)
    partials: list[Path] = field(default_factory=list)
    changed: list[Entry] = field(default_factory=list)  # quarantined files no longer as their rows say
    unsigned: list[Entry] = field(default_factory=list)  # photos this version has not signed

    @property
    def clean(self) -> bool:
        return not (self.pending or self.missing or self.unlogged or self.partials or self.changed)


def examine(
    journal: Journal, library: Path, quarantine: Path, photo: Callable[[Path], bool] | None = None
) -> Report:
    """What disagrees; with ``photo`` (is this file a photo, not a companion?), also the unsigned photos."""
    report = Report(pending=journal.pending())
    current = current_rows(journal)
    known: set[Path] = set()
    for row in current:
        assert row.destination is not None
        known.add(row.destination)
        if not os.path.lexists(row.destination):
            report.missing.append(row)
        elif undoing.changed_since_quarantined(row):
            report.changed.append(row)
        elif photo is not None and _unsigned(row, library, quarantine) and photo(row.destination):
            report.unsigned.append(row)
    # Compared forwards: a shortened temporary's name does not give back its destination's.
    pending_partials = {moving.partial_path(e.destination) for e in report.pending if e.destination}
    roots = [library] + ([] if quarantine.resolve().is_relative_to(library.resolve()) else [quarantine])
    for root in roots:
        for path in sorted(files(root)):
            if path.name.endswith(moving.PARTIAL_SUFFIX):
                if path not in pending_partials:
                    report.partials.append(path)
            elif path not in known:
                report.unlogged.append(path)
    return report


def repair(
    journal: Journal,
    report: Report,
    library: Path,
    quarantine: Path,
    template: str = layout.DEFAULT,
    *,
    places: Places | None = None,
    look: Callable[[Path], tuple[bytes | None, float | None]] | None = None,
) -> list[str]:
    """Apply the fixes described in the module docstring; returns what was done.

    ``template`` (the ``layout`` setting) tells which folder of a nested path is a file's album;
    ``places`` (from the settings) also knows the review album and the class → album mapping;
    ``look`` gives an adopted photo's signature and capture time (:func:`cened.pipeline.look`).
    """
    places = places or Places(library, quarantine, template)
    done: list[str] = []
    if report.pending:
        for r in recovery.reconcile(journal):
            done.append(f"resolved interrupted move #{r.id}: {r.state}")
    # The daemon's own search and rows for a photo it finds gone (cened.library).
    found = match(report.missing, report.unlogged)
    relocated = set(found.values())
    items = [(row, found.get(row.id or 0)) for row in report.missing]
    rows: list[Entry] = follow_ups(
        journal, places, items, reason=FOUND_BY_HASH, gone=(Action.MISSING, NOT_FOUND)
    )
    found_rows = list(rows)
    for entry in rows:
        if entry.action == Action.MISSING:
            done.append(f"#{entry.ref_id}: recorded as missing")
        else:
            what = f"{entry.action}, {entry.human_label or entry.album or 'no album'}"
            done.append(f"#{entry.ref_id}: found at {os.fsdecode(entry.destination or '')} ({what})")
    for path in report.unlogged:
        if path in relocated:
            continue
        try:
            sha, size = sha256_file(path), path.stat().st_size
        except OSError:
            continue
        signature, shot_at = look(path) if look is not None else (None, None)
        rows.append(
            Entry(
                action=Action.ADOPTED,
                source=path,
                destination=path,
                sha256=sha,
                size=size,
                album=_album(path, library, template),
                reason="in the library without a log row",
                signature=signature,
                shot_at=shot_at,
            )
        )
        done.append(f"adopted {os.fsdecode(path)}")
    if rows:
        journal.add(rows)
    # Moved like any other file: its intent is journaled first (cened.executing).
    partials: list[Entry] = []
    for path in report.partials:
        try:
            sha, size = sha256_file(path), path.stat().st_size
        except OSError:
            continue
        name = f"{moving.completed_path(path).name}.partial"
        dst = moving.free_name(quarantine, name, {e.destination for e in partials if e.destination})
        partials.append(
            Entry(
                action=Action.QUARANTINED,
                source=path,
                destination=dst,
                sha256=sha,
                size=size,
                reason="stray partial copy",
                state=State.PENDING,
            )
        )
    for moved in executing.execute(journal, partials, roots=places.roots):
        if moved.error is None:
            done.append(f"quarantined stray partial {os.fsdecode(moved.entry.source)}")
        else:
            done.append(f"could not quarantine {os.fsdecode(moved.entry.source)} ({moved.entry.reason})")
    for row in report.changed:
        back = undoing.return_changed(journal, row, places.roots)
        if back and back[0].state == State.DONE:
            done.append(
                f"#{row.id}: changed since quarantined; put back at {os.fsdecode(back[0].destination or '')}"
            )
        else:
            done.append(f"#{row.id}: changed since quarantined; could not put it back")
    if look is not None and report.unsigned:
        signed = [(row.id or 0, *look(row.destination or row.source)) for row in report.unsigned]
        journal.sign([(row_id, sig or similar.UNSIGNABLE, shot_at) for row_id, sig, shot_at in signed])
        made = sum(sig is not None for _, sig, _ in signed)
        done.append(f"signed {made} photos for near-duplicates" + _could_not(len(signed) - made))
    # Companions a photo moved by hand left behind go to it, as the daemon has them do.
    for entry in follow_companions(journal, places, found_rows):
        what = "moved" if entry.state == State.DONE else f"could not move ({entry.reason})"
        where = f"{os.fsdecode(entry.source)} -> {os.fsdecode(entry.destination or '')}"
        done.append(f"{what} {where} with its photo")
    return done


def _could_not(n: int) -> str:
    return f"; {n} could not be decoded, and are not looked at again" if n else ""


def _unsigned(row: Entry, library: Path, quarantine: Path) -> bool:
    """Whether ``row`` files a photo in the library that this version of the signature has not looked at."""
    dst = row.destination
    in_library = dst is not None and dst.is_relative_to(library) and not dst.is_relative_to(quarantine)
    return (
        in_library
        and row.action in LIBRARY_ACTIONS
        and row.group_id is None
        and not similar.current(row.signature)
    )


def _album(path: Path, library: Path, template: str) -> str:
    """A file's album: where the layout puts it, or else the folder it is in."""
    if path.is_relative_to(library):
        album = layout.album_of(template, path.relative_to(library))
        if album is not None:
            return album
    return path.parent.name

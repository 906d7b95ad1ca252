"""Undo and correct: putting a photo back, or where it should have gone.

Both are moves like any other -- journaled as an intent first, then done --
recorded as new rows that point at the row they reverse (``ref_id``), so the
history stays append-only and an undo can itself be audited.

A request is checked as a whole before anything moves: if any photo is gone,
has changed since it was filed (its sha256 differs) or would land on a name
that is now taken, nothing is moved and every problem is reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cened import moving
from cened.config import Settings
from cened.journal import MOVING_ACTIONS, Entry, Journal
from cened.ml.modelpack import sha256_file


class UndoError(Exception):
    """The request cannot be carried out; nothing was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Planned:
    row: Entry
    source: Path
    destination: Path


def parse_since(text: str, now: datetime | None = None) -> str:
    """``30m``, ``2h``, ``7d`` or an ISO date/time, as the ISO string the journal compares."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
        return (now - timedelta(**{unit: int(match[1])})).isoformat(timespec="milliseconds")
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"cannot read {text!r} as a time (try 2h, 3d or 2026-11-24T10:00)") from exc
    if when.tzinfo is None:
        when = when.astimezone()  # a bare time means local time, as a person typed it
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def undoable(journal: Journal, *, since: str | None = None, batch_id: str | None = None) -> list[Entry]:
    """Completed moves that no later undo or correction has superseded, oldest first."""
    rows = journal.history(since=since, batch_id=batch_id, actions=MOVING_ACTIONS)
    return [r for r in rows if r.state == "done" and journal.successor(r.id or 0) is None]


def origin(journal: Journal, row: Entry) -> Entry:
    """The first row of a photo's chain (before any corrections): where it came from."""
    while row.ref_id is not None and row.action in ("corrected", "relocated"):
        parent = journal.get(row.ref_id)
        if parent is None:
            break
        row = parent
    return row


def _check_current(journal: Journal, row: Entry) -> list[str]:
    """Problems that stop ``row``'s photo from being moved again."""
    if row.action not in MOVING_ACTIONS:
        return [f"#{row.id} is a {row.action!r} row; only moves can be undone or corrected"]
    if row.state != "done":
        return [f"#{row.id} is {row.state}, not a completed move"]
    later = journal.successor(row.id or 0)
    if later is not None:
        return [f"#{row.id} was already {later.action} by #{later.id}"]
    assert row.destination is not None
    try:
        if sha256_file(row.destination) != row.sha256:
            return [f"#{row.id}: {os.fsdecode(row.destination)} has changed since it was filed"]
    except FileNotFoundError:
        return [f"#{row.id}: {os.fsdecode(row.destination)} is gone"]
    except OSError as exc:
        return [f"#{row.id}: cannot read {os.fsdecode(row.destination)}: {exc.strerror}"]
    return []


def plan_undo(journal: Journal, ids: Sequence[int]) -> list[Planned]:
    problems: list[str] = []
    plans: list[Planned] = []
    targets: set[Path] = set()
    for row_id in ids:
        row = journal.get(row_id)
        if row is None:
            problems.append(f"#{row_id} does not exist")
            continue
        found = _check_current(journal, row)
        if not found:
            home = origin(journal, row).source
            if os.path.lexists(home) or home in targets:
                found = [f"#{row_id}: {os.fsdecode(home)} is taken; move that file away first"]
            else:
                targets.add(home)
                assert row.destination is not None
                plans.append(Planned(row, row.destination, home))
        problems += found
    if problems:
        raise UndoError(problems)
    return plans


def plan_correct(journal: Journal, settings: Settings, row_id: int, label: str) -> Planned:
    row = journal.get(row_id)
    if row is None:
        raise UndoError([f"#{row_id} does not exist"])
    problems = _check_current(journal, row)
    if problems:
        raise UndoError(problems)
    album = settings.album_for(label)
    if not label or "/" in label or label in (".", ".."):
        raise UndoError([f"{label!r} is not a usable album name"])
    assert row.destination is not None
    if row.destination.parent == settings.library / album:
        raise UndoError([f"#{row_id} is already in album {album!r}"])
    return Planned(row, row.destination, moving.free_name(settings.library / album, row.destination.name))


def carry_out(
    journal: Journal, plans: Sequence[Planned], action: str, label: str | None = None
) -> list[Entry]:
    """Journal the moves as intents, move, then mark them done (see :mod:`cened.pipeline`)."""
    entries = [
        Entry(
            action=action,
            source=p.source,
            destination=p.destination,
            sha256=p.row.sha256,
            size=p.row.size,
            label=p.row.label,
            album=p.destination.parent.name if label else None,
            confidence=p.row.confidence,
            probabilities=p.row.probabilities,
            model_version=p.row.model_version,
            pixel_source=p.row.pixel_source,
            ref_id=p.row.id,
            human_label=label,
            state="pending",
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        for p in plans
    ]
    journal.add(entries)
    updates: list[tuple[int, str, str | None]] = []
    for plan, entry in zip(plans, entries, strict=True):
        assert entry.id is not None
        try:
            plan.destination.parent.mkdir(parents=True, exist_ok=True)
            moving.move(plan.source, plan.destination)
        except OSError as exc:
            entry.state = "failed"
            entry.reason = f"move failed: {exc.strerror or exc}"
            updates.append((entry.id, "failed", entry.reason))
            continue
        entry.state = "done"
        updates.append((entry.id, "done", None))
    moving.fsync_dirs(p for plan in plans for p in (plan.source.parent, plan.destination.parent))
    journal.set_state(updates)
    return entries

"""Undo and correct: putting a photo back, or where it should have gone.

Both are moves like any other -- journaled as an intent first, then done --
recorded as new rows that point at the row they reverse (``ref_id``), so the
history stays append-only and an undo can itself be audited.

A request is checked as a whole before anything moves: if any photo is gone,
has changed since it was filed (its sha256 differs) or would land on a name
that is now taken, nothing is moved and every problem is reported.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cened import executing, layout, moving
from cened.config import Settings, album_name_for_people
from cened.errors import ConfigError, ModelError, Refused
from cened.hashing import sha256_file
from cened.journal import MOVING_ACTIONS, Action, Entry, Journal, State


class UndoError(Refused):
    """The request cannot be carried out; nothing was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [f"refused: {problem}" for problem in self.problems] + ["nothing was moved"]


class UnknownAlbum(UndoError):
    """A correction into an album cened does not know: most likely a typo, so nothing moves."""

    def __init__(self, row_id: int, label: str, nearest: str | None) -> None:
        self.row_id, self.label, self.nearest = row_id, label, nearest
        guess = f"; did you mean {nearest!r}?" if nearest else ""
        super().__init__([f"there is no album {label!r}{guess}"])

    def lines(self) -> list[str]:
        new = shlex.join(["cened", "correct", str(self.row_id), self.label, "--new-album"])
        return [*super().lines()[:-1], f"to make {self.label!r} a new album: {new}", "nothing was moved"]


@dataclass(frozen=True)
class Planned:
    row: Entry
    source: Path
    destination: Path
    album: str | None = None  # a correction's new album
    lead: Planned | None = None  # the photo's plan, for a file that travels with it


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
        raise ConfigError(f"cannot read {text!r} as a time (try 2h, 3d or 2026-11-24T10:00)") from exc
    if when.tzinfo is None:
        when = when.astimezone()  # a bare time means local time, as a person typed it
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def undoable(
    journal: Journal,
    *,
    since: str | None = None,
    batch_id: str | None = None,
    actions: Sequence[Action] = MOVING_ACTIONS,
) -> list[Entry]:
    """Completed moves (of ``actions``) that no later undo or correction has superseded, oldest first.

    Files that travel with a photo are left out: they go wherever their photo goes.
    """
    rows = journal.history(since=since, batch_id=batch_id, actions=actions)
    return [
        r
        for r in rows
        if r.state == State.DONE and r.group_id is None and journal.successor(r.id or 0) is None
    ]


def select_undo(
    journal: Journal,
    *,
    ids: Sequence[int] = (),
    last: int | None = None,
    since: str | None = None,
    batch_id: str | None = None,
) -> list[int]:
    """The rows an undo request names: ids as given, else the last N or every move since a time or of a batch.

    ``since`` is as a person types it (``2h``, an ISO time); at least one way must be given.
    """
    if ids:
        return list(ids)
    if last is None and since is None and batch_id is None:
        raise ConfigError("say what to undo: IDs, --last N, --since TIME or --batch ID")
    rows = undoable(journal, since=parse_since(since) if since else None, batch_id=batch_id)
    if last is not None:
        rows = rows[-last:] if last > 0 else []
    return [r.id for r in rows if r.id is not None]


def corrections(journal: Journal) -> list[Entry]:
    """Photos whose album a person corrected, as they stand now."""
    return [r for r in undoable(journal, actions=[Action.CORRECTED]) if r.human_label]


def export_corrections(rows: Sequence[Entry], folder: Path) -> int:
    """Copy corrected photos into ``folder/<label>/``, the layout ``cened train --data`` reads.

    Human labels are the best training data there will ever be; copies, not
    moves, so the albums stay as they are.  Returns how many were copied.
    """
    exported = 0
    for row in rows:
        assert row.destination is not None and row.human_label is not None
        if row.destination.is_file():
            target = moving.free_name(folder / row.human_label, row.destination.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(row.destination, target)
            exported += 1
    return exported


def origin(journal: Journal, row: Entry) -> Entry:
    """The first row of a photo's chain (before any corrections): where it came from."""
    while row.ref_id is not None and row.action in (Action.CORRECTED, Action.RELOCATED):
        parent = journal.get(row.ref_id)
        if parent is None:
            break
        row = parent
    return row


def lead_of(journal: Journal, row: Entry) -> int:
    """The row of the first photo of ``row``'s group (cened.grouping): the one its members name."""
    if row.similar_id is not None:
        return row.similar_id
    first = origin(journal, row).id
    assert first is not None
    return first


def _check_current(journal: Journal, row: Entry) -> list[str]:
    """Problems that stop ``row``'s photo from being moved again."""
    if row.action not in MOVING_ACTIONS:
        return [f"#{row.id} is a {row.action} row; only moves can be undone or corrected"]
    if row.state != State.DONE:
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


def companions_of(journal: Journal, row: Entry) -> list[Entry]:
    """The files that travel with ``row``'s photo, where they are now.

    They name the row they last moved with, which may be one this row
    corrects or relocates: doctor relocates a photo alone.
    """
    found: list[Entry] = []
    while row.id is not None:
        found += journal.group(row.id)
        if row.ref_id is None or row.action not in (Action.CORRECTED, Action.RELOCATED):
            break
        parent = journal.get(row.ref_id)
        if parent is None:
            break
        row = parent
    return found


def _companion_problems(journal: Journal, row: Entry, photo: Entry) -> list[str]:
    problems = _check_current(journal, row)
    if problems:
        hint = f"it travels with #{photo.id}; `cened doctor --fix` records a file that is gone as missing"
        problems = [f"{problems[0]} ({hint})"]
    return problems


def group_rows(journal: Journal, row: Entry) -> list[Entry]:
    """``row`` and the photos filed with it as one group (near-duplicates, a burst), as they are now.

    ``row`` first.  Only a completed move that nothing superseded brings its group
    along: undoing or correcting a row already undone acts on nothing else.
    """
    rows = [row]
    if row.state != State.DONE or row.action not in MOVING_ACTIONS or journal.successor(row.id or 0):
        return rows
    lead_id = lead_of(journal, row)
    lead = journal.get(lead_id)
    now = journal.current(lead) if lead is not None else None
    for other in ([now] if now is not None else []) + journal.similar_to(lead_id):
        if all(other.id != r.id for r in rows):
            rows.append(other)
    return rows


def _with_groups(journal: Journal, ids: Sequence[int]) -> list[int]:
    """``ids``, each followed by the other photos of its group (:func:`group_rows`) not named before."""
    out: list[int] = []
    for row_id in ids:
        row = journal.get(row_id)
        members = group_rows(journal, row) if row is not None else []
        for member_id in [row_id, *(m.id for m in members[1:] if m.id is not None)]:
            if member_id not in out:
                out.append(member_id)
    return out


def plan_undo(journal: Journal, ids: Sequence[int]) -> list[Planned]:
    """Each row's file back where it came from, a photo with the files that travel with it and its group."""
    ids = _with_groups(journal, ids)
    problems: list[str] = []
    plans: list[Planned] = []
    targets: set[Path] = set()
    planned: set[int] = set()

    def back(row: Entry, lead: Planned | None) -> Planned | None:
        home = origin(journal, row).source
        if os.path.lexists(home) or home in targets:
            problems.append(f"#{row.id}: {os.fsdecode(home)} is taken; move that file away first")
            return None
        targets.add(home)
        planned.add(row.id or 0)
        assert row.destination is not None
        plans.append(Planned(row, row.destination, home, lead=lead))
        return plans[-1]

    for row_id in ids:
        row = journal.get(row_id)
        if row is None:
            problems.append(f"#{row_id} does not exist")
            continue
        if row_id in planned:
            continue  # named, and already going with its photo
        found = _check_current(journal, row)
        if found:
            problems += found
            continue
        members = [c for c in companions_of(journal, row) if c.id not in planned]
        found = [p for c in members for p in _companion_problems(journal, c, row)]
        if found:
            problems += found
            continue
        lead = back(row, None)
        for member in members:
            back(member, lead)
    if problems:
        raise UndoError(problems)
    return plans


def known_albums(journal: Journal, settings: Settings) -> set[str]:
    """What ``correct`` takes without ``new_album``: the model's classes and their albums, your
    own albums, the albums of the log, and the album folders in the library."""
    from cened.learn import Albums  # the learner's import is heavy; only a correction pays for it
    from cened.ml import modelpack

    known = set(journal.albums()) | set(Albums.load(settings.learned_dir).albums)
    try:
        classes = modelpack.read_meta(settings.model).classes
    except ModelError:
        classes = ()
    known |= {*classes, *(settings.album_for(c) for c in classes), settings.review_album}
    if settings.other_album:
        known.add(settings.other_album)
    if settings.layout.startswith("{album}") and settings.library.is_dir():
        known |= {
            p.name for p in settings.library.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
        }
    return known


def plan_correct(
    journal: Journal, settings: Settings, row_id: int, label: str, *, new_album: bool = False
) -> list[Planned]:
    """The photo of row ``row_id`` into ``label``'s album, with the files that travel with it and its group.

    Each photo comes before the files that travel with it; the photo named first.

    ``label`` must name an album cened knows (:func:`known_albums`) unless
    ``new_album``: a typo would otherwise make an album of its own, and be
    learned from as a label.
    """
    row = journal.get(row_id)
    if row is None:
        raise UndoError([f"#{row_id} does not exist"])
    album = settings.album_for(label)
    try:  # the same names as `cened album add` takes (and review, other, a class's own)
        album_name_for_people(album, {settings.review_album, settings.other_album, *settings.albums.values()})
    except ValueError as exc:
        raise UndoError([str(exc)]) from exc
    if not new_album:
        known = known_albums(journal, settings)
        if label not in known and album not in known:
            near = difflib.get_close_matches(label, sorted(known), n=1, cutoff=0.6)
            raise UnknownAlbum(row_id, label, near[0] if near else None)
    plans: list[Planned] = []
    problems: list[str] = []
    reserved: set[Path] = set()
    for photo in group_rows(journal, row):
        found = _check_current(journal, photo)
        members = companions_of(journal, photo) if not found else []
        found += [p for c in members for p in _companion_problems(journal, c, photo)]
        if found:
            problems += found
            continue
        planned = _correct_one(settings, photo, members, album, reserved)
        if planned is None and photo is row:
            problems.append(f"#{row_id} is already in album {album!r}")
        plans += planned or []
    if problems:
        raise UndoError(problems)
    return plans


def _correct_one(
    settings: Settings, row: Entry, members: Sequence[Entry], album: str, reserved: set[Path]
) -> list[Planned] | None:
    """One photo and the files that travel with it into ``album``; None if it is there already."""
    assert row.destination is not None
    # Dated folders come from the photo itself, so it keeps its date folders in its new album.
    taken = None
    if layout.uses_date(settings.layout):
        taken = layout.taken(row.destination, row.destination.stat().st_mtime)
    folder = settings.album_folder(album, taken)
    if row.destination.parent == folder:
        return None
    # One stem for the group, as the daemon filed it; a file named otherwise keeps its own name.
    stem = row.destination.stem
    along = [c for c in members if c.destination and c.destination.name.startswith(stem)]
    apart = [c for c in members if c not in along]
    tails = [row.destination.name[len(stem) :]] + [
        c.destination.name[len(stem) :] for c in along if c.destination
    ]
    names = moving.free_names(folder, stem, tails, reserved)
    reserved.update(names)
    lead = Planned(row, row.destination, names[0], album)
    plans = [lead]
    plans += [
        Planned(c, c.destination, dst, album, lead)
        for c, dst in zip(along, names[1:], strict=True)
        if c.destination
    ]
    for c in apart:
        assert c.destination is not None
        dst = moving.free_name(folder, c.destination.name, reserved)
        reserved.add(dst)
        plans.append(Planned(c, c.destination, dst, album, lead))
    return plans


def carry_out(
    journal: Journal,
    plans: Sequence[Planned],
    action: Action,
    label: str | None = None,
    *,
    lead: Entry | None = None,
    roots: Sequence[Path] = (),
    settings: Settings | None = None,
) -> list[Entry]:
    """Journal the moves as intents, move, then mark them done (:mod:`cened.executing`).

    A file that travels with a photo moves only once the photo has.  ``lead``
    is a photo's row already done (moved by hand, cened.library) that plans
    without a lead of their own travel with: their rows name it as their group.
    No folder below ``roots`` (and ``settings``' library, quarantine and
    inbox) is reached through a link.  With ``settings``, date folders of its
    layout left empty are removed.
    """
    entries = [
        p.row.follow_up(
            action,
            source=p.source,
            destination=p.destination,
            album=p.album,  # only a correction's plans have one
            human_label=label if p.lead is None else None,
            group_id=lead.id if lead is not None and p.lead is None else None,
            state=State.PENDING,
        )
        for p in plans
    ]
    for plan, entry in zip(plans, entries, strict=True):
        if plan.lead is not None:
            entry.lead = next(e for p, e in zip(plans, entries, strict=True) if p is plan.lead)
    guarded = [*roots, *(settings.roots if settings is not None else ())]
    executing.execute(journal, entries, roots=guarded)
    if settings is not None:
        left = {p.source.parent for p, e in zip(plans, entries, strict=True) if e.state == State.DONE}
        remove_empty_date_folders(settings, left)
    return entries


def remove_empty_date_folders(settings: Settings, folders: Iterable[Path]) -> None:
    """Remove the layout's date folders that moves out of them left empty (cened.layout.kept_above)."""
    for folder in folders:
        if not folder.is_relative_to(settings.library):
            continue
        relative = folder.relative_to(settings.library)
        kept = layout.kept_above(settings.layout, relative)
        if kept is not None:
            moving.remove_empty(folder, settings.library.joinpath(*relative.parts[:kept]))


#: The reason of the row of a quarantined file put back in the inbox because it changed.
CHANGED_IN_QUARANTINE = "changed after it was quarantined (still being written): put back to be read again"


def changed_since_quarantined(row: Entry) -> bool:
    """Whether a quarantined file is no longer what its row says (size, then sha256): still being written."""
    if row.action != Action.QUARANTINED or row.destination is None or row.sha256 is None:
        return False
    try:
        if row.size is not None and os.lstat(row.destination).st_size != row.size:
            return True
        return sha256_file(row.destination) != row.sha256
    except OSError:
        return False


def return_changed(journal: Journal, row: Entry, roots: Sequence[Path]) -> list[Entry]:
    """Put a quarantined file that changed since, and the files with it, back where they came from.

    Its writer had paused longer than ``unfinished_grace_s`` and went on
    writing into the quarantined file: read again from the inbox, the whole
    photo is filed.  A ``returned`` row supersedes the quarantine's; unlike an
    undo, it does not keep the daemon from filing the file.  A name taken in
    the inbox meanwhile gets ``-1``.
    """
    assert row.destination is not None
    entries: list[Entry] = []
    taken: set[Path] = set()
    for member in [row, *companions_of(journal, row)]:
        assert member.destination is not None
        home = origin(journal, member).source
        back = moving.free_name(home.parent, home.name, taken)
        taken.add(back)
        try:
            st = os.lstat(member.destination)
            sha = sha256_file(member.destination)
        except OSError:
            continue
        entries.append(
            member.follow_up(
                Action.RETURNED,
                source=member.destination,
                destination=back,
                sha256=sha,
                size=st.st_size,
                reason=CHANGED_IN_QUARANTINE,
                state=State.PENDING,
                lead=entries[0] if entries and member is not row else None,
            )
        )
    if not entries or entries[0].source != row.destination:
        return []
    executing.execute(journal, entries, roots=roots)
    return entries

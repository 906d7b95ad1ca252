"""Photos moved or removed by hand in the library, recorded as if cened had done it.

A person who drags a filed photo from one album folder to another says which
album it belongs in: that is a ``corrected`` row, exactly as ``cened correct``
writes one (``human_label`` the new album).  A move that keeps the album (to
another date folder, to review, into ``_duplicates``) is a ``relocated`` row,
and a photo taken out of the library (deleted, or moved out) a ``removed``
one.  Each new row names the row it supersedes (``ref_id``), so ``undo``,
``history`` and ``doctor`` follow the photo to where it is now.

What changed is worked out from the disk and the journal when it is handled,
not from the events that announced it: an undo or correction run by another
process writes its intent *before* it moves anything, so by then the journal
accounts for that move, and the daemon's own filing and doctor's fixes never
leave a file away from where the journal says it is.

A file whose move was not seen (the daemon was stopped, the kernel dropped
events, or a move into a folder not watched yet reads as a deletion) is
looked for among the library's files that no row knows, by size and then
sha256 (:func:`match`); ``cened doctor --fix`` uses the same search.  One not
found anywhere is ``missing`` there: only a deletion seen as it happened says
that the user took it out.

The daemon's ``library`` thread, :class:`LibraryFollower`, feeds :class:`Changes`
from a watchdog observer on the library and applies :func:`record` to them.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from cened import layout, moving, undoing
from cened.config import DUPLICATES_FOLDER, Settings
from cened.hashing import sha256_file
from cened.journal import MOVING_ACTIONS, SUPERSEDING_ACTIONS, Action, Entry, Journal, State
from cened.watching import LibraryWatcher

log = structlog.get_logger("cened.library")

#: Rows that say where a file in the library is (when completed and not superseded).
LOCATING_ACTIONS = (*MOVING_ACTIONS, Action.ADOPTED)
MOVED_BY_HAND = "moved by hand in the library"
FOUND_BY_HASH = "found elsewhere in the library by sha256"
REMOVED_BY_HAND = "taken out of the library by hand (deleted, or moved out)"
NOT_FOUND = "not on disk, nor anywhere else in the library"


@dataclass(frozen=True)
class Places:
    """What the library's folders mean: which album a path is in, and which label an album is."""

    library: Path
    quarantine: Path
    template: str = layout.DEFAULT
    review_album: str = "review"
    albums: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> Places:
        return cls(
            settings.library,
            settings.quarantine_dir,
            settings.layout,
            settings.review_album,
            dict(settings.albums),
        )

    @property
    def roots(self) -> list[Path]:
        """Where filed files are: the library, and the quarantine where it is outside it.

        By the names, not where links lead: a ``_quarantine`` made a link is still the library's.
        """
        inside = self.quarantine.is_relative_to(self.library)
        return [self.library] + ([] if inside else [self.quarantine])

    def album_at(self, path: Path) -> str | None:
        """The album a file at ``path`` is in; None outside any (quarantine, ``_duplicates``, hidden).

        By the layout, or by its folders down to ``{album}`` only, so a photo
        dragged straight into an album's folder is in that album.
        """
        if not path.is_relative_to(self.library) or path.is_relative_to(self.quarantine):
            return None
        rel = path.relative_to(self.library)
        if rel.parts[0] == DUPLICATES_FOLDER or any(part.startswith(".") for part in rel.parts):
            return None  # a trash folder (.Trash-1000) or a hidden name is no album
        return layout.album_of(self.template, rel) or layout.album_within(self.template, rel)

    def label_for(self, album: str, row: Entry) -> str:
        """The human label an album means: its one class (as ``cened correct CLASS`` records), else itself."""
        classes = [c for c in (row.probabilities or {}) if self.albums.get(c, c) == album]
        return classes[0] if len(classes) == 1 else album


@dataclass(frozen=True)
class Change:
    """A file or folder that left ``src``: now at ``dest`` in the library, or gone from it (None)."""

    src: Path
    dest: Path | None
    folder: bool = False


@dataclass
class _Track:
    origin: Path
    now: Path | None
    folder: bool


class Changes:
    """Moves and deletions as they arrive, folded into where each thing that moved started and is now.

    ``a → b`` then ``b → c`` is ``a → c``; a folder moved and then a file in it,
    the file's own start; a move then a deletion, a deletion.  Not thread-safe:
    the library thread alone uses one.
    """

    def __init__(self) -> None:
        self._tracks: list[_Track] = []

    def __bool__(self) -> bool:
        return bool(self._tracks)

    def moved(self, src: Path, dest: Path, *, folder: bool = False) -> None:
        self._went(src, dest, folder)

    def gone(self, path: Path, *, folder: bool = False) -> None:
        self._went(path, None, folder)

    def take(self) -> list[Change]:
        """What changed since the last take; a move back to where it started is no change."""
        out = [Change(t.origin, t.now, t.folder) for t in self._tracks if t.now != t.origin]
        self._tracks = []
        return out

    def _went(self, src: Path, dest: Path | None, folder: bool) -> None:
        exact = False
        for track in self._tracks:
            now = track.now
            if now is None or not (now == src or (folder and now.is_relative_to(src))):
                continue
            exact = exact or now == src
            track.now = None if dest is None else dest / now.relative_to(src)
        if not exact:
            self._tracks.append(_Track(self._origin(src), dest, folder))

    def _origin(self, path: Path) -> Path:
        """Where ``path`` was before a folder above it moved."""
        for track in reversed(self._tracks):
            now = track.now
            if track.folder and now is not None and path != now and path.is_relative_to(now):
                return track.origin / path.relative_to(now)
        return path


@dataclass
class Recorded:
    """What :func:`record` or :func:`reconcile` did."""

    entries: list[Entry] = field(default_factory=list)  # corrected, relocated, removed, missing rows
    followed: list[Entry] = field(default_factory=list)  # companions moved after their photo
    waiting: list[Change] = field(default_factory=list)  # to look at again: a move of cened's is under way


def current_rows(journal: Journal) -> list[Entry]:
    """Rows that say where a photo in the library is now: completed moves nobody superseded.

    Undo rows are left out: a photo put back in the inbox is the inbox's
    business again, and may rightly be gone from there.
    """
    rows = journal.history()
    superseded = {
        r.ref_id
        for r in rows
        if r.ref_id is not None and r.state != State.FAILED and r.action in SUPERSEDING_ACTIONS
    }
    return [
        r for r in rows if r.action in LOCATING_ACTIONS and r.state == State.DONE and r.id not in superseded
    ]


def record(journal: Journal, places: Places, changes: Sequence[Change]) -> Recorded:
    """Record what ``changes`` did to the photos the journal knows, as the disk shows it now.

    A photo counts when the journal's current row has it at a path it is no
    longer at.  It is where the change took it if a file of its size is
    there, else looked for elsewhere in the library (:func:`match`), else
    removed.  A photo whose undo or correction is under way is left for later
    (``waiting``); a photo moved alone has its companions moved after it.
    """
    done = Recorded()
    items: list[tuple[Entry, Path | None]] = []
    for path, dest in _expected(journal, changes).items():
        row = journal.last_at(path)
        if row is None or row.action not in LOCATING_ACTIONS:
            continue  # not ours: a temporary, a file copied in, a row already superseded
        later = journal.successor(row.id or 0)
        if later is not None:
            if later.state == State.PENDING:  # its mover has not finished: look again once it has
                done.waiting.append(Change(path, dest))
            continue
        if os.path.lexists(path):
            continue  # there after all: moved back, or replaced by an editor's save
        items.append((row, dest if dest is not None and _holds(dest, row) else None))
    lost = [row for row, where in items if where is None]
    if lost:
        found = match(lost, strangers(journal, places, {row.size for row in lost}))
        items = [(row, where or found.get(row.id or 0)) for row, where in items]
    entries = follow_ups(journal, places, items, reason=MOVED_BY_HAND, gone=(Action.REMOVED, REMOVED_BY_HAND))
    done.entries = journal.supersede(entries)
    done.followed = follow_companions(journal, places, done.entries)
    _log(done)
    return done


def reconcile(journal: Journal, places: Places) -> Recorded:
    """Compare every current row with the disk and record where each photo went (start-up, lost events).

    The library is listed before the rows are read, so a photo filed
    meanwhile is neither missed nor taken for one that moved.
    """
    on_disk = [path for root in places.roots for path in files(root)]
    rows = current_rows(journal)
    lost = [r for r in rows if r.destination is not None and not os.path.lexists(r.destination)]
    if not lost:
        return Recorded()
    known = {r.destination for r in rows} | {e.destination for e in journal.pending()}
    found = match(lost, [p for p in on_disk if p not in known and not p.name.endswith(moving.PARTIAL_SUFFIX)])
    items = [(row, found.get(row.id or 0)) for row in lost]
    entries = follow_ups(journal, places, items, reason=FOUND_BY_HASH, gone=(Action.MISSING, NOT_FOUND))
    done = Recorded(journal.supersede(entries))
    done.followed = follow_companions(journal, places, done.entries)
    _log(done)
    return done


def match(lost: Sequence[Entry], candidates: Iterable[Path]) -> dict[int, Path]:
    """Where each ``lost`` row's file is among ``candidates`` (files no row knows): same size, then sha256.

    Only candidates of a lost row's size are hashed, each at most once, and
    each is the new place of one row at most.  A row without a size (an old
    log) is compared with every candidate.
    """
    sizes = {row.size for row in lost}
    by_size: dict[int, list[Path]] = {}
    for path in candidates:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (None in sizes or st.st_size in sizes):
            by_size.setdefault(st.st_size, []).append(path)
    hashes: dict[Path, str | None] = {}
    taken: set[Path] = set()
    found: dict[int, Path] = {}
    for row in lost:
        if row.sha256 is None or row.id is None:
            continue
        if row.size is not None:
            pool = by_size.get(row.size, [])
        else:
            pool = [p for same in by_size.values() for p in same]
        for path in pool:
            if path in taken:
                continue
            if path not in hashes:
                try:
                    hashes[path] = sha256_file(path)
                except OSError:
                    hashes[path] = None
            if hashes[path] == row.sha256:
                found[row.id] = path
                taken.add(path)
                break
    return found


def strangers(journal: Journal, places: Places, sizes: set[int | None]) -> list[Path]:
    """Files in the library of one of ``sizes`` (any, with None among them) that no row accounts for."""
    out = []
    for root in places.roots:
        for path in files(root):
            if path.name.endswith(moving.PARTIAL_SUFFIX):
                continue
            try:
                size = os.lstat(path).st_size
            except OSError:
                continue
            if (None in sizes or size in sizes) and not _known(journal, path):
                out.append(path)
    return out


def follow_ups(
    journal: Journal,
    places: Places,
    items: Sequence[tuple[Entry, Path | None]],
    *,
    reason: str,
    gone: tuple[Action, str],
) -> list[Entry]:
    """The rows that record each row's file found at a new place, or gone (``gone``: action and reason).

    Photos come first.  A companion found in the same pass as its photo moved
    with it (``lead``: its row names the photo's new row, and shares its
    action and album); any other keeps its group.
    """
    ordered = sorted(items, key=lambda item: item[0].group_id is not None)
    new: dict[int, Entry] = {}
    out: list[Entry] = []
    for row, where in ordered:
        entry = _found(row, where, places, reason) if where is not None else _gone(row, *gone)
        new[row.id or 0] = entry
        out.append(entry)
    for row, _ in ordered:
        photo = new[row.id or 0]
        if row.group_id is not None or photo.action not in (Action.CORRECTED, Action.RELOCATED):
            continue
        for companion in undoing.companions_of(journal, row):
            entry = new.get(companion.id or 0)
            if entry is not None and entry.action in (Action.CORRECTED, Action.RELOCATED):
                entry.lead, entry.group_id = photo, None
                entry.action, entry.album = photo.action, photo.album  # one decision, as for cened correct
    return out


def follow_companions(journal: Journal, places: Places, entries: Sequence[Entry]) -> list[Entry]:
    """Move the companions a photo moved by hand left behind into its new folder, as ``cened correct`` would.

    Journaled as intents before they move (:func:`cened.undoing.carry_out`);
    the photo's stem is theirs again if it was renamed.  A companion gone or
    changed since it was filed stays where it is, with a warning.
    """
    moved: list[Entry] = []
    for photo in entries:
        if photo.group_id is not None or photo.lead is not None:
            continue
        if photo.action not in (Action.CORRECTED, Action.RELOCATED) or photo.destination is None:
            continue
        plans: list[undoing.Planned] = []
        reserved: set[Path] = set()
        old_stem, folder = photo.source.stem, photo.destination.parent
        for companion in undoing.companions_of(journal, photo):
            where = companion.destination
            if companion.group_id == photo.id or where is None:
                continue  # moved by hand with it, and recorded so
            problem = _unfit(companion)
            if problem is not None:
                log.warning("companion-left", file=os.fsdecode(where), photo=photo.id, problem=problem)
                continue
            name = where.name
            if name.startswith(old_stem):
                name = photo.destination.stem + name[len(old_stem) :]
            if folder / name == where:
                continue
            target = moving.free_name(folder, name, reserved)
            reserved.add(target)
            plans.append(undoing.Planned(companion, where, target, photo.album))
        if plans:
            moved += undoing.carry_out(journal, plans, photo.action, lead=photo, roots=places.roots)
    return moved


def _expected(journal: Journal, changes: Sequence[Change]) -> dict[Path, Path | None]:
    """Each known file's path before ``changes`` and where they would have taken it.

    Folders first, the shallowest first, then files: the change nearest a file is the one that counts.
    """
    expect: dict[Path, Path | None] = {}
    for change in sorted(changes, key=lambda c: (not c.folder, len(c.src.parts))):
        if not change.folder:
            expect[change.src] = change.dest
            continue
        for row in journal.below(change.src):
            assert row.destination is not None
            rel = row.destination.relative_to(change.src)
            expect[row.destination] = None if change.dest is None else change.dest / rel
    return expect


def _holds(path: Path, row: Entry) -> bool:
    """Whether ``path`` is a regular file of ``row``'s size (a rename keeps the file: size is proof)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (row.size is None or st.st_size == row.size)


def _known(journal: Journal, path: Path) -> bool:
    """Whether a row accounts for the file at ``path``: being filed there, or current there."""
    for row in reversed(journal.history(file=path)):
        if row.destination != path or row.state == State.FAILED:
            continue
        if row.state == State.PENDING:
            return True
        return row.action in LOCATING_ACTIONS and journal.successor(row.id or 0) is None
    return False


def _unfit(row: Entry) -> str | None:
    """Why a companion cannot follow its photo: gone or changed since it was filed."""
    assert row.destination is not None
    try:
        if sha256_file(row.destination) != row.sha256:
            return "changed since it was filed"
    except FileNotFoundError:
        return "gone"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return None


def _found(row: Entry, where: Path, places: Places, reason: str) -> Entry:
    """A photo at ``where``: a correction if it is in another album now (not review), else a relocation."""
    album = places.album_at(where)
    corrected = (
        row.group_id is None and album is not None and album != row.album and album != places.review_album
    )
    return row.follow_up(
        Action.CORRECTED if corrected else Action.RELOCATED,
        source=row.destination or row.source,
        destination=where,
        album=album,
        human_label=places.label_for(album, row) if corrected and album is not None else None,
        reason=reason,
    )


def _gone(row: Entry, action: Action, reason: str) -> Entry:
    """A photo no longer in the library; a missing row keeps the path it went missing from, as ever."""
    return row.follow_up(
        action,
        source=row.destination or row.source,
        destination=row.destination if action == Action.MISSING else None,
        confidence=None,
        probabilities=None,
        pixel_source=None,
        reason=reason,
    )


def files(root: Path) -> Iterator[Path]:
    """Every file below ``root`` (none if it is not a folder)."""
    if not root.is_dir():
        return
    for folder, _, names in os.walk(root):
        for name in names:
            yield Path(folder) / name


def _log(done: Recorded) -> None:
    for e in done.entries:
        log.info(
            f"library-{e.action}",
            id=e.id,
            ref_id=e.ref_id,
            source=os.fsdecode(e.source),
            destination=os.fsdecode(e.destination) if e.destination else None,
            album=e.album,
            human_label=e.human_label,
            reason=e.reason,
        )
    for e in done.followed:
        log.info(
            "companion-followed",
            id=e.id,
            state=e.state,
            source=os.fsdecode(e.source),
            destination=os.fsdecode(e.destination or ""),
        )


#: How often the follower looks for events and stop; as the daemon's other threads.
TICK = 0.1
#: Changes in the library are handled once none has come for this long (a folder
#: dragged elsewhere is a burst of events), or at the latest after LIBRARY_SETTLE_MAX_S.
LIBRARY_SETTLE_S = 1.0
LIBRARY_SETTLE_MAX_S = 5.0
#: A change to a photo that an undo or correction (another process) is moving is looked
#: at again this often, and dropped after LIBRARY_WAIT_MAX_S: that mover's intent then
#: stays pending until recovery, and the next reconcile pass catches anything missed.
LIBRARY_RECHECK_S = 1.0
LIBRARY_WAIT_MAX_S = 60.0
#: After a failure (the journal busy for longer than its timeout), the whole library is
#: compared with the journal again this much later.
LIBRARY_RETRY_S = 30.0


class LibraryFollower(threading.Thread):
    """The library thread: record what is moved or removed by hand in the library.

    It has its own journal connection (one per thread), and waits for a
    burst of changes to end before looking, so that the disk and the
    journal it reads then tell what happened, not the events.  ``watched``
    is set once it watches and has compared the whole library with the journal.
    """

    def __init__(self, settings: Settings, stopping: threading.Event, watched: threading.Event) -> None:
        super().__init__(name="library", daemon=True)
        self._settings = settings
        self._stopping = stopping
        self.watched = watched
        self._events: queue.SimpleQueue[tuple[Path, Path | None, bool]] = queue.SimpleQueue()
        self._reconcile = threading.Event()  # compare every row with the disk: start, lost events

    def _on_change(self, src: Path, dest: Path | None, folder: bool) -> None:
        if dest is None and src.name.endswith(moving.PARTIAL_SUFFIX):
            return  # the daemon's own temporary of a copy across filesystems, linked into place
        self._events.put((src, dest, folder))

    def run(self) -> None:
        s = self._settings
        places = Places.of(s)
        journal = Journal(s.database)
        watcher: LibraryWatcher | None = LibraryWatcher(s.library, self._on_change, self._reconcile.set)
        try:
            watcher.start()
        except OSError as exc:  # out of inotify watches: recorded at the next start instead
            log.warning("library-not-watched", library=str(s.library), error=exc.strerror)
            watcher = None
        self._reconcile.set()  # after the watch starts, so that nothing falls between
        changes = Changes()
        first = last = retry_at = next_look = 0.0
        waiting: dict[Change, float] = {}  # changes to look at again, and when to give up
        try:
            while not self._stopping.is_set():
                try:
                    src, dest, folder = self._events.get(timeout=TICK)
                except queue.Empty:
                    pass
                else:
                    if dest is None:
                        changes.gone(src, folder=folder)
                    else:
                        changes.moved(src, dest, folder=folder)
                    last = time.monotonic()
                    first = first or last
                    continue
                now = time.monotonic()
                if self._reconcile.is_set() and now >= retry_at:
                    self._reconcile.clear()
                    retry_at = self._step(journal, places, None, waiting)
                    self.watched.set()
                if changes and (now - last >= LIBRARY_SETTLE_S or now - first >= LIBRARY_SETTLE_MAX_S):
                    retry_at = self._step(journal, places, changes.take(), waiting)
                    first = 0.0
                if waiting and now >= next_look:
                    looked, waiting = waiting, {}
                    retry_at = self._step(journal, places, list(looked), waiting)
                    # Each keeps its first deadline: a mover that never finishes is given up on.
                    for change in list(waiting):
                        waiting[change] = looked.get(change, waiting[change])
                        if waiting[change] <= now:
                            log.warning("library-change-dropped", file=os.fsdecode(change.src))
                            del waiting[change]
                    next_look = now + LIBRARY_RECHECK_S
        finally:
            if watcher is not None:
                watcher.stop()
            journal.close()

    def _step(
        self, journal: Journal, places: Places, changes: list[Change] | None, waiting: dict[Change, float]
    ) -> float:
        """Record ``changes``, or compare the whole library with the journal (None).

        Returns the time before which no reconcile is retried: a failure must
        not end the thread, and the next reconcile pass makes up for it.
        """
        try:
            done = reconcile(journal, places) if changes is None else record(journal, places, changes)
        except Exception:
            log.exception("library-failed", retry_in_s=LIBRARY_RETRY_S)
            self._reconcile.set()
            return time.monotonic() + LIBRARY_RETRY_S
        for change in done.waiting:
            waiting.setdefault(change, time.monotonic() + LIBRARY_WAIT_MAX_S)
        return 0.0

"""One micro-batch, from paths to filed photos: read → classify → plan → journal → move.

This is the whole decision path, free of threads and watchers, so that the
daemon, ``cened classify --apply`` and the tests all run the same code.  The
order of side effects is the crash-safety argument:

1. every planned move is committed to the journal as a *pending* intent;
2. files are moved (link + unlink, never overwriting);
3. the intents are marked *done* (or *failed*, leaving the file in the inbox).

A crash between 1 and 3 leaves pending rows that :mod:`cened.recovery`
resolves from what is on disk.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import structlog

from cened import companions, executing, grouping, layout, moving
from cened.config import RAW_EXTENSIONS, Duplicates, NearDuplicates, Settings
from cened.faults import hang_point
from cened.hashing import sha256_bytes, sha256_or_none, sha256_rewound, sha256_stream
from cened.journal import FILING_ACTIONS, Action, Entry, Journal, State
from cened.ml import imaging, similar
from cened.ml.classifying import AlbumKind, Classifier, Scores, decide_as_configured
from cened.watching import signature

log = structlog.get_logger("cened.pipeline")

#: Errors that mean "the library cannot take files right now": retry later, keep the photo.
RETRYABLE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EEXIST}


#: Why a file is left where it is: its path is longer than the system takes (PATH_MAX, 4096 bytes).
PATH_TOO_LONG = "path-too-long: longer than the system takes (PATH_MAX); move it into a shallower folder"


class Verdict(StrEnum):
    """What reading a file found: what the batch can do with it."""

    DECODED = "decoded"  # pixels to classify
    REJECTED = "rejected"  # unusable content: quarantine
    SKIP = "skip"  # not ours to move: leave in place
    RETRY = "retry"  # not ready yet: try again later
    COMPANION = "companion"  # travels with a photo of its name: hashed, never decoded


class Fate(StrEnum):
    """What became of one path in a batch."""

    MOVED = Action.MOVED
    REVIEW = Action.REVIEW
    OTHER = Action.OTHER
    QUARANTINED = Action.QUARANTINED
    DUPLICATE = Action.DUPLICATE
    SKIPPED = Action.SKIPPED
    RETRY = "retry"  # left in the inbox, to be tried again
    FAILED = "failed"  # could not be moved and will not be retried

    @property
    def filed(self) -> bool:
        """Taken out of the inbox by the daemon's own decision."""
        return self in (Fate.MOVED, Fate.REVIEW, Fate.OTHER, Fate.QUARANTINED, Fate.DUPLICATE)

    @property
    def classified(self) -> bool:
        """The model decided where the photo belongs, and it is (or would be) there."""
        return self in (Fate.MOVED, Fate.REVIEW, Fate.OTHER)


@dataclass
class Prepared:
    """One file read from the inbox: its pixels, or why it has none (``reason``)."""

    path: Path
    verdict: Verdict
    sig: tuple[int, int] | None = None
    sha256: str | None = None
    size: int | None = None
    pixels: np.ndarray | None = None
    pixel_source: str | None = None  # imaging.FROM_PHOTO or FROM_PREVIEW
    reason: str | None = None
    detail: str | None = None  # what was wrong with a rejected file
    taken: datetime | None = None  # when the photo was taken, read only for a layout with dates
    signature: bytes | None = field(default=None, repr=False)  # what it looks like (cened.ml.similar)
    shot_at: float | None = None  # its EXIF capture time in seconds, for bursts (cened.layout.shot_at)

    @classmethod
    def rejected(cls, base: Prepared, rejected: imaging.Rejected) -> Prepared:
        return replace(base, verdict=Verdict.REJECTED, reason=rejected.reason, detail=rejected.detail)


@dataclass
class FileOutcome:
    """What happened to one path, for the caller's bookkeeping (tracker, stats)."""

    path: Path
    fate: Fate
    entry: Entry | None = None
    keep: tuple[int, int] | None = None  # left in the inbox on purpose: ignore until changed
    reason: str | None = None
    repeat: bool = False  # failed as at its last try, whose row (entry.id) stands for this one too
    twin: bool = False  # waits for a photo of the same content in its batch to be filed first
    waiting: bool = False  # left for now on purpose, for another file to arrive: no failure


class Pending(StrEnum):
    """Why a file was handed back unread: it is, or may still be, being written."""

    CHANGED = "changed while being read"
    UNFINISHED = "looks unfinished"  # cut short or no image yet, and changed only moments ago


def prepare(
    path: Path,
    settings: Settings,
    input_size: tuple[int, int],
    budget: imaging.MemoryBudget | None = None,
) -> Prepared:
    """Read, hash and decode one file; never raises, whatever the file holds.

    The file is read once into memory (bounded by ``max_file_mb``) and both
    hashed and decoded from that copy, so the hash describes exactly the bytes
    that were classified.  A size or mtime change during the read means the
    file is still being written: it is handed back for a later try.

    The file's bytes and what decoding it will hold (from its header) are
    held in ``budget``, shared by every thread that decodes, before it is read;
    without one the file gets a budget of its own of ``decode_memory_mb``.
    """
    if companions.kind(path, settings) != companions.Kind.PHOTO:
        return prepare_companion(path)
    if budget is None:
        budget = imaging.MemoryBudget(settings.decode_memory_bytes)
    try:
        return _prepare(path, settings, input_size, budget)
    except Exception as exc:  # a decoder's bug is this file's outcome, never a retry loop
        log.warning("prepare-failed", file=os.fsdecode(path), exc_info=True)
        return _failed(path, exc)


def look(path: Path, settings: Settings, input_size: tuple[int, int]) -> tuple[bytes | None, float | None]:
    """What a photo already in the library looks like: its signature and capture time, as if filed.

    None for a companion, or a file that cannot be read or decoded.
    """
    prepared = prepare(path, settings, input_size)
    return prepared.signature, prepared.shot_at


def _failed(path: Path, exc: Exception) -> Prepared:
    """A file whose reading raised something unforeseen (a plugin closing our file: FTEX): quarantined.

    Retried, it would fail alike forever, with a traceback each time.
    """
    st = _regular_file(path)
    if isinstance(st, Prepared):
        return st
    base = Prepared(path, Verdict.DECODED, sig=signature(st), size=st.st_size, sha256=sha256_or_none(path))
    detail = f"{type(exc).__name__}: {exc}"
    return Prepared.rejected(base, imaging.Rejected(imaging.Reason.DECODER_FAILED, detail))


def _regular_file(path: Path) -> os.stat_result | Prepared:
    """The file's stat, or why it is not ours to read: gone, a link, not a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Prepared(path, Verdict.SKIP, reason="vanished")
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # nothing can read or move it by its path: left, noted once
            return Prepared(path, Verdict.SKIP, reason=PATH_TOO_LONG)
        return Prepared(path, Verdict.RETRY, reason=f"stat failed: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return Prepared(path, Verdict.SKIP, sig=signature(st), reason="symlink")
    if not stat.S_ISREG(st.st_mode):
        return Prepared(path, Verdict.SKIP, sig=signature(st), reason="not-a-regular-file")
    return st


def _prepare(
    path: Path, settings: Settings, input_size: tuple[int, int], budget: imaging.MemoryBudget
) -> Prepared:
    st = _regular_file(path)
    if isinstance(st, Prepared):
        return st
    sig = signature(st)
    base = Prepared(path, Verdict.DECODED, sig=sig, size=st.st_size)
    if st.st_size > settings.max_file_bytes:
        base.sha256 = sha256_or_none(path)
        return Prepared.rejected(
            base, imaging.Rejected(imaging.Reason.TOO_LARGE, f"{st.st_size} bytes exceeds max_file_mb")
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except FileNotFoundError:
        return Prepared(path, Verdict.SKIP, reason="vanished")
    except PermissionError as exc:
        if not getattr(os, "O_NOATIME", 0):
            return Prepared.rejected(
                base, imaging.Rejected("unreadable", f"permission denied: {exc.strerror}")
            )
        try:  # O_NOATIME needs ownership; plain read permission may still hold
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except PermissionError:
            return Prepared.rejected(
                base, imaging.Rejected("unreadable", f"permission denied: {exc.strerror}")
            )
    except OSError as exc:
        return Prepared.rejected(base, imaging.Rejected("unreadable", f"{exc.strerror}"))
    with os.fdopen(fd, "rb") as fh:
        try:
            room = max(budget.capacity - st.st_size, 0)
            cost = imaging.decode_cost(fh, input_size, settings.thumbnail_min_side, limit=room)
            fh.seek(0)
        except OSError as exc:
            return Prepared.rejected(base, imaging.Rejected("unreadable", f"read failed: {exc.strerror}"))
        try:
            with budget.hold(st.st_size + (cost or 0)):
                return _read_and_decode(fh, base, settings, input_size, cost or 0)
        except imaging.Rejected as exc:  # too large for the whole budget: never read
            base.sha256 = sha256_rewound(fh)
            return Prepared.rejected(base, exc)


def _read_and_decode(
    fh: BinaryIO, base: Prepared, settings: Settings, input_size: tuple[int, int], cost: int
) -> Prepared:
    assert base.size is not None
    try:
        # One byte more than stat said, to see growth; not max_file_bytes + 1,
        # which makes Python allocate (and page-fault) that whole buffer per file.
        data = fh.read(base.size + 1)
        after = os.fstat(fh.fileno())
    except OSError as exc:
        return Prepared.rejected(base, imaging.Rejected("unreadable", f"read failed: {exc.strerror}"))
    if signature(after) != base.sig or len(data) != base.size:
        return Prepared(base.path, Verdict.RETRY, reason=Pending.CHANGED)
    base.sha256 = sha256_bytes(data)
    hang_point("decode", base.path.name)
    try:
        base.pixels, base.pixel_source = imaging.decode_with_source(
            data, input_size, settings.thumbnail_min_side, max_bytes=cost
        )
    except imaging.Rejected as exc:
        return Prepared.rejected(base, exc)
    base.signature, base.shot_at = similar.signature(base.pixels), layout.shot_at(data)
    if layout.uses_date(settings.layout):
        base.taken = layout.taken(data, after.st_mtime)
    return base


def unless_unfinished(prep: Prepared, grace_s: float, now: float) -> Prepared:
    """``prep``, or a retry if it was refused for what a file still being written looks like.

    A writer that pauses between chunks leaves a file that reads as cut short
    (or empty, or not yet an image); while its mtime is recent it is left to
    be finished rather than quarantined.  Only the daemon waits like this:
    ``cened classify`` is given files that are already there.
    """
    if prep.verdict != Verdict.REJECTED or prep.reason not in imaging.MAYBE_UNFINISHED or prep.sig is None:
        return prep
    if abs(now - prep.sig[1] / 1e9) >= grace_s:
        return prep
    return Prepared(
        prep.path, Verdict.RETRY, sig=prep.sig, size=prep.size, reason=Pending.UNFINISHED, detail=prep.detail
    )


def prepare_companion(path: Path) -> Prepared:
    """Read and hash a file that travels with a photo (a sidecar, a video, a RAW beside its JPEG).

    Never decoded, and never quarantined: it is not a photo.  Read in chunks,
    since a video may be large; a change during the read hands it back.
    """
    st = _regular_file(path)
    if isinstance(st, Prepared):
        return st
    sig = signature(st)
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as fh:
            digest = sha256_stream(fh)
            after = os.fstat(fh.fileno())
    except FileNotFoundError:
        return Prepared(path, Verdict.SKIP, reason="vanished")
    except OSError as exc:
        return Prepared(path, Verdict.SKIP, sig=sig, size=st.st_size, reason=f"unreadable: {exc.strerror}")
    if signature(after) != sig:
        return Prepared(path, Verdict.RETRY, reason="changed while being read")
    return Prepared(path, Verdict.COMPANION, sig=sig, sha256=digest, size=st.st_size)


@dataclass
class Plan:
    """What one scored batch is to do: a value, worked out before anything is written.

    ``intents`` are the moves (each with its pending row), ``notes`` the rows
    without a move, ``outcomes`` what becomes of the files that neither moves.
    """

    settings: Settings
    batch: Sequence[Prepared]
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    intents: list[tuple[Prepared, Entry]] = field(default_factory=list)
    notes: list[Entry] = field(default_factory=list)
    outcomes: list[FileOutcome] = field(default_factory=list)
    reserved: set[Path] = field(default_factory=set)  # names taken by earlier moves of this plan
    # The photos of this plan with a signature, filed new (None) or beside a photo of the library.
    signed: list[tuple[Prepared, Entry, grouping.Match | None]] = field(default_factory=list)
    riding: dict[Path, Prepared] = field(init=False)  # the batch's companions, by path
    claimed: set[Path] = field(init=False)  # files a move of this plan takes

    def __post_init__(self) -> None:
        self.riding = {p.path: p for p in self.batch if p.verdict == Verdict.COMPANION}
        self.claimed = {p.path for p in self.batch if p.verdict != Verdict.COMPANION}  # one plan each

    def reserve(self, folder: Path, name: str) -> Path:
        """A free name in ``folder``, not one an earlier move of this plan will take."""
        dst = moving.free_name(folder, name, self.reserved)
        self.reserved.add(dst)
        return dst

    def would_be(self) -> list[FileOutcome]:
        """What each move would do, for a dry run."""
        return [
            FileOutcome(prep.path, Fate(entry.action), entry=entry, reason=entry.reason)
            for prep, entry in self.intents
        ]


@dataclass
class Imagined:
    """What a dry run's earlier batches would have done: names taken, contents filed, files moved."""

    names: set[Path] = field(default_factory=set)
    contents: dict[str | None, Path] = field(default_factory=dict)
    moved: set[Path] = field(default_factory=set)


@dataclass
class Processor:
    """Classifies and files prepared batches.

    With ``simulate`` (``cened classify`` without ``--apply``) every decision
    and destination is worked out exactly as for real, and nothing is written
    or moved; the journal, when there is one, is only read.  What earlier
    batches would have done is kept (:class:`Imagined`), so a later batch
    sees it as it would after a real run.
    """

    classifier: Classifier
    journal: Journal | None
    settings: Callable[[], Settings]  # read per batch, so a reload applies to the next batch
    counters: dict[str, int] = field(default_factory=dict)
    simulate: bool = False
    listings: companions.Listings = field(default_factory=companions.Listings)
    imagined: Imagined = field(default_factory=lambda: Imagined())
    index: grouping.LibraryIndex = field(default_factory=grouping.LibraryIndex)

    def __post_init__(self) -> None:
        if self.journal is None and not self.simulate:
            raise ValueError("only a simulating Processor may run without a journal")

    def process(self, batch: Sequence[Prepared]) -> list[FileOutcome]:
        return self.file(batch, self.score(batch))

    def score(self, batch: Sequence[Prepared]) -> Scores | None:
        """What the model says of the decoded photos of ``batch``, in order.

        Kept apart from :meth:`file` so the daemon can run the model on one
        batch while another thread journals and moves the previous one.
        """
        pixels = [p.pixels for p in batch if p.pixels is not None]
        return self.classifier.score(pixels) if pixels else None

    def file(self, batch: Sequence[Prepared], scores: Scores | None) -> list[FileOutcome]:
        """Decide, journal and move one scored batch (``scores`` from :meth:`score`).

        The :meth:`plan` is carried out (:meth:`commit`), or with ``simulate`` only reported.
        """
        if not self.simulate:
            return self.commit(self.plan(batch, scores))
        # A file an earlier batch's photo would have taken along is gone by now, for real.
        gone = [p for p in batch if p.path in self.imagined.moved]
        plan = self.plan([p for p in batch if p.path not in self.imagined.moved], scores)
        self.imagined.moved.update(prep.path for prep, _ in plan.intents)
        taken = [FileOutcome(p.path, Fate.SKIPPED, reason="moved with its photo") for p in gone]
        return taken + plan.outcomes + plan.would_be()

    def plan(self, batch: Sequence[Prepared], scores: Scores | None) -> Plan:
        """Where each file of a scored batch goes: reads the journal and the disk, writes nothing.

        A photo's companions (cened.companions) found beside it, in the batch or
        on disk, are planned with it: one intent, committed before anything moves.
        """
        # A dry run's names stay taken from one batch to the next, as files in the library would.
        plan = Plan(self.settings(), batch, reserved=self.imagined.names if self.simulate else set())
        self._plan_photos(plan, [p for p in batch if p.verdict == Verdict.DECODED], scores)
        self._plan_unread(plan)
        self._plan_companions(plan)
        return plan

    def commit(self, plan: Plan) -> list[FileOutcome]:
        """Journal, move and settle a plan's intents (cened.executing), and count and log every outcome."""
        outcomes = plan.outcomes + self._commit(plan.intents, plan.notes)
        for outcome in outcomes:
            self.counters[outcome.fate] = self.counters.get(outcome.fate, 0) + 1
            _log_outcome(outcome)
        return outcomes

    def _plan_photos(self, plan: Plan, decoded: list[Prepared], scores: Scores | None) -> None:
        """The decoded photos: into an album, review or other, or apart as duplicates."""
        settings = plan.settings
        # Content → the first photo that has it: of this batch, or of the whole dry run.
        firsts: dict[str | None, Path] = self.imagined.contents if self.simulate else {}
        planned = list(zip(decoded, self._entries(decoded, scores, settings), strict=True))
        # In the order they were taken, so each frame of a burst meets the one before it first.
        planned.sort(key=lambda pair: (pair[0].shot_at is None, pair[0].shot_at or 0.0))
        for prep, entry in planned:
            if self._restored_by_undo(prep):
                plan.outcomes.append(
                    FileOutcome(prep.path, Fate.SKIPPED, keep=prep.sig, reason="restored-by-undo")
                )
                continue
            entry.batch_id = plan.batch_id
            follow = self._filed_lead(prep.path, settings) if _is_raw(prep.path) else None
            if follow is not None:  # a RAW whose JPEG was filed before: classified once, from the JPEG
                plan.intents.append((prep, self._follower(prep, follow, plan.batch_id, plan.reserve)))
                continue
            first = firsts.setdefault(prep.sha256, prep.path)
            twin_of = first if first != prep.path and settings.duplicates != Duplicates.KEEP else None
            if twin_of is not None and not self.simulate:
                # Compared with the library once the first is filed, in a later batch.
                reason = f"waits for {twin_of.name}, of the same content, to be filed first"
                plan.outcomes.append(FileOutcome(prep.path, Fate.RETRY, reason=reason, twin=True))
                continue
            if not self._is_duplicate(prep, entry, twin_of, settings):
                if not self._near(plan, prep, entry, settings):
                    album = entry.album or settings.review_album
                    self._place(plan, prep, entry, settings.album_folder(album, _taken(prep)))
                    if similar.usable(prep.signature):
                        plan.signed.append((prep, entry, None))
            elif settings.duplicates == Duplicates.SKIP:
                note = replace(entry, action=Action.SKIPPED, state=State.DONE, album=None)
                self._note(plan, note)
                plan.outcomes.append(
                    FileOutcome(prep.path, Fate.SKIPPED, entry=note, keep=prep.sig, reason=note.reason)
                )
            else:
                entry.action, entry.album = Action.DUPLICATE, None
                self._place(plan, prep, entry, settings.duplicates_dir)

    def _near(self, plan: Plan, prep: Prepared, entry: Entry, settings: Settings) -> bool:
        """Plan ``prep`` as a near-duplicate or burst frame, if it is one (``near_duplicates``); False if not.

        A photo of this batch comes first: one near a photo filed new in it waits
        for that one to be filed (it is then in the library), as a copy does; one
        near a photo that goes beside a photo of the library goes there too.
        """
        if settings.near_duplicates == NearDuplicates.KEEP or prep.signature is None:
            return False
        if not similar.usable(prep.signature):
            return False
        shots = np.array([np.nan if p.shot_at is None else p.shot_at for p, _, _ in plan.signed])
        batch = similar.Signatures.of([p.signature for p, _, _ in plan.signed if p.signature is not None])
        # Exact copies are the duplicates setting's, also when it files them like any photo.
        near = [
            n
            for n in grouping.kinds(prep.signature, prep.shot_at, batch, shots)
            if plan.signed[n[0]][0].sha256 != prep.sha256
        ]
        if near:
            index, kind = near[0]
            other, planned, match = plan.signed[index]
            if match is not None:
                self._beside(plan, prep, entry, grouping.Match(match.row, kind, match.lead_id), settings)
            elif self.simulate:  # a dry run files nothing, so beside where that one would go
                assert planned.destination is not None
                entry.album, entry.action = planned.album, planned.action
                entry.reason = f"{kind} of {os.fsdecode(other.path)}, filed with it"
                self._place(plan, prep, entry, planned.destination.parent)
            else:
                reason = f"waits for {other.path.name}, a {kind} of it, to be filed first"
                plan.outcomes.append(FileOutcome(prep.path, Fate.RETRY, reason=reason, twin=True))
                plan.signed.append((prep, entry, None))  # the next frame of a burst waits too
            return True
        if self.journal is None:
            return False
        apart = (settings.duplicates_dir, settings.quarantine_dir)
        found = self.index.match(
            self.journal, prep.signature, prep.shot_at, settings.library, apart, not_sha256=prep.sha256
        )
        if found is None:
            return False
        self._beside(plan, prep, entry, found, settings)
        return True

    def _beside(
        self, plan: Plan, prep: Prepared, entry: Entry, match: grouping.Match, settings: Settings
    ) -> None:
        """Plan ``prep`` with the photo of ``match``: into its folder, as a member of its group, or apart."""
        row = match.row
        assert row.destination is not None and row.id is not None
        where = f"#{row.id}: {_relative(row.destination, settings.library)}"
        if match.kind == grouping.Kind.SAME and settings.near_duplicates == NearDuplicates.SEPARATE:
            entry.action, entry.album, entry.ref_id = Action.DUPLICATE, None, row.id
            entry.reason = f"near-duplicate of {where}"
            self._place(plan, prep, entry, settings.duplicates_dir)
        else:
            entry.similar_id, entry.album = match.lead_id, row.album
            entry.action = row.action if row.action in (Action.REVIEW, Action.OTHER) else Action.MOVED
            entry.reason = f"{match.kind} of {where}, filed with it"
            self._place(plan, prep, entry, row.destination.parent)
        plan.signed.append((prep, entry, match))

    def _plan_unread(self, plan: Plan) -> None:
        """The files that gave no pixels: retried later, skipped (noted once) or quarantined."""
        for prep in plan.batch:
            if prep.verdict == Verdict.RETRY:
                # Still being written is no failure: not a warning at every look.
                waiting = prep.reason in set(Pending)
                plan.outcomes.append(FileOutcome(prep.path, Fate.RETRY, reason=prep.reason, waiting=waiting))
            elif prep.verdict == Verdict.SKIP:
                if prep.reason == "vanished" and self._moved_with_photo(prep.path):
                    plan.outcomes.append(FileOutcome(prep.path, Fate.SKIPPED, reason="moved with its photo"))
                    continue
                entry = Entry(
                    action=Action.SKIPPED,
                    source=prep.path,
                    size=prep.size,
                    reason=prep.reason,
                    batch_id=plan.batch_id,
                )
                self._note(plan, entry)
                keep = prep.sig if prep.reason != "vanished" else None
                plan.outcomes.append(
                    FileOutcome(prep.path, Fate.SKIPPED, entry=entry, keep=keep, reason=prep.reason)
                )
            elif prep.verdict == Verdict.REJECTED:
                entry = Entry(
                    action=Action.QUARANTINED,
                    source=prep.path,
                    sha256=prep.sha256,
                    size=prep.size,
                    reason=f"{prep.reason}: {prep.detail}",
                    batch_id=plan.batch_id,
                    state=State.PENDING,
                )
                self._place(plan, prep, entry, plan.settings.quarantine_dir)

    def _plan_companions(self, plan: Plan) -> None:
        """The companions of the batch that no photo of it took along."""
        for prep in plan.riding.values():
            if prep.path in plan.claimed:
                continue
            planned = self._alone(prep, plan.settings, plan.batch_id, plan.reserve)
            if isinstance(planned, Entry):
                plan.intents.append((prep, planned))
            else:
                plan.outcomes.append(planned)
                if planned.entry is not None:
                    self._note(plan, planned.entry)

    def _place(self, plan: Plan, prep: Prepared, entry: Entry, folder: Path) -> None:
        """Plan ``prep``'s move into ``folder``, with its companions under the same stem."""
        members = self._companions(prep, plan.settings, plan.riding, plan.claimed)
        stem = prep.path.stem
        tails = [p.path.name[len(stem) :] for p in (prep, *members)]
        names = (
            moving.free_names(folder, stem, tails, plan.reserved)
            if members
            else [plan.reserve(folder, prep.path.name)]
        )
        plan.reserved.update(names)
        entry.destination = names[0]
        plan.intents.append((prep, entry))
        for member, dst in zip(members, names[1:], strict=True):
            plan.intents.append((member, _companion_entry(member, entry, dst, plan.batch_id, lead=entry)))

    def _note(self, plan: Plan, entry: Entry) -> None:
        """A row without a move, unless it would repeat the file's last one."""
        if self._is_new_note(entry):
            plan.notes.append(entry)

    def _companions(
        self, photo: Prepared, settings: Settings, riding: dict[Path, Prepared], claimed: set[Path]
    ) -> list[Prepared]:
        """The files beside ``photo`` that travel with it, read now if not in the batch, and claimed."""
        members = []
        for path in companions.find(photo.path, settings, self.listings):
            if path in claimed:
                continue
            member = riding.get(path)
            if member is None:
                member = prepare_companion(path)
                # One still being written (or just arrived) is left: it follows once it settles.
                if member.verdict != Verdict.COMPANION or not _settled(member, settings):
                    continue
            claimed.add(path)
            members.append(member)
        return members

    def _alone(
        self, prep: Prepared, settings: Settings, batch_id: str, reserve: Callable[[Path, str], Path]
    ) -> Entry | FileOutcome:
        """A companion without its photo in the batch: it follows the photo filed, or waits, or stays."""
        path = prep.path
        if not os.path.lexists(path):
            if self._moved_with_photo(path):
                return FileOutcome(path, Fate.SKIPPED, reason="moved with its photo")
            note = Entry(
                action=Action.SKIPPED, source=path, size=prep.size, reason="vanished", batch_id=batch_id
            )
            return FileOutcome(path, Fate.SKIPPED, entry=note, reason=note.reason)
        if self._restored_by_undo(prep):
            return FileOutcome(path, Fate.SKIPPED, keep=prep.sig, reason="restored-by-undo")
        if companions.leads(path, settings):
            # The photo takes it along when it is filed, or it follows the photo at a later try.
            return FileOutcome(path, Fate.RETRY, reason="waits for its photo", waiting=True)
        follow = self._filed_lead(path, settings)
        if follow is not None:
            return self._follower(prep, follow, batch_id, reserve)
        if _is_raw(path):  # its JPEG went away unfiled: the RAW is a photo of its own after all
            return FileOutcome(path, Fate.RETRY, reason="read again as a photo: no JPEG beside it now")
        try:
            age = time.time() - os.lstat(path).st_ctime
        except OSError:
            age = settings.companion_wait_s
        if age < settings.companion_wait_s:  # its photo may be on its way
            return FileOutcome(path, Fate.RETRY, reason="waits for a photo of its name", waiting=True)
        what = companions.kind(path, settings)
        if what == companions.Kind.VIDEO and settings.videos_album:
            taken = datetime.fromtimestamp(prep.sig[1] / 1e9) if prep.sig else None
            folder = settings.album_folder(settings.videos_album, taken)
            return Entry(
                action=Action.MOVED,
                source=path,
                destination=reserve(folder, path.name),
                sha256=prep.sha256,
                size=prep.size,
                album=settings.videos_album,
                reason="a video without a photo of its name, unclassified",
                batch_id=batch_id,
                state=State.PENDING,
            )
        note = Entry(
            action=Action.SKIPPED,
            source=path,
            sha256=prep.sha256,
            size=prep.size,
            reason=f"a {what} without a photo of its name",
            batch_id=batch_id,
        )
        return FileOutcome(path, Fate.SKIPPED, entry=note, keep=prep.sig, reason=note.reason)

    def _follower(
        self, prep: Prepared, follow: Entry, batch_id: str, reserve: Callable[[Path, str], Path]
    ) -> Entry:
        """The move of a file that arrived after its photo was filed (``follow``), to beside it."""
        assert follow.destination is not None
        dst = reserve(follow.destination.parent, companions.renamed(prep.path, follow.destination.name))
        entry = _companion_entry(prep, follow, dst, batch_id)
        entry.group_id = follow.group_id or follow.id
        if entry.action not in FILING_ACTIONS:  # beside a photo a person corrected: filed all the same
            entry.action = Action.MOVED
        return entry

    def _filed_lead(self, path: Path, settings: Settings) -> Entry | None:
        """The row of the photo (or of a file with it) that ``path`` belongs to, filed and still there."""
        if self.journal is None:
            return None
        row = self.journal.filed_from(companions.lead_names(path, settings))
        row = self.journal.current(row) if row is not None else None
        if row is None or row.destination is None or not os.path.lexists(row.destination):
            return None
        return row

    def _moved_with_photo(self, path: Path) -> bool:
        """Whether ``path``, gone from the inbox, was moved there by its photo's group."""
        if self.journal is None:
            return False
        last = self.journal.history(file=path, limit=1)
        return (
            bool(last)
            and last[0].source == path
            and last[0].group_id is not None
            and last[0].state == State.DONE
        )

    def _entries(self, items: Sequence[Prepared], scores: Scores | None, settings: Settings) -> list[Entry]:
        if not items or scores is None:
            return []
        decisions = decide_as_configured(scores, settings)
        entries = []
        for prep, decision in zip(items, decisions, strict=True):
            entries.append(
                Entry(
                    action=_ACTIONS[decision.kind],
                    source=prep.path,
                    sha256=prep.sha256,
                    size=prep.size,
                    label=decision.label,
                    album=decision.album,
                    confidence=decision.confidence,
                    probabilities=decision.probabilities,
                    novelty=decision.novelty,
                    model_version=scores.version,
                    pixel_source=prep.pixel_source,
                    signature=prep.signature,
                    shot_at=prep.shot_at,
                    state=State.PENDING,
                    reason=decision.reason,
                )
            )
        return entries

    def _is_duplicate(self, prep: Prepared, entry: Entry, twin_of: Path | None, settings: Settings) -> bool:
        """Whether ``prep``'s content is in the library already; if so, ``entry`` says where.

        In a dry run, a photo of the same content earlier in the batch counts too.
        """
        if twin_of is not None:
            entry.reason = f"same content as {os.fsdecode(twin_of)}"
            return True
        held = self._held(prep, settings)
        if held is None:
            return False
        assert held.destination is not None
        entry.ref_id = held.id
        entry.reason = f"duplicate of #{held.id}: {_relative(held.destination, settings.library)}"
        return True

    def _held(self, prep: Prepared, settings: Settings) -> Entry | None:
        """The row of a photo of ``prep``'s content that is in the library now, if any and if it matters."""
        if self.journal is None or settings.duplicates == Duplicates.KEEP or prep.sha256 is None:
            return None
        for row in self.journal.holding(prep.sha256):
            assert row.destination is not None
            if not row.destination.is_relative_to(settings.library) or row.destination == prep.path:
                continue
            try:
                st = os.lstat(row.destination)
            except OSError:
                continue
            # The size is the cheap proof the file is still that photo; hashing it again is not.
            if stat.S_ISREG(st.st_mode) and st.st_size == prep.size:
                return row
        return None

    def _restored_by_undo(self, prep: Prepared) -> bool:
        """A photo put back by ``cened undo`` stays put; re-filing it would undo the undo."""
        if self.journal is None:
            return False
        last = self.journal.last_at(prep.path)
        return last is not None and last.action == Action.UNDONE and last.sha256 == prep.sha256

    def _is_new_note(self, entry: Entry) -> bool:
        """Skips are noted once per file and reason, not at every rescan."""
        if self.journal is None:
            return True
        recent = self.journal.history(file=entry.source, limit=1)
        return not (recent and recent[0].action == Action.SKIPPED and recent[0].reason == entry.reason)

    def _commit(self, intents: list[tuple[Prepared, Entry]], notes: list[Entry]) -> list[FileOutcome]:
        """Journal, move and settle the batch's intents (cened.executing), and say what became of each."""
        assert self.journal is not None
        failures: dict[int, FileOutcome] = {}  # by id() of the entry

        def on_failure(entry: Entry, exc: OSError) -> str | None:
            prep = next(p for p, e in intents if e is entry)
            outcome = failures[id(entry)] = _not_moved(prep, entry, exc)
            return None if self._repeats(outcome) else outcome.reason

        executed = executing.execute(
            self.journal,
            [e for _, e in intents],
            roots=self.settings().roots,
            notes=notes,
            orphan=executing.Orphan.DROP,
            on_failure=on_failure,
        )
        outcomes: list[FileOutcome] = []
        for (prep, entry), done in zip(intents, executed, strict=True):
            if done.orphaned:  # it goes with its photo's next try, found beside it again
                outcomes.append(
                    FileOutcome(prep.path, Fate.RETRY, reason="waits for its photo", waiting=True)
                )
            elif done.error is not None:
                outcomes.append(failures[id(entry)])
            else:
                outcomes.append(FileOutcome(prep.path, Fate(entry.action), entry=entry, reason=entry.reason))
        return outcomes

    def _repeats(self, outcome: FileOutcome) -> bool:
        """Whether a failure repeats its photo's last one: its intent is then dropped rather than kept.

        A photo retried on a full disk or a read-only inbox would otherwise
        leave a failed row (and a warning) at every try: the row of the first
        failure stands for them all until something else happens to the photo.
        Each intent is still journaled before its try, so a crash mid-move is
        recovered as always.
        """
        assert self.journal is not None
        entry = outcome.entry
        assert entry is not None and entry.id is not None
        entry.state, entry.reason = State.FAILED, outcome.reason
        last = self.journal.last_from(entry.source, before=entry.id)
        if (
            last is None
            or last.state != State.FAILED
            or last.reason != outcome.reason
            or last.sha256 != entry.sha256
        ):
            return False
        entry.id = last.id
        outcome.repeat = True
        return True

    def run(self, files: Sequence[Path], pool: Executor) -> Iterator[FileOutcome]:
        """File ``files`` now, one batch at a time: the one-shot counterpart of the daemon's threads.

        A photo that waited for a twin of its batch is taken again after the rest.
        """
        input_size = self.classifier.meta.input_size
        while files:
            again: list[Path] = []
            for batch in prepared_batches(files, self.settings(), input_size, pool):
                for outcome in self.process(batch):
                    if outcome.twin:
                        again.append(outcome.path)
                    else:
                        yield outcome
            files = again


#: The row each kind of decision writes.
_ACTIONS = {AlbumKind.FILE: Action.MOVED, AlbumKind.REVIEW: Action.REVIEW, AlbumKind.OTHER: Action.OTHER}


def prepared_batches(
    files: Sequence[Path],
    settings: Settings,
    input_size: tuple[int, int],
    pool: Executor,
    budget: imaging.MemoryBudget | None = None,
) -> Iterator[list[Prepared]]:
    """``batch_size`` files at a time, read and decoded by ``pool``, one batch ahead.

    As in the daemon, the next batch decodes while the model scores this one,
    and decoded pixels exist for two batches at most, however many files there are.
    The decodes in flight share ``budget`` (by default one of ``decode_memory_mb``).
    """
    size = settings.batch_size
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    shared = budget or imaging.MemoryBudget(settings.decode_memory_bytes)

    def submit(chunk: Sequence[Path]) -> list[Future[Prepared]]:
        return [pool.submit(prepare, f, settings, input_size, shared) for f in chunk]

    ahead = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current, ahead = ahead, submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield [f.result() for f in current]


def _companion_entry(
    prep: Prepared, photo: Entry, destination: Path, batch_id: str, lead: Entry | None = None
) -> Entry:
    """The row of a file moving with ``photo``: the photo's decision, its own content and place."""
    return photo.follow_up(
        photo.action,
        ref_id=None,
        source=prep.path,
        destination=destination,
        sha256=prep.sha256,
        size=prep.size,
        probabilities=None,
        pixel_source=None,
        signature=None,  # a sidecar or a video is not the photo it goes with
        shot_at=None,
        similar_id=None,
        reason=f"with {photo.source.name}",
        batch_id=batch_id,
        state=State.PENDING,
        lead=lead,
    )


def _is_raw(path: Path) -> bool:
    return path.suffix.lower() in RAW_EXTENSIONS


def _settled(prep: Prepared, settings: Settings) -> bool:
    """Unchanged for ``stable_seconds``: not a file still being copied in."""
    return prep.sig is not None and time.time() - prep.sig[1] / 1e9 >= settings.stable_seconds


def _taken(prep: Prepared) -> datetime | None:
    """When ``prep`` was taken; its mtime if it was read before the layout (reloaded) needed a date."""
    if prep.taken is None and prep.sig is not None:
        return datetime.fromtimestamp(prep.sig[1] / 1e9)
    return prep.taken


def _relative(path: Path, root: Path) -> str:
    return os.fsdecode(path.relative_to(root)) if path.is_relative_to(root) else os.fsdecode(path)


def _not_moved(prep: Prepared, entry: Entry, exc: OSError) -> FileOutcome:
    """What a failed move leaves: the photo in the inbox, to retry or not, and why."""
    if isinstance(exc, moving.SourceKept):
        # A read-only inbox: the link or copy was taken back, so the photo is
        # still in one place only, and a retry can file it.
        if exc.undone:
            reason = f"move failed: cannot remove it from the inbox ({exc.strerror}); kept there"
            fate = Fate.RETRY if exc.errno in RETRYABLE else Fate.FAILED
            return FileOutcome(prep.path, fate, entry=entry, reason=reason)
        # In both places: a retry would only make a third copy.
        reason = f"move failed: cannot remove it from the inbox ({exc.strerror}); both kept"
        return FileOutcome(prep.path, Fate.FAILED, entry=entry, keep=prep.sig, reason=reason)
    if isinstance(exc, moving.LinkedFolder):  # waits, with backoff, until it is a folder again
        return FileOutcome(prep.path, Fate.RETRY, entry=entry, reason=f"move failed: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        if os.path.lexists(prep.path):
            return FileOutcome(prep.path, Fate.RETRY, entry=entry, reason="destination folder vanished")
        return FileOutcome(prep.path, Fate.FAILED, entry=entry, reason="vanished")
    fate = Fate.RETRY if exc.errno in RETRYABLE else Fate.FAILED
    return FileOutcome(prep.path, fate, entry=entry, reason=f"move failed: {exc.strerror or exc}")


def _log_outcome(outcome: FileOutcome) -> None:
    entry = outcome.entry
    fields: dict[str, object] = {"file": os.fsdecode(outcome.path), "action": outcome.fate}
    if outcome.reason:
        fields["reason"] = outcome.reason
    if entry is not None:
        fields.update(
            id=entry.id,
            batch=entry.batch_id,
            destination=os.fsdecode(entry.destination) if entry.destination else None,
            label=entry.label,
            album=entry.album,
            confidence=entry.confidence,
            model=entry.model_version,
            sha256=entry.sha256,
            pixels=entry.pixel_source if entry.pixel_source != imaging.FROM_PHOTO else None,
            novelty=entry.novelty,
            ref_id=entry.ref_id,
            group=entry.group_id,
        )
    fields = {k: v for k, v in fields.items() if v is not None}
    if outcome.fate.classified:
        log.info("filed", **fields)
    elif outcome.fate == Fate.QUARANTINED:
        log.warning("quarantined", **fields)
    elif outcome.fate == Fate.DUPLICATE:
        log.info("duplicate", **fields)
    elif outcome.twin or outcome.waiting:
        log.debug("not-moved", **fields)  # not a failure: it is taken again in a moment
    elif outcome.repeat:
        log.debug("not-moved", repeat=True, **fields)  # warned at the first try of this episode
    elif outcome.fate in (Fate.RETRY, Fate.FAILED):
        log.warning("not-moved", **fields)
    else:
        log.info("skipped", **fields)

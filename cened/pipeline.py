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
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from cened import moving
from cened.config import Settings
from cened.faults import crash_point
from cened.journal import Entry, Journal
from cened.ml import imaging
from cened.ml.classifying import Classifier, decide
from cened.ml.modelpack import sha256_or_none
from cened.watching import signature

log = structlog.get_logger("cened.pipeline")

#: Errors that mean "the library cannot take files right now": retry later, keep the photo.
RETRYABLE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EEXIST}


@dataclass
class Prepared:
    """One file read from the inbox, or the reason it cannot be classified."""

    path: Path
    sig: tuple[int, int] | None = None
    sha256: str | None = None
    size: int | None = None
    pixels: np.ndarray | None = None
    pixel_source: str | None = None  # imaging.FROM_PHOTO or FROM_PREVIEW
    reject: imaging.Rejected | None = None  # unusable content: quarantine
    skip: str | None = None  # not ours to move: leave in place
    retry: str | None = None  # not ready yet: try again later


@dataclass
class Outcome:
    """What happened to one path, for the caller's bookkeeping (tracker, stats)."""

    path: Path
    action: str  # moved | review | quarantined | skipped | retry | failed
    entry: Entry | None = None
    keep: tuple[int, int] | None = None  # left in the inbox on purpose: ignore until changed
    reason: str | None = None


def prepare(path: Path, settings: Settings, input_size: tuple[int, int]) -> Prepared:
    """Read, hash and decode one file; never raises for anything a file can do.

    The file is read once into memory (bounded by ``max_file_mb``) and both
    hashed and decoded from that copy, so the hash describes exactly the bytes
    that were classified.  A size or mtime change during the read means the
    file is still being written: it is handed back for a later try.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Prepared(path, skip="vanished")
    except OSError as exc:
        return Prepared(path, retry=f"stat failed: {exc.strerror}")
    sig = signature(st)
    if stat.S_ISLNK(st.st_mode):
        return Prepared(path, sig=sig, skip="symlink")
    if not stat.S_ISREG(st.st_mode):
        return Prepared(path, sig=sig, skip="not-a-regular-file")
    base = Prepared(path, sig=sig, size=st.st_size)
    if st.st_size > settings.max_file_bytes:
        base.reject = imaging.Rejected("too-large", f"{st.st_size} bytes exceeds max_file_mb")
        base.sha256 = sha256_or_none(path)
        return base
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
    except FileNotFoundError:
        return Prepared(path, skip="vanished")
    except PermissionError as exc:
        if getattr(os, "O_NOATIME", 0):
            try:  # O_NOATIME needs ownership; plain read permission may still hold
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except PermissionError:
                base.reject = imaging.Rejected("unreadable", f"permission denied: {exc.strerror}")
                return base
        else:
            base.reject = imaging.Rejected("unreadable", f"permission denied: {exc.strerror}")
            return base
    except OSError as exc:
        base.reject = imaging.Rejected("unreadable", f"{exc.strerror}")
        return base
    try:
        with os.fdopen(fd, "rb") as fh:
            # One byte more than stat said, to see growth; not max_file_bytes + 1,
            # which makes Python allocate (and page-fault) that whole buffer per file.
            data = fh.read(st.st_size + 1)
            after = os.fstat(fh.fileno())
    except OSError as exc:
        base.reject = imaging.Rejected("unreadable", f"read failed: {exc.strerror}")
        return base
    if signature(after) != sig or len(data) != st.st_size:
        return Prepared(path, retry="changed while being read")
    base.sha256 = hashlib.sha256(data).hexdigest()
    try:
        base.pixels, base.pixel_source = imaging.decode_with_source(
            data, input_size, settings.max_pixels, settings.thumbnail_min_side
        )
    except imaging.Rejected as exc:
        base.reject = exc
    return base


@dataclass
class Processor:
    """Classifies and files prepared batches; owns the journal connection it is given."""

    classifier: Classifier
    journal: Journal
    settings: Callable[[], Settings]  # read per batch, so a reload applies to the next batch
    counters: dict[str, int] = field(default_factory=dict)

    def process(self, batch: Sequence[Prepared]) -> list[Outcome]:
        return self.file(batch, self.score(batch))

    def score(self, batch: Sequence[Prepared]) -> np.ndarray | None:
        """The model's probabilities for the decoded photos of ``batch``, in order.

        Kept apart from :meth:`file` so the daemon can run the model on one
        batch while another thread journals and moves the previous one: the
        model is the bottleneck, and fsyncs need not wait their turn behind it.
        """
        pixels = [p.pixels for p in batch if p.pixels is not None]
        return self.classifier.predict(pixels) if pixels else None

    def file(self, batch: Sequence[Prepared], probabilities: np.ndarray | None) -> list[Outcome]:
        """Decide, journal and move one scored batch (``probabilities`` from :meth:`score`)."""
        settings = self.settings()
        batch_id = uuid.uuid4().hex[:12]
        outcomes: list[Outcome] = []
        intents: list[tuple[Prepared, Entry]] = []
        notes: list[Entry] = []
        reserved: set[Path] = set()

        classify = [p for p in batch if p.pixels is not None]
        for prep, entry in zip(classify, self._entries(classify, probabilities, settings), strict=True):
            if self._restored_by_undo(prep):
                outcomes.append(Outcome(prep.path, "skipped", keep=prep.sig, reason="restored-by-undo"))
                continue
            entry.batch_id = batch_id
            album_dir = settings.library / (entry.album or settings.review_album)
            entry.destination = moving.free_name(album_dir, prep.path.name, reserved)
            reserved.add(entry.destination)
            intents.append((prep, entry))

        for prep in batch:
            if prep.retry:
                outcomes.append(Outcome(prep.path, "retry", reason=prep.retry))
            elif prep.skip:
                entry = Entry(action="skipped", source=prep.path, size=prep.size, reason=prep.skip)
                entry.batch_id = batch_id
                if self._is_new_note(entry):
                    notes.append(entry)
                keep = prep.sig if prep.skip != "vanished" else None
                outcomes.append(Outcome(prep.path, "skipped", entry=entry, keep=keep, reason=prep.skip))
            elif prep.reject is not None:
                dst = moving.free_name(settings.quarantine_dir, prep.path.name, reserved)
                reserved.add(dst)
                entry = Entry(
                    action="quarantined",
                    source=prep.path,
                    destination=dst,
                    sha256=prep.sha256,
                    size=prep.size,
                    reason=f"{prep.reject.reason}: {prep.reject.detail}",
                    batch_id=batch_id,
                    state="pending",
                )
                intents.append((prep, entry))

        self.journal.add([e for _, e in intents] + notes)
        crash_point("after-intent")
        outcomes += self._move_all(intents)
        for outcome in outcomes:
            self.counters[outcome.action] = self.counters.get(outcome.action, 0) + 1
            _log_outcome(outcome)
        return outcomes

    def _entries(
        self, items: Sequence[Prepared], probabilities: np.ndarray | None, settings: Settings
    ) -> list[Entry]:
        if not items or probabilities is None:
            return []
        entries = []
        for prep, probs in zip(items, probabilities, strict=True):
            decision = decide(
                probs,
                self.classifier.classes,
                threshold=settings.confidence_threshold,
                albums=settings.albums,
                review_album=settings.review_album,
            )
            entries.append(
                Entry(
                    action="review" if decision.to_review else "moved",
                    source=prep.path,
                    sha256=prep.sha256,
                    size=prep.size,
                    label=decision.label,
                    album=decision.album,
                    confidence=decision.confidence,
                    probabilities=decision.probabilities,
                    model_version=self.classifier.version,
                    pixel_source=prep.pixel_source,
                    state="pending",
                    reason="below confidence threshold" if decision.to_review else None,
                )
            )
        return entries

    def _restored_by_undo(self, prep: Prepared) -> bool:
        """A photo put back by ``cened undo`` stays put; re-filing it would undo the undo."""
        last = self.journal.last_at(prep.path)
        return last is not None and last.action == "undone" and last.sha256 == prep.sha256

    def _is_new_note(self, entry: Entry) -> bool:
        """Skips are noted once per file and reason, not at every rescan."""
        recent = self.journal.history(file=entry.source, limit=1)
        return not (recent and recent[0].action == "skipped" and recent[0].reason == entry.reason)

    def _move_all(self, intents: list[tuple[Prepared, Entry]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        updates: list[tuple[int, str, str | None]] = []
        touched: set[Path] = set()
        for prep, entry in intents:
            assert entry.destination is not None and entry.id is not None
            try:
                moving.move(prep.path, entry.destination)
            except FileNotFoundError:
                if os.path.lexists(prep.path):
                    reason = "destination folder vanished"
                    updates.append((entry.id, "failed", reason))
                    outcomes.append(Outcome(prep.path, "retry", entry=entry, reason=reason))
                else:
                    updates.append((entry.id, "failed", "vanished"))
                    outcomes.append(Outcome(prep.path, "failed", entry=entry, reason="vanished"))
                continue
            except OSError as exc:
                reason = f"move failed: {exc.strerror or exc}"
                updates.append((entry.id, "failed", reason))
                kind = "retry" if exc.errno in RETRYABLE else "failed"
                outcomes.append(Outcome(prep.path, kind, entry=entry, reason=reason))
                continue
            entry.state = "done"
            updates.append((entry.id, "done", None))
            touched.update((prep.path.parent, entry.destination.parent))
            outcomes.append(Outcome(prep.path, entry.action, entry=entry, reason=entry.reason))
        moving.fsync_dirs(touched)
        crash_point("before-done")
        if updates:
            self.journal.set_state(updates)
        return outcomes


def _log_outcome(outcome: Outcome) -> None:
    entry = outcome.entry
    fields: dict[str, object] = {"file": os.fsdecode(outcome.path), "action": outcome.action}
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
            pixels=entry.pixel_source if entry.pixel_source == imaging.FROM_PREVIEW else None,
        )
    fields = {k: v for k, v in fields.items() if v is not None}
    if outcome.action in ("moved", "review"):
        log.info("filed", **fields)
    elif outcome.action == "quarantined":
        log.warning("quarantined", **fields)
    elif outcome.action in ("retry", "failed"):
        log.warning("not-moved", **fields)
    else:
        log.info("skipped", **fields)

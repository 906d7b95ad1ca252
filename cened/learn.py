"""Teaching the model: the user's labelled photos, and the learned versions made from them.

Labels come from two places:

* **albums of the user's own** -- ``cened album add NAME DIR`` reads the
  example photos in DIR and keeps copies of them with the state, so DIR may
  go away and the album can be learned again on a new shipped model;
* **corrections** -- every photo a person put in another album, with
  ``cened correct`` or by moving it in the library, as the journal has it
  now.  A correction into a folder that is no class becomes a new album once
  it has :data:`learning.MIN_EXAMPLES` photos.

``learn`` fits a new version on them (:mod:`cened.ml.learning`), compares it
with the version in use on the labelled photos held back from training and
on the shipped validation set, keeps it under the state directory and puts
it in use only if it is not worse.  The daemon polls which version is in use
and switches between batches; with ``learn_after`` it also learns by itself
(:func:`unlearned`).  One process at a time changes what is learned
(:func:`changing`).

Features are the shipped model's outputs (logits and embedding) for each
photo, computed by the daemon's own reading and model code and cached by
sha256, so learning again costs only the new photos.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from cened import companions, locking, undoing
from cened.config import DUPLICATES_FOLDER, Settings
from cened.errors import ConfigError, ModelError, Refused
from cened.hashing import sha256_or_none
from cened.journal import Journal
from cened.ml import learning, modelpack
from cened.ml.classifying import AlbumKind, Classifier, Reading, decide_as_configured
from cened.ml.learning import Labelled
from cened.ml.versions import SHIPPED, Learned, VersionStore, new_version_name
from cened.pipeline import Verdict, prepare
from cened.watching import scan

log = structlog.get_logger("cened.learn")

ALBUMS_FILE = "albums.json"
FEATURES_FILE = "features.npz"
LOCK_FILE = "learn.lock"
#: How much lower than the version in use a new one may score on the shipped
#: validation photos and still count as "not worse": one validation photo in
#: two hundred, below the split's own noise (±0.6 points).
VALIDATION_TOLERANCE = 0.005


class Source(StrEnum):
    ALBUM = "album"  # an example given with `cened album add`
    CORRECTION = "correction"  # a photo a person moved to another album


@dataclass(frozen=True)
class Example:
    sha256: str
    path: Path
    label: str
    source: Source


@dataclass
class Albums:
    """``albums.json``: the user's own albums and their examples, and names taken away."""

    path: Path
    albums: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> Albums:
        path = root / ALBUMS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} cannot be read: {exc}") from exc
        return cls(path, dict(data.get("albums", {})), list(data.get("removed", [])))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"albums": self.albums, "removed": self.removed}, indent=2) + "\n")
        tmp.replace(self.path)

    def folder(self, name: str) -> Path:
        """Where copies of album ``name``'s examples are kept."""
        return self.path.parent / "albums" / name

    def examples(self) -> list[Example]:
        return [
            Example(e["sha256"], Path(e["path"]), name, Source.ALBUM)
            for name, album in self.albums.items()
            for e in album["examples"]
        ]


class FeatureCache:
    """The shipped model's outputs for photos by sha256 (``features.npz``), for one model version."""

    def __init__(self, root: Path, version: str) -> None:
        self.path = root / FEATURES_FILE
        self.version = version
        self.rows: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["version"]) == version:
                    self.rows = dict(zip((str(s) for s in z["sha256"]), z["outputs"], strict=True))
        except (OSError, ValueError, KeyError):
            pass  # none yet, another model's or unreadable: computed again

    def keep_only(self, shas: set[str]) -> None:
        """Forget the rows of photos no longer learned from: the cache stays as bounded as they are."""
        self.rows = {s: row for s, row in self.rows.items() if s in shas}

    def save(self) -> None:
        if not self.rows:
            return
        shas = sorted(self.rows)
        learning.save_npz(
            self.path,
            version=np.asarray(self.version),
            sha256=np.asarray(shas),
            outputs=np.stack([self.rows[s] for s in shas]).astype(np.float32),
        )


def compute(
    examples: Sequence[Example],
    classifier: Classifier,
    settings: Settings,
    cache: FeatureCache,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[list[Example], np.ndarray]:
    """The model's outputs for each example, read and decoded as the daemon does; unreadable ones left out."""
    todo = [e for e in dict.fromkeys(examples) if e.sha256 not in cache.rows]
    size = classifier.meta.input_size
    for start in range(0, len(todo), 32):
        prepared = []
        for example in todo[start : start + 32]:
            p = prepare(example.path, settings, size)
            if p.verdict != Verdict.DECODED or p.pixels is None:
                say(f"skipped {os.fsdecode(example.path)}: {p.detail or p.reason or 'not readable'}")
            elif p.sha256 != example.sha256:
                say(f"skipped {os.fsdecode(example.path)}: it has changed since it was labelled")
            else:
                prepared.append(p)
        if prepared:
            outputs = classifier.outputs([p.pixels for p in prepared if p.pixels is not None])
            for p, row in zip(prepared, outputs, strict=True):
                assert p.sha256 is not None
                cache.rows[p.sha256] = row
    kept = [e for e in examples if e.sha256 in cache.rows]
    width = classifier.width
    outputs = np.stack([cache.rows[e.sha256] for e in kept]) if kept else np.zeros((0, width), np.float32)
    return kept, outputs


def photos_in(folder: Path, settings: Settings) -> list[Path]:
    """The photos below ``folder`` by the daemon's own rules (sidecars and videos are not examples)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    found = []
    for path in scan(folder):
        if (
            path.suffix.lower() in settings.extensions
            and companions.kind(path, settings) == companions.Kind.PHOTO
        ):
            found.append(path)
    return found


def corrected_examples(
    journal: Journal, settings: Settings, albums: Albums, classes: tuple[str, ...]
) -> tuple[list[Example], list[str]]:
    """Photos a person put in an album, labelled with what that album means to the model.

    A correction into a class's album teaches that class; into a folder that
    is no class, a possible new album; into review, other, or an album that
    groups several classes, nothing (it says where a photo goes, not which
    class it is).
    """
    grouped = Counter(settings.album_for(c) for c in classes)
    by_album = {settings.album_for(c): c for c in classes}
    skip = {settings.review_album, settings.other_album, DUPLICATES_FOLDER, *albums.removed}
    examples, notes = [], []
    for row in undoing.corrections(journal):
        label = row.human_label
        assert label is not None and row.destination is not None and row.sha256 is not None
        if label not in classes:
            if grouped.get(label, 0) > 1:
                notes.append(f"#{row.id}: album {label!r} groups several classes; not a label")
                continue
            label = by_album.get(label, label)
        if label in skip:
            continue
        examples.append(Example(row.sha256, row.destination, label, Source.CORRECTION))
    return examples, notes


@dataclass(frozen=True)
class Measure:
    """How one version does on some labelled photos."""

    n: int
    right: float  # share filed in the album of their label
    to_other: float  # share sent to other
    accuracy: float | None = None  # top-1 over the classes, regardless of review/other (validation)
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)  # precision, recall, n


def measure(reading: Reading, data: Labelled, settings: Settings) -> Measure:
    """File ``data`` by ``reading`` as the daemon would, and count what ends in the right album."""
    if not len(data):
        return Measure(0, 0.0, 0.0)
    scores = reading.scores(np.concatenate([data.logits, data.embeddings], axis=1))
    decided = decide_as_configured(scores, settings)
    truth = [settings.album_for(label) for label in data.labels]
    albums = [d.album for d in decided]
    right = np.array([a == t for a, t in zip(albums, truth, strict=True)])
    other = np.array([d.kind == AlbumKind.OTHER for d in decided])
    top = [scores.classes[i] for i in scores.probabilities.argmax(axis=1)]
    per_label = {}
    for label in sorted(set(data.labels) | set(scores.classes[len(reading.meta.classes) :])):
        album = settings.album_for(label)
        mine = np.array([t == album for t in truth])
        called = np.array([a == album for a in albums])
        per_label[label] = {
            "n": int(mine.sum()),
            "precision": float((mine & called).sum() / called.sum()) if called.any() else 0.0,
            "recall": float((mine & called).sum() / mine.sum()) if mine.any() else 0.0,
        }
    accuracy = float(np.mean([t == label for t, label in zip(top, data.labels, strict=True)]))
    return Measure(len(data), float(right.mean()), float(other.mean()), accuracy, per_label)


@dataclass(frozen=True)
class LearnReport:
    """What ``learn`` did: the version it made, how both versions measured, and whether it is in use."""

    version: str
    previous: str
    classes: tuple[str, ...]
    examples: dict[str, int]  # per label, used for training
    held_back: dict[str, int]
    current: dict[str, Measure]  # "yours" (held back) and "validation"
    new: dict[str, Measure]
    accepted: bool
    forced: bool
    seconds: float
    notes: list[str]
    seen: dict[str, int]  # per label, every labelled photo there was to learn from

    def as_dict(self) -> dict[str, Any]:
        def m(x: Measure) -> dict[str, Any]:
            return {
                "n": x.n,
                "right": x.right,
                "to_other": x.to_other,
                "accuracy": x.accuracy,
                "per_label": x.per_label,
            }

        return {
            "version": self.version,
            "previous": self.previous,
            "classes": list(self.classes),
            "examples": self.examples,
            "held_back": self.held_back,
            "current": {k: m(v) for k, v in self.current.items()},
            "new": {k: m(v) for k, v in self.new.items()},
            "accepted": self.accepted,
            "forced": self.forced,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "seen": self.seen,
        }


def split(examples: Sequence[Example]) -> np.ndarray:
    """Which examples are held back (a boolean mask): a fifth of each label, at least one of five.

    Chosen by a hash of each photo's sha256, so the same photos stay held back
    as long as a label's examples do not change.
    """
    held = np.zeros(len(examples), dtype=bool)
    labels = np.array([e.label for e in examples])
    for label in set(labels.tolist()):
        mine = np.flatnonzero(labels == label)
        if len(mine) < 5:
            continue
        order = sorted(mine, key=lambda i: learning.rank(examples[i].sha256))
        held[order[: max(1, round(len(mine) * learning.HELD_BACK))]] = True
    return held


def capped(examples: Sequence[Example], notes: list[str] | None = None) -> list[Example]:
    """At most :data:`learning.MAX_EXAMPLES` of each label (:func:`learning.sample`), in their order."""
    by_label: dict[str, list[str]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e.sha256)
    kept: dict[str, set[str]] = {}
    for label, shas in by_label.items():
        kept[label] = learning.sample(shas)
        if notes is not None and len(set(shas)) > len(kept[label]):
            notes.append(f"{label!r}: {len(set(shas))} photos; learned from a sample of {len(kept[label])}")
    return [e for e in examples if e.sha256 in kept[e.label]]


def labelled(settings: Settings, classes: tuple[str, ...]) -> tuple[list[Example], list[str]]:
    """Every photo the user has labelled: album examples, then corrections; and notes on those left out."""
    albums = Albums.load(settings.learned_dir)
    examples = albums.examples()
    if not settings.database.exists():
        return examples, []
    with Journal(settings.database, readonly=True) as journal:
        corrected, notes = corrected_examples(journal, settings, albums, classes)
    return examples + corrected, notes


def unlearned(settings: Settings, classes: tuple[str, ...], base: str) -> int:
    """Labelled photos beyond those the newest version learned on model ``base`` had, label by label.

    A version learned on another shipped model counts for nothing: after an
    upgrade, everything is to be learned again.
    """
    now = Counter(e.label for e in labelled(settings, classes)[0])
    store = VersionStore(settings.learned_dir)
    seen: dict[str, int] = {}
    for name in reversed(store.names()):
        try:
            info = store.info(name)
        except ModelError:
            continue
        if info.get("base") == base:
            seen = dict(info.get("report", {}).get("seen", {}))
            break
    return sum(max(0, n - int(seen.get(label, 0))) for label, n in now.items())


def stamp(settings: Settings) -> tuple[tuple[int, int] | None, ...]:
    """What changes whenever :func:`unlearned` may have: the journal's files, the albums, the versions."""
    database = settings.database
    paths = (
        database,
        database.with_name(database.name + "-wal"),
        settings.learned_dir / ALBUMS_FILE,
        VersionStore(settings.learned_dir).versions,
    )
    marks: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            marks.append(None)
        else:
            marks.append((st.st_mtime_ns, st.st_size))
    return tuple(marks)


@contextmanager
def changing(settings: Settings, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock on what is learned: one ``learn``, ``album`` or ``model`` change at a time.

    The daemon learning by itself does not wait (``wait=False`` yields False
    while a command holds it); a command waits for the daemon's learn to end.
    """
    with locking.exclusive(settings.learned_dir / LOCK_FILE, wait=wait) as held:
        yield held


def learn(
    settings: Settings,
    *,
    force: bool = False,
    say: Callable[[str], None] = lambda _: None,
    classifier: Classifier | None = None,
) -> LearnReport:
    """Fit a version on every label the user has given, compare, keep it, and put it in use if not worse."""
    started = datetime.now(UTC)
    store = VersionStore(settings.learned_dir)
    classifier = classifier or Classifier.from_settings(settings, learned=False)
    meta = classifier.meta
    shipped = classifier.reading.with_learned(None)
    if shipped.detector is None:
        raise Refused(f"{settings.model} has no novelty detector; learning needs its embedding")
    replay = learning.Replay.load(settings.model)
    notes: list[str] = []
    try:
        previous = store.active()
        current = shipped.with_learned(store.load_active())
    except Exception as exc:  # noqa: BLE001 - a broken version in use is compared as the shipped model
        notes.append(f"the version in use cannot be loaded ({exc}); compared with the shipped model")
        previous, current = SHIPPED, shipped
    examples, more = labelled(settings, meta.classes)
    notes += more
    seen = dict(Counter(e.label for e in examples))
    if not examples:
        raise Refused(
            "nothing to learn from: no corrections yet, and no albums of your own (cened album add)"
        )
    examples = capped(examples, notes)
    cache = FeatureCache(settings.learned_dir, meta.version)
    examples, outputs = compute(examples, classifier, settings, cache, lambda s: notes.append(s))
    cache.keep_only({e.sha256 for e in examples})
    cache.save()
    counts = Counter(e.label for e in examples)
    new_labels = sorted(label for label in counts if label not in meta.classes)
    for label in new_labels:
        if counts[label] < learning.MIN_EXAMPLES:
            notes.append(f"{label!r}: {counts[label]} photos, a new album needs {learning.MIN_EXAMPLES}")
    classes = meta.classes + tuple(label for label in new_labels if counts[label] >= learning.MIN_EXAMPLES)
    keep = [i for i, e in enumerate(examples) if e.label in classes]
    examples = [examples[i] for i in keep]
    n = len(meta.classes)
    data = Labelled(outputs[keep, :n], outputs[keep, n:], tuple(e.label for e in examples))
    held = split(examples)
    train_part, held_part = data.take(np.flatnonzero(~held)), data.take(np.flatnonzero(held))
    say(f"fitting {len(classes)} classes on {len(train_part)} of your photos and {len(replay.train)} shipped")
    head = learning.fit_head(meta.classes, classes, meta.temperature, replay.train, train_part)
    assert shipped.detector is not None
    prototypes = learning.fit_prototypes(train_part, meta.classes, shipped.detector.reach)
    learned = Learned(new_version_name(started), meta.version, head, prototypes, started.isoformat())
    new = shipped.with_learned(learned)
    # Only labels the new version knows are compared: an album just removed is no test of it.
    before = {
        "yours": measure(current, held_part, settings),
        "validation": measure(current, replay.validation, settings),
    }
    after = {
        "yours": measure(new, held_part, settings),
        "validation": measure(new, replay.validation, settings),
    }
    assert before["validation"].accuracy is not None and after["validation"].accuracy is not None
    not_worse = after["yours"].right >= before["yours"].right and (
        after["validation"].accuracy >= before["validation"].accuracy - VALIDATION_TOLERANCE
    )
    outcome = LearnReport(
        learned.version,
        previous,
        classes,
        dict(Counter(train_part.labels)),
        dict(Counter(held_part.labels)),
        before,
        after,
        not_worse or force,
        force and not not_worse,
        (datetime.now(UTC) - started).total_seconds(),
        notes,
        seen,
    )
    learned = Learned(learned.version, learned.base, head, prototypes, learned.created, outcome.as_dict())
    store.add(learned)
    if outcome.accepted:
        store.use(learned.version)
    return outcome


def add_album(settings: Settings, name: str, folder: Path, classifier: Classifier | None = None) -> int:
    """Record ``folder``'s photos as the examples of a new album ``name``; returns how many."""
    from cened.config import album_name_for_people

    classifier = classifier or Classifier.from_settings(settings, learned=False)
    reserved = {*classifier.meta.classes, settings.review_album, settings.other_album, DUPLICATES_FOLDER}
    try:
        album_name_for_people(name, reserved)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    if name in reserved:
        raise Refused(f"{name!r} is an album cened uses already; choose another name")
    albums = Albums.load(settings.learned_dir)
    if name in albums.albums:
        raise Refused(f"album {name!r} exists; `cened album remove {name}` first to replace its examples")
    photos = photos_in(folder, settings)
    if len(photos) < learning.MIN_EXAMPLES:
        raise Refused(
            f"a new album needs at least {learning.MIN_EXAMPLES} example photos; {folder} has {len(photos)}"
        )
    wanted = []
    for path in photos:
        path = path.resolve()  # an example may be a link to a photo; the daemon's reading refuses links
        sha256 = sha256_or_none(path)
        if sha256 is not None:  # read and decoded once, by compute(); what it cannot read is left out
            wanted.append(Example(sha256, path, name, Source.ALBUM))
    # Only a sample of a large album is read, kept and learned from (learning.MAX_EXAMPLES).
    wanted = capped(wanted)
    cache = FeatureCache(settings.learned_dir, classifier.meta.version)
    kept, _ = compute(wanted, classifier, settings, cache)
    if len(kept) < learning.MIN_EXAMPLES:
        raise Refused(
            f"a new album needs at least {learning.MIN_EXAMPLES} example photos; "
            f"only {len(kept)} of the {len(photos)} in {folder} could be read"
        )
    cache.save()
    # Copies of the examples are kept with the state: a new shipped model cannot read the
    # features of the old one, and the album must outlive DIR to be learned again.
    kept_in = albums.folder(name)
    shutil.rmtree(kept_in, ignore_errors=True)
    kept_in.mkdir(parents=True)
    copies = []
    for example in kept:
        copy = kept_in / f"{example.sha256[:20]}{example.path.suffix.lower()}"
        shutil.copyfile(example.path, copy)
        copies.append(
            {"sha256": example.sha256, "path": os.fsdecode(copy), "from": os.fsdecode(example.path)}
        )
    albums.albums[name] = {
        "folder": os.fsdecode(folder.absolute()),
        "added": datetime.now(UTC).isoformat(timespec="seconds"),
        "examples": copies,
    }
    if name in albums.removed:
        albums.removed.remove(name)
    albums.save()
    return len(kept)


def remove_album(settings: Settings, name: str) -> LearnReport | None:
    """Forget album ``name`` (its examples, corrections into it as a label) and learn without it.

    The photos filed in it stay where they are.  The new version is put in
    use whatever it measures: the user asked for it.  None when nothing is
    left to learn from: the shipped model is put in use.
    """
    albums = Albums.load(settings.learned_dir)
    known = name in albums.albums
    albums.albums.pop(name, None)
    shutil.rmtree(albums.folder(name), ignore_errors=True)  # our copies; DIR is untouched
    store = VersionStore(settings.learned_dir)
    active = _active_or_shipped(store)
    in_use = active != SHIPPED and name in store.load(active).classes
    if not known and not in_use:
        raise Refused(f"no album {name!r} of your own (see `cened album list`)")
    if name not in albums.removed:
        albums.removed.append(name)
    albums.save()
    try:
        return learn(settings, force=True)
    except Refused:
        if active != SHIPPED:
            store.use(SHIPPED)
        return None


def album_list(settings: Settings) -> list[str]:
    """Lines for ``cened album list``: the user's albums, and labels from corrections."""
    albums = Albums.load(settings.learned_dir)
    lines = [
        f"{name}\t{len(a['examples'])} examples from {a['folder']} (added {a['added']})"
        for name, a in albums.albums.items()
    ]
    store = VersionStore(settings.learned_dir)
    base = modelpack.read_meta(settings.model)
    if settings.database.exists():
        with Journal(settings.database, readonly=True) as journal:
            corrected, _ = corrected_examples(journal, settings, albums, base.classes)
        counts = Counter(e.label for e in corrected)
        for label, n in sorted(counts.items()):
            if label in base.classes:
                lines.append(f"{label}\t{n} corrections (a shipped class)")
            elif label not in albums.albums:
                state = (
                    "an album"
                    if n >= learning.MIN_EXAMPLES
                    else f"{learning.MIN_EXAMPLES - n} more to be an album"
                )
                lines.append(
                    f"{label}\t{n} corrections into a folder that is no class: {state} at `cened learn`"
                )
    lines.append(f"in use: {_in_use(store)}")
    return lines


def _active_or_shipped(store: VersionStore) -> str:
    """The version in use; the shipped model when ``active.json`` cannot be read (a learn mends it)."""
    try:
        return store.active()
    except ModelError:
        return SHIPPED


def _in_use(store: VersionStore) -> str:
    """The version in use, or why that cannot be told, for a listing."""
    try:
        return store.active()
    except ModelError as exc:
        return f"unknown: {exc}"


def version_list(settings: Settings) -> list[str]:
    """Lines for ``cened model list``, oldest first; the one in use is marked."""
    store = VersionStore(settings.learned_dir)
    unreadable = ""
    try:
        active: str | None = store.active()
    except ModelError as exc:  # listed all the same, with how to mend it
        active, unreadable = None, str(exc)
    base = modelpack.read_meta(settings.model)
    lines = [f"{'*' if active == SHIPPED else ' '} {SHIPPED}\t{base.version}\t{len(base.classes)} classes"]
    for name in store.names():
        try:
            v = store.load(name)
        except Exception as exc:  # noqa: BLE001 - one unreadable version must not hide the others
            lines.append(f"  {name}\tcannot be read: {exc}")
            continue
        report = v.report.get("new", {})
        yours = report.get("yours", {})
        val = report.get("validation", {})
        new = ", ".join(v.classes[len(base.classes) :]) or "no new"
        figures = f"yours {yours.get('right', 0):.1%} of {yours.get('n', 0)}"
        figures += f", validation {val.get('accuracy') or 0:.1%}"
        mark = "*" if name == active else " "
        lines.append(f"{mark} {name}\ton {v.base}\t{len(v.classes)} classes ({new}); {figures}")
    if active is None:
        lines.append(f"in use: unknown: {unreadable}")
    return lines


#: With learn_after, the daemon learns once nothing has been filed for LEARN_QUIET_S,
#: looking every LEARN_CHECK_S: a learn takes a core for a few seconds, so not mid-burst.
LEARN_QUIET_S = 30.0
LEARN_CHECK_S = 5.0


class AutoLearner(threading.Thread):
    """The learner thread: ``cened learn`` by itself, once ``learn_after`` labelled photos are new.

    Only while the inbox is quiet (``last_busy``: the monotonic time the daemon
    last filed or had photos queued), and never while a command changes what
    is learned.  The version made is put in use only if it is not worse, and
    the daemon switches to it as to any other.  A learn that fails is logged
    (once while it fails alike) and not tried again until more photos are labelled.
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        classifier: Classifier,
        stopping: threading.Event,
        last_busy: Callable[[], float],
    ) -> None:
        super().__init__(name="learner", daemon=True)
        self._settings = settings
        self._classifier = classifier
        self._stopping = stopping
        self._last_busy = last_busy

    def run(self) -> None:
        failed: tuple[int | None, str] | None = None  # what was due, and the error
        looked: object = None  # what the files were like at the last look
        while not self._stopping.wait(LEARN_CHECK_S):
            s = self._settings()
            if not s.learn_after or time.monotonic() - self._last_busy() < LEARN_QUIET_S:
                continue
            now = (stamp(s), s.learn_after)
            if now == looked:
                continue  # counting reads every correction in the journal: only when it changed
            looked, due = now, None
            meta = self._classifier.meta
            try:
                due = unlearned(s, meta.classes, meta.version)
                if due < s.learn_after or (failed is not None and due == failed[0]):
                    continue
                with changing(s, wait=False) as held:
                    if not held:
                        looked = None  # a command is at it; look again
                        continue
                    log.info("learning", new_labelled=due)
                    outcome = learn(s, classifier=self._classifier)
            except Exception as exc:  # noqa: BLE001 - learning must never stop the service
                if failed != (due, str(exc)):
                    log.warning("learn-failed", error=str(exc), new_labelled=due)
                failed = (due, str(exc))
                continue
            failed = None
            log.info(
                "learned",
                version=outcome.version,
                in_use=outcome.accepted,
                classes=list(outcome.classes),
                yours_right=[outcome.current["yours"].right, outcome.new["yours"].right],
                validation=[outcome.current["validation"].accuracy, outcome.new["validation"].accuracy],
                seconds=round(outcome.seconds, 1),
            )

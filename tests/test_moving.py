"""Moves that cannot finish, and names that barely fit: one copy of each photo, always, under NAME_MAX.

A read-only inbox is made for real (see :mod:`fs_helpers`): ``chattr +i`` on
the folder (link and copy succeed, the unlink fails, on one filesystem) or a
read-only bind mount of it (the link fails across mounts, so the bytes are
copied, and the unlink fails).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_photo
from daemon_helpers import RunningDaemon, files_under, wait_until
from fs_helpers import immutable, read_only_mount

from cened import moving, recovery
from cened.config import Settings
from cened.daemon import Daemon
from cened.errors import ConfigError
from cened.hashing import sha256_file
from cened.journal import Entry, Journal
from cened.ml.classifying import Classifier
from cened.pipeline import Fate, FileOutcome, Processor, prepare

READ_ONLY = {"immutable": immutable, "read-only-mount": read_only_mount}


@pytest.fixture
def journal(settings: Settings) -> Iterator[Journal]:
    with Journal(settings.database) as journal:
        yield journal


def _file(
    processor: Processor, settings: Settings, classifier: Classifier, *paths: Path
) -> list[FileOutcome]:
    return processor.process([prepare(p, settings, classifier.meta.input_size) for p in paths])


# -- 5: a source that cannot be removed -------------------------------------------


@pytest.mark.parametrize("how", sorted(READ_ONLY))
def test_a_read_only_inbox_keeps_the_photo_and_files_one_copy_later(
    settings: Settings, classifier: Classifier, journal: Journal, how: str
) -> None:
    photo = write_photo(settings.inbox / "beach.jpg", "sea")
    sha = sha256_file(photo)
    processor = Processor(classifier, journal, lambda: settings)
    with READ_ONLY[how](settings.inbox):
        for _ in range(3):  # the daemon's retries
            (outcome,) = _file(processor, settings, classifier, photo)
            assert outcome.fate == Fate.RETRY and "cannot remove it from the inbox" in outcome.reason
            assert sha256_file(photo) == sha
            assert files_under(settings.library) == []  # no copy left behind, not even a partial
    (outcome,) = _file(processor, settings, classifier, photo)
    assert outcome.fate == Fate.MOVED
    assert files_under(settings.library) == [settings.library / "sea" / "beach.jpg"]
    assert not photo.exists()
    # The three tries were one episode: one failed row, then the move.
    assert [(e.action, e.state) for e in journal.history()] == [("moved", "failed"), ("moved", "done")]


def test_a_read_only_inbox_at_start_is_refused_and_each_photo_filed_once_later(settings: Settings) -> None:
    photos = [write_photo(settings.inbox / f"{i}.jpg", "forest", seed=i) for i in range(6)]
    hashes = sorted(sha256_file(p) for p in photos)
    with immutable(settings.inbox), pytest.raises(ConfigError, match=r"inbox .* is not writable"):
        Daemon(settings).run()  # a read-only inbox at start is refused (its folder is probed)
    assert files_under(settings.library) == [] and all(p.exists() for p in photos)
    with RunningDaemon(settings.model_copy(update={"retry_max_s": 1.0})):
        assert wait_until(lambda: not files_under(settings.inbox), timeout=30)
    filed = files_under(settings.library)
    assert sorted(p.name for p in filed) == sorted(p.name for p in photos)  # no name-1.jpg
    assert sorted(sha256_file(p) for p in filed) == hashes


@pytest.mark.slow
def test_a_read_only_inbox_while_the_daemon_runs_makes_no_duplicates(settings: Settings) -> None:
    """The daemon already running when the inbox turns read-only, as in the report (mode 555 for 15 s)."""
    photos = [write_photo(settings.inbox / f"{i}.jpg", "sea", seed=i) for i in range(4)]
    for photo in photos:  # new to the start-up scan, so taken stable_seconds after it, not at once
        os.utime(photo, (time.time() + 60, time.time() + 60))
    with RunningDaemon(settings.model_copy(update={"retry_max_s": 1.0, "stable_seconds": 3.0})) as daemon:
        with immutable(settings.inbox):
            time.sleep(5.5)  # the photos are taken within 3 s of READY, then retried
            assert files_under(settings.library) == []
            assert daemon.counters.get("retry", 0) >= 2 * len(photos)
        assert wait_until(lambda: not files_under(settings.inbox), timeout=30)
    assert sorted(p.name for p in files_under(settings.library)) == sorted(p.name for p in photos)


def test_recovery_takes_back_the_link_when_the_source_cannot_be_removed(tmp_path: Path) -> None:
    """A crash between link and unlink, and on restart the inbox is read-only: one copy, in the inbox."""
    src, dst = tmp_path / "inbox" / "a.jpg", tmp_path / "library" / "sea" / "a.jpg"
    dst.parent.mkdir(parents=True)
    src.parent.mkdir()
    src.write_bytes(b"photo")
    os.link(src, dst)
    with Journal(tmp_path / "db.sqlite3") as journal:
        (entry,) = journal.add(
            [Entry(action="moved", source=src, destination=dst, sha256=sha256_file(src), state="pending")]
        )
        with immutable(src.parent):
            recovery.reconcile(journal)
        row = journal.get(entry.id)
    assert row.state == "failed" and "kept in the inbox" in row.reason
    assert src.read_bytes() == b"photo" and not dst.exists()


def test_a_repeated_failure_is_still_journaled_before_its_try(
    settings: Settings, classifier: Classifier, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row per episode, and yet every try has its intent committed first (the crash-safety rule)."""
    photo = write_photo(settings.inbox / "beach.jpg", "sea")
    pending: list[int] = []

    def full_disk(src: Path, dst: Path, root: Path | None = None) -> None:
        with sqlite3.connect(settings.database) as db:
            pending.append(db.execute("SELECT count(*) FROM decisions WHERE state = 'pending'").fetchone()[0])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(moving, "move", full_disk)
    processor = Processor(classifier, journal, lambda: settings)
    outcomes = [_file(processor, settings, classifier, photo)[0] for _ in range(3)]
    assert pending == [1, 1, 1]
    assert [o.repeat for o in outcomes] == [False, True, True]
    assert len({o.entry.id for o in outcomes}) == 1  # each names the row that stands for the episode
    assert [(e.action, e.state) for e in journal.history()] == [("moved", "failed")]
    write_photo(photo, "sea", seed=9)  # another photo under the same name: a new episode
    (outcome,) = _file(processor, settings, classifier, photo)
    assert not outcome.repeat and len(journal.history()) == 2
    monkeypatch.undo()
    (outcome,) = _file(processor, settings, classifier, photo)
    assert outcome.fate == Fate.MOVED
    assert [e.state for e in journal.history()] == ["failed", "failed", "done"]


def test_take_back_never_removes_what_is_not_ours(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.jpg", tmp_path / "b.jpg"
    src.write_bytes(b"ours")
    dst.write_bytes(b"someone else's, put there since")
    assert moving.take_back(src, dst) is True  # nothing of ours there: nothing to remove
    assert dst.read_bytes() == b"someone else's, put there since"
    dst.unlink()
    os.link(src, dst)
    src.unlink()  # our link, but the source vanished: the destination is the only copy and stays
    assert moving.take_back(src, dst) is False and dst.read_bytes() == b"ours"


# -- 6: names at NAME_MAX ---------------------------------------------------------


def _long_name(kind: str, size: int = 255) -> str:
    """A file name of exactly ``size`` bytes: ASCII, UTF-8 with 3-byte characters, or not UTF-8 at all."""
    ext = ".jpg"
    if kind == "ascii":
        stem = b"a" * (size - len(ext))
    elif kind == "utf-8":
        stem = "写".encode() * ((size - len(ext)) // 3)
        stem += b"b" * (size - len(ext) - len(stem))
    else:
        stem = b"\xe9" * (size - len(ext))  # Latin-1 bytes: no valid UTF-8
    name = os.fsdecode(stem + ext.encode())
    assert len(os.fsencode(name)) == size
    return name


def _valid(name: str, kind: str) -> None:
    raw = os.fsencode(name)
    assert len(raw) <= 255, len(raw)
    if kind != "latin-1":
        raw.decode("utf-8")  # shortened between characters, never inside one


@pytest.mark.parametrize("kind", ["ascii", "utf-8", "latin-1"])
def test_collision_names_and_temporaries_fit_name_max(tmp_path: Path, kind: str) -> None:
    name = _long_name(kind)
    (tmp_path / name).write_bytes(b"x")
    taken = moving.free_name(tmp_path, name)
    _valid(taken.name, kind)
    assert taken.name.endswith("-1.jpg")
    taken.write_bytes(b"y")
    assert moving.free_name(tmp_path, name).name.endswith("-2.jpg")
    for dst in (tmp_path / name, taken):
        partial = moving.partial_path(dst)
        _valid(partial.name, kind)
        assert partial.name.startswith(moving.PARTIAL_PREFIX) and partial.name.endswith(moving.PARTIAL_SUFFIX)
        partial.write_bytes(b"the filesystem takes it")
    assert moving.partial_path(tmp_path / name) != moving.partial_path(taken)
    # A short name is left exactly as it was.
    assert moving.free_name(tmp_path, "short.jpg") == tmp_path / "short.jpg"
    assert moving.partial_path(tmp_path / "short.jpg").name == ".short.jpg.cened-part"


def _other_filesystem(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than the temp dir")
    return Path(tempfile.mkdtemp(dir=shm, prefix="cened-lib-"))


@pytest.mark.parametrize("where", ["same-filesystem", "across-filesystems"])
@pytest.mark.parametrize("kind", ["utf-8", "latin-1"])
def test_a_255_byte_name_is_filed_even_on_a_collision(
    settings: Settings, classifier: Classifier, journal: Journal, tmp_path: Path, where: str, kind: str
) -> None:
    library = settings.library if where == "same-filesystem" else _other_filesystem(tmp_path)
    try:
        here = settings.model_copy(update={"library": library})
        processor = Processor(classifier, journal, lambda: here)
        name = _long_name(kind)
        first = write_photo(settings.inbox / name, "sea", seed=1)
        (outcome,) = _file(processor, here, classifier, first)
        assert outcome.fate == Fate.MOVED, outcome
        assert outcome.entry.destination == library / "sea" / name
        second = write_photo(settings.inbox / name, "sea", seed=2)  # the same name again
        (outcome,) = _file(processor, here, classifier, second)
        assert outcome.fate == Fate.MOVED, outcome
        dst = outcome.entry.destination
        _valid(dst.name, kind)
        assert dst.name.endswith("-1.jpg") and dst.parent == library / "sea"
        assert sorted(p.name for p in files_under(library)) == sorted([name, dst.name])
    finally:
        if library != settings.library:
            shutil.rmtree(library)


def test_doctor_knows_the_shortened_temporary_of_an_interrupted_move(tmp_path: Path) -> None:
    from cened import doctor

    library = tmp_path / "library"
    dst = library / "sea" / _long_name("utf-8")
    dst.parent.mkdir(parents=True)
    with Journal(tmp_path / "db.sqlite3") as journal:
        journal.add([Entry(action="moved", source=tmp_path / dst.name, destination=dst, state="pending")])
        moving.partial_path(dst).write_bytes(b"half a photo")  # the crash came mid-copy
        report = doctor.examine(journal, library, library / "_quarantine")
    assert report.partials == [] and len(report.pending) == 1

"""Crash safety: interrupted moves are finished or undone, and kill -9 never loses a photo."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import DaemonProcess, files_under, wait_until
from PIL import Image

from cened import moving, recovery
from cened.config import Settings
from cened.journal import Entry, Journal

# -- each row of the recovery table, staged by hand ----------------------------


def _intent(journal: Journal, src: Path, dst: Path, sha: str) -> Entry:
    (entry,) = journal.add([Entry(action="moved", source=src, destination=dst, sha256=sha, state="pending")])
    return entry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def staged(tmp_path: Path):
    src, dst = tmp_path / "inbox" / "a.jpg", tmp_path / "albums" / "sea" / "a.jpg"
    src.parent.mkdir(parents=True)
    dst.parent.mkdir(parents=True)
    data = os.urandom(5000)
    journal = Journal(tmp_path / "db.sqlite3")
    yield journal, src, dst, data
    journal.close()


def _state(journal: Journal, entry: Entry) -> tuple[str, str | None]:
    row = journal.get(entry.id)
    return row.state, row.reason


def test_recovery_finished_move_is_marked_done(staged) -> None:
    journal, src, dst, data = staged
    dst.write_bytes(data)
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    assert _state(journal, entry) == ("done", None)
    assert dst.read_bytes() == data and not src.exists()


def test_recovery_hard_link_left_by_crash_is_resolved(staged) -> None:
    journal, src, dst, data = staged
    src.write_bytes(data)
    os.link(src, dst)  # crashed between link() and unlink()
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    assert _state(journal, entry) == ("done", None)
    assert not src.exists() and dst.read_bytes() == data


def test_recovery_finished_cross_device_copy_drops_source(staged) -> None:
    journal, src, dst, data = staged
    src.write_bytes(data)
    dst.write_bytes(data)  # copied and linked, source not yet removed
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    assert _state(journal, entry) == ("done", None)
    assert not src.exists() and dst.read_bytes() == data


def test_recovery_partial_copy_is_removed_and_source_kept(staged) -> None:
    journal, src, dst, data = staged
    src.write_bytes(data)
    moving.partial_path(dst).write_bytes(data[:1000])  # crashed mid-copy
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    state, reason = _state(journal, entry)
    assert state == "failed" and "retry" in reason
    assert src.read_bytes() == data
    assert files_under(dst.parent) == []


def test_recovery_never_removes_a_source_whose_twin_differs(staged) -> None:
    journal, src, dst, data = staged
    src.write_bytes(data)
    dst.write_bytes(b"someone else's photo")
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    assert _state(journal, entry)[0] == "failed"
    assert src.read_bytes() == data and dst.read_bytes() == b"someone else's photo"


def test_recovery_vanished_file_is_marked_failed(staged) -> None:
    journal, src, dst, data = staged
    entry = _intent(journal, src, dst, _sha(data))
    recovery.reconcile(journal)
    assert _state(journal, entry) == ("failed", "recovery: file vanished")


def test_cross_device_move_never_shows_a_partial_destination(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than the temp dir")
    target = Path(tempfile.mkdtemp(dir=shm)) / "album" / "b.jpg"
    try:
        src = tmp_path / "b.jpg"
        src.write_bytes(os.urandom(100_000))
        data, mtime = src.read_bytes(), src.stat().st_mtime_ns
        moving.move(src, target)
        assert not src.exists() and target.read_bytes() == data
        assert target.stat().st_mtime_ns == mtime
        assert [p.name for p in target.parent.iterdir()] == ["b.jpg"]
    finally:
        shutil.rmtree(target.parent.parent)


def test_move_makes_a_missing_album_folder_and_reports_a_missing_source(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.jpg", tmp_path / "library" / "sea" / "a.jpg"
    src.write_bytes(b"photo")
    moving.move(src, dst)
    assert dst.read_bytes() == b"photo" and not src.exists()
    with pytest.raises(FileNotFoundError):  # the source is gone: no retry can help
        moving.move(src, tmp_path / "library" / "forest" / "a.jpg")
    assert dst.read_bytes() == b"photo"


def test_move_never_overwrites(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.jpg", tmp_path / "b.jpg"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        moving.move(src, dst)
    assert src.read_bytes() == b"new" and dst.read_bytes() == b"old"
    assert moving.free_name(tmp_path, "b.jpg") == tmp_path / "b-1.jpg"


# -- the real thing: SIGKILL at random moments ----------------------------------


def _kill_run(
    tmp_path: Path,
    settings: Settings,
    n_images: int,
    kills: int,
    seed: int,
    cross_device: bool = False,
    duplicates: bool = False,
    layout: str = "{album}",
    companions: bool = False,
    near: bool = False,
) -> None:
    rng = random.Random(seed)
    hashes: Counter[str] = Counter()
    made: list[tuple[int, str, str]] = []  # (index, extension, format) of each photo dropped
    copies = 0
    groups: dict[str, list[str]] = {}  # a photo's name: its companions' names
    variants: dict[str, str] = {}  # a near-duplicate's name (halved, re-encoded): its original's sha256
    staging = tmp_path / "staging"
    staging.mkdir()

    def companion(name: str, data: bytes) -> None:
        (staging / name).write_bytes(data)
        os.replace(staging / name, settings.inbox / name)  # whole, at once
        hashes[hashlib.sha256(data).hexdigest()] += 1

    def write(name: str, i: int, ext: str, fmt: str) -> None:
        cls = CLASSES[i % len(CLASSES)]
        path = write_photo(settings.inbox / f"{name}.{ext}", cls, fmt=fmt, size=(480, 360), seed=i)
        hashes[hashlib.sha256(path.read_bytes()).hexdigest()] += 1

    def drop(indices: range) -> None:
        nonlocal copies
        for i in indices:
            ext, fmt = rng.choice([("jpg", "JPEG"), ("png", "PNG")])
            group = [f"img_{i:03d}{tail}" for tail in (".xmp", ".MOV") if companions and rng.random() < 0.15]
            before = rng.random() < 0.5  # a companion may come first: it waits for its photo
            for name in group if before else ():
                companion(name, os.urandom(64) + name.encode())
            write(f"img_{i:03d}", i, ext, fmt)
            made.append((i, ext, fmt))
            for name in group if not before else ():
                companion(name, os.urandom(64) + name.encode())
            if group:
                groups[f"img_{i:03d}.{ext}"] = group
            if near and rng.random() < 0.12:  # as a messenger forwards it: filed with its original
                original = settings.inbox / f"img_{i:03d}.{ext}"
                with Image.open(original) as im:
                    small = im.convert("RGB").resize((im.width // 2, im.height // 2))
                name = f"img_{i:03d} small.jpg"
                small.save(staging / name, "JPEG", quality=60)
                data = (staging / name).read_bytes()
                os.replace(staging / name, settings.inbox / name)
                hashes[hashlib.sha256(data).hexdigest()] += 1
                variants[name] = hashlib.sha256(original.read_bytes()).hexdigest()
            if duplicates and rng.random() < 0.1:  # a copy beside it: most likely in the same batch
                write(f"img_{i:03d} copy", i, ext, fmt)
                copies += 1
        if duplicates and made:  # a copy of a photo that is filed, or on its way
            i, ext, fmt = rng.choice(made[: len(made) // 2 + 1])
            write(f"again_{copies:03d}", i, ext, fmt)
            copies += 1

    # Half the photos wait from the start; the rest arrive between restarts, so
    # every run has work in flight when it is killed.
    drop(range(n_images // 2))
    per_round = -(-(n_images - n_images // 2) // kills)
    rounds = [
        range(n_images // 2 + k * per_round, min(n_images, n_images // 2 + (k + 1) * per_round))
        for k in range(kills)
    ]
    # Two bad files, so quarantine moves are interrupted too.
    (settings.inbox / "bad_0.jpg").write_bytes(b"not a photo at all")
    (settings.inbox / "bad_1.jpg").write_bytes(b"")
    for bad in ("bad_0.jpg", "bad_1.jpg"):
        hashes[hashlib.sha256((settings.inbox / bad).read_bytes()).hexdigest()] += 1
        old = time.time() - 3600  # long finished: quarantined at once, not waited for (unfinished_grace_s)
        os.utime(settings.inbox / bad, (old, old))
    config = write_config(
        tmp_path / "cened.toml", settings, batch_size=4, batch_max_wait_ms=20, stable_seconds=0, layout=layout
    )

    # Odd rounds: the daemon SIGKILLs itself at one of the crash points inside
    # the journal-move-mark window (random kills from outside rarely land there).
    # Even rounds: SIGKILL from outside at a random moment, now and then during start-up.
    points = ["after-intent", "after-link", "before-done"] + (["after-copy"] if cross_device else [])
    recovered = self_killed = 0
    for k in range(kills):
        drop(rounds[k])
        if k % 2:
            point = points[(k // 2) % len(points)]
            daemon = DaemonProcess(config, env={"CENED_CRASH_AT": f"{point}:0.5"})
            recovered += daemon.wait_for("started", timeout=60)["recovered"]
            wait_until(lambda d=daemon: d.proc.poll() is not None, timeout=3)
            self_killed += daemon.proc.returncode == -9
        else:
            daemon = DaemonProcess(config)
            if k % 4 == 0:
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                recovered += daemon.wait_for("started", timeout=60)["recovered"]
                time.sleep(rng.uniform(0.0, 0.6))
        daemon.kill()

    daemon = DaemonProcess(config)
    try:
        recovered += daemon.wait_for("started", timeout=60)["recovered"]
        assert wait_until(lambda: not files_under(settings.inbox), timeout=120), files_under(settings.inbox)
    finally:
        assert daemon.stop() == 0
    # The kills must have interrupted real moves, or this test proves nothing.
    assert self_killed >= kills // 4 and recovered > 0, (self_killed, recovered)

    # Every original exists exactly once, by content, in an album, review or quarantine
    # (a photo dropped twice: once there, once in _duplicates).
    everywhere = files_under(settings.library) + files_under(settings.inbox)
    partials = [p for p in everywhere if p.name.endswith(moving.PARTIAL_SUFFIX)]
    assert partials == []
    found = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in everywhere)
    assert found == hashes
    # (Companions go with their photo: into _duplicates too when that is where it went.)
    apart = Counter(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files_under(settings.duplicates_dir)
        if p.suffix in (".jpg", ".png")
    )
    assert apart == hashes - Counter(hashes.keys())
    assert apart.total() == copies
    # One final row per photo, each pointing at where the photo really is.
    with sqlite3.connect(settings.database) as db:
        done = db.execute(
            "SELECT destination, sha256, action FROM decisions WHERE state = 'done' AND action != 'skipped'"
        ).fetchall()
        pending = db.execute("SELECT count(*) FROM decisions WHERE state = 'pending'").fetchone()[0]
        moved = dict(db.execute("SELECT source, destination FROM decisions WHERE state = 'done'").fetchall())
    assert pending == 0
    assert len(done) == n_images + 2 + copies + len(variants) + sum(map(len, groups.values()))
    assert Counter(sha for _, sha, _ in done) == hashes
    for destination, sha, _ in done:
        assert hashlib.sha256(Path(destination).read_bytes()).hexdigest() == sha
    actions = Counter(action for dst, _, action in done if Path(dst).suffix in (".jpg", ".png"))  # photos
    assert actions["quarantined"] == 2 and actions["duplicate"] == copies
    # Each companion is beside its photo, wherever that went, under the photo's stem.
    assert len(groups) >= 5 if companions else not groups
    for photo, names in groups.items():
        there = Path(moved[str(settings.inbox / photo)])
        for name in names:
            assert Path(moved[str(settings.inbox / name)]) == there.with_name(there.stem + Path(name).suffix)
    # Each near-duplicate is in the folder of its original's content in the library (the
    # original itself, or an exact copy filed before it), one of the two naming the other's group.
    assert len(variants) >= 5 if near else not variants
    with sqlite3.connect(settings.database) as db:
        rows = db.execute(
            "SELECT source, destination, sha256, similar_id FROM decisions "
            "WHERE state = 'done' AND action IN ('moved', 'review', 'other')"
        ).fetchall()
    for variant, original in variants.items():
        (held,) = [(Path(dst), group) for _, dst, sha, group in rows if sha == original]
        (mine,) = [(Path(dst), group) for src, dst, _, group in rows if src == str(settings.inbox / variant)]
        assert mine[0].parent == held[0].parent, (variant, held, mine)
        assert held[1] is not None or mine[1] is not None, (variant, held, mine)
    # Filed photos are as deep as the layout says (album and date folders); the rest are flat.
    for destination, _, action in done:
        depth = layout.count("/") + 2 if action in ("moved", "review", "other") else 2
        assert len(Path(destination).relative_to(settings.library).parts) == depth, destination


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, settings: Settings) -> None:
    _kill_run(
        tmp_path,
        settings,
        n_images=200,
        kills=20,
        seed=20261124,
        duplicates=True,
        layout="{album}/{year}/{month}",
        companions=True,
        near=True,
    )


@pytest.mark.slow
def test_sigkill_during_cross_device_moves_loses_nothing(tmp_path: Path, settings: Settings) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than the temp dir")
    library = Path(tempfile.mkdtemp(dir=shm, prefix="cened-lib-"))
    try:
        cross = settings.model_copy(update={"library": library})
        _kill_run(tmp_path, cross, n_images=100, kills=12, seed=7, cross_device=True)
    finally:
        shutil.rmtree(library)

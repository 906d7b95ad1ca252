"""Every kind of bad or odd input ends in a clear, logged outcome, and nothing is lost.

Each test runs the real pipeline (real model, real SQLite file, real files)
on one problem file and checks where the file went and what the log says.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, picture, write_config, write_photo
from daemon_helpers import DaemonProcess
from PIL import Image

from cened.config import Settings
from cened.journal import Journal, path_from_db
from cened.ml.classifying import Classifier
from cened.pipeline import FileOutcome, Processor, Verdict, prepare


@pytest.fixture
def run(settings: Settings, classifier: Classifier) -> Iterator:
    journal = Journal(settings.database)
    processor = Processor(classifier, journal, lambda: settings)

    def _run(*paths: Path) -> list[FileOutcome]:
        return processor.process([prepare(p, settings, classifier.meta.input_size) for p in paths])

    yield _run
    journal.close()


def _rows(settings: Settings) -> list[tuple]:
    with sqlite3.connect(settings.database) as db:
        return db.execute("SELECT action, state, source, destination, reason FROM decisions").fetchall()


def _quarantined(settings: Settings, path: Path, run, reason: str) -> None:
    content = path.read_bytes()
    (outcome,) = run(path)
    assert outcome.fate == "quarantined", outcome
    assert not path.exists()
    dest = settings.quarantine_dir / path.name
    assert dest.read_bytes() == content
    ((action, state, source, destination, logged),) = _rows(settings)
    assert (action, state, Path(source), Path(destination)) == ("quarantined", "done", path, dest)
    assert logged.startswith(reason), logged


def test_zero_byte_file_is_quarantined(settings: Settings, run) -> None:
    path = settings.inbox / "empty.jpg"
    path.touch()
    _quarantined(settings, path, run, "empty")


def test_truncated_jpeg_is_quarantined(settings: Settings, run) -> None:
    buf = io.BytesIO()
    picture("sea", (400, 300)).save(buf, "JPEG")
    path = settings.inbox / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _quarantined(settings, path, run, "corrupt")


def test_text_named_jpg_is_quarantined(settings: Settings, run) -> None:
    path = settings.inbox / "notes.jpg"
    path.write_text("this is a shopping list, not a photo\n")
    _quarantined(settings, path, run, "not-an-image")


def _bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_quarantined_without_decoding(settings: Settings, run) -> None:
    path = settings.inbox / "bomb.png"
    path.write_bytes(_bomb_png(50_000, 50_000))
    assert path.stat().st_size < 200
    _quarantined(settings, path, run, "decompression-bomb")


def test_file_over_size_limit_is_quarantined(settings: Settings, classifier: Classifier) -> None:
    small = settings.model_copy(update={"max_file_mb": 0.001})
    path = write_photo(settings.inbox / "big.jpg", "sea", size=(300, 300))
    assert path.stat().st_size > 1100
    journal = Journal(settings.database)
    processor = Processor(classifier, journal, lambda: small)
    (outcome,) = processor.process([prepare(path, small, classifier.meta.input_size)])
    journal.close()
    assert outcome.fate == "quarantined" and outcome.reason.startswith("too-large")
    assert (settings.quarantine_dir / "big.jpg").exists()


@pytest.mark.parametrize(
    "fmt,ext", [("PNG", "png"), ("GIF", "gif"), ("TIFF", "tif"), ("WEBP", "webp"), ("BMP", "bmp")]
)
def test_every_pillow_format_is_classified(settings: Settings, run, fmt: str, ext: str) -> None:
    path = write_photo(settings.inbox / f"sea.{ext}", "sea", fmt=fmt)
    (outcome,) = run(path)
    assert outcome.fate == "moved" and outcome.entry.album == "sea", outcome
    assert (settings.library / "sea" / path.name).exists()


def _classified_as(run, path: Path, cls: str) -> None:
    (outcome,) = run(path)
    assert outcome.fate == "moved", outcome
    assert outcome.entry.label == cls, outcome.entry.probabilities


def test_sixteen_bit_png_is_scaled_not_clipped(settings: Settings, run) -> None:
    grey = np.full((48, 64), 230 * 257, dtype=np.uint16)  # bright: glacier-like if scaled right
    path = settings.inbox / "deep.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    _classified_as(run, path, "glacier")


def test_cmyk_jpeg_is_converted(settings: Settings, run) -> None:
    path = settings.inbox / "print.jpg"
    picture("forest").convert("CMYK").save(path, "JPEG")
    assert Image.open(path).mode == "CMYK"
    _classified_as(run, path, "forest")


def test_palette_png_with_transparency_is_converted(settings: Settings, run) -> None:
    path = settings.inbox / "palette.png"
    img = picture("sea").quantize(16)
    img.info["transparency"] = 0
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    _classified_as(run, path, "sea")


def test_animated_gif_uses_first_frame(settings: Settings, run) -> None:
    path = settings.inbox / "anim.gif"
    frames = [picture("forest"), picture("sea", seed=1), picture("sea", seed=2)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    _classified_as(run, path, "forest")


def test_broken_exif_is_ignored_not_fatal(settings: Settings, run) -> None:
    buf = io.BytesIO()
    picture("street").save(buf, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff garbage")
    path = settings.inbox / "exif.jpg"
    path.write_bytes(buf.getvalue())
    _classified_as(run, path, "street")


def test_exif_orientation_is_applied(settings: Settings) -> None:
    from cened.ml.imaging import decode

    # Left half forest green, right half sea blue; EXIF says "rotate 90° clockwise to view" (6).
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = COLOURS["forest"]
    arr[:, 40:] = COLOURS["sea"]
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    out = decode(buf.getvalue(), (40, 40))
    # Upright, the green half is on top and the blue half below.
    assert out[5, 20, 1] > 120 and out[35, 20, 2] > 150, (out[5, 20], out[35, 20])


def test_symlink_out_of_the_inbox_is_not_followed(settings: Settings, run, tmp_path: Path) -> None:
    outside = write_photo(tmp_path / "elsewhere" / "private.jpg", "sea")
    before = outside.read_bytes()
    link = settings.inbox / "link.jpg"
    link.symlink_to(outside)
    (outcome,) = run(link)
    assert outcome.fate == "skipped" and outcome.reason == "symlink"
    assert link.is_symlink() and outside.read_bytes() == before
    assert list(settings.library.rglob("*")) == []
    assert [(r[0], r[4]) for r in _rows(settings)] == [("skipped", "symlink")]
    run(link)  # noted once per file and reason, not at every rescan
    assert len(_rows(settings)) == 1


def test_directory_named_like_a_photo_is_left_alone(settings: Settings, run) -> None:
    from cened.watching import scan

    folder = settings.inbox / "x.jpg"
    inner = write_photo(folder / "inner.jpg", "forest")
    assert list(scan(settings.inbox)) == [inner]  # the folder itself is never a candidate
    (outcome,) = run(folder)
    assert outcome.fate == "skipped" and outcome.reason == "not-a-regular-file"
    assert folder.is_dir()
    _classified_as(run, inner, "forest")


@pytest.mark.parametrize(
    "name", [b"with spaces.jpg", b"new\nline.jpg", b"latin1-\xe9t\xe9.jpg", "ünïcödé 写真.jpg".encode()]
)
def test_awkward_file_names_round_trip(settings: Settings, run, name: bytes) -> None:
    path = Path(os.fsdecode(os.fsencode(settings.inbox) + b"/" + name))
    write_photo(path, "mountain")
    (outcome,) = run(path)
    assert outcome.fate == "moved"
    dest = settings.library / "mountain" / path.name
    assert os.path.exists(dest)
    with sqlite3.connect(settings.database) as db:
        source, destination = db.execute("SELECT source, destination FROM decisions").fetchone()
    assert path_from_db(source) == path and path_from_db(destination) == dest


def test_file_deleted_before_processing_is_logged_and_skipped(settings: Settings, run) -> None:
    path = write_photo(settings.inbox / "gone.jpg", "sea")
    path.unlink()
    (outcome,) = run(path)
    assert outcome.fate == "skipped" and outcome.reason == "vanished"
    assert [(r[0], r[4]) for r in _rows(settings)] == [("skipped", "vanished")]


def test_file_deleted_after_reading_fails_the_intent_cleanly(settings: Settings, classifier) -> None:
    path = write_photo(settings.inbox / "late.jpg", "sea")
    prepared = prepare(path, settings, classifier.meta.input_size)
    path.unlink()
    with Journal(settings.database) as journal:
        (outcome,) = Processor(classifier, journal, lambda: settings).process([prepared])
    assert outcome.fate == "failed" and outcome.reason == "vanished"
    assert [(r[0], r[1]) for r in _rows(settings)] == [("moved", "failed")]
    assert list(settings.library.rglob("*.jpg")) == []


def test_file_changing_while_read_is_retried(settings: Settings, classifier, monkeypatch) -> None:
    path = write_photo(settings.inbox / "growing.jpg", "sea")
    real_fdopen = os.fdopen

    def appending_fdopen(fd: int, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)
        with open(path, "ab") as writer:  # another program appends while we read
            writer.write(b"\0" * 100)
        return fh

    monkeypatch.setattr(os, "fdopen", appending_fdopen)
    prepared = prepare(path, settings, classifier.meta.input_size)
    assert prepared.verdict == Verdict.RETRY and prepared.pixels is None


def test_unreadable_file_is_quarantined(settings: Settings, run, classifier) -> None:
    """Root reads anything, so as root the read is done by a forked child that drops to nobody."""
    path = write_photo(settings.inbox / "secret.jpg", "sea")
    path.chmod(0)
    if os.geteuid() != 0:
        reason = prepare(path, settings, classifier.meta.input_size).reason
    else:
        base = Path(tempfile.mkdtemp(prefix="cened-perm-"))
        try:
            base.chmod(0o755)
            probe = base / "secret.jpg"
            probe.write_bytes(path.read_bytes())
            probe.chmod(0o600)
            reason = _as_nobody(lambda: prepare(probe, settings, classifier.meta.input_size).reason)
        finally:
            shutil.rmtree(base)
    assert reason == "unreadable"
    if os.geteuid() != 0:  # as root the daemon itself could read it; the probe above is the check
        (outcome,) = run(path)
        assert outcome.fate == "quarantined" and outcome.reason.startswith("unreadable")


def _as_nobody(fn) -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as fh:
        return fh.read().decode()


def _deep_photo(top: Path, data: bytes) -> Path:
    """A photo below folders whose path is longer than PATH_MAX, made through descriptors."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = top
    try:
        while len(os.fsencode(path)) <= 4200:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = below, path / name
        out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return path / "deep.jpg"


@pytest.mark.slow
def test_a_path_longer_than_path_max_gets_a_row_and_a_log_line(tmp_path: Path, settings: Settings) -> None:
    """It cannot be read or moved by its path: it stays, said once, and the daemon goes on."""
    buf = io.BytesIO()
    picture("sea").save(buf, "JPEG")
    deep = _deep_photo(settings.inbox, buf.getvalue())
    config = write_config(tmp_path / "cened.toml", settings)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("started", timeout=90)
        skipped = daemon.wait_for("skipped", timeout=30)
        assert skipped["file"] == str(deep) and "path-too-long" in skipped["reason"], skipped
        write_photo(settings.inbox / "after.jpg", "sea")
        daemon.wait_for("filed", timeout=30)
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT action, source, reason FROM decisions ORDER BY id").fetchall()
    assert rows[0][:2] == ("skipped", str(deep)) and rows[0][2].startswith("path-too-long"), rows
    assert [r[0] for r in rows] == ["skipped", "moved"], rows

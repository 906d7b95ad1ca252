"""No file can stop the daemon: whatever decoding one file raises becomes that file's outcome.

The corpus is made here: every format Pillow can write, in several modes,
intact, truncated, bit-flipped and with a fuzzed header, each under the
extensions the daemon takes.  Every file must end with a verdict, and a
poison file in a batch must not keep the others from being filed.
"""

from __future__ import annotations

import io
import random
import sqlite3
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from conftest import picture, write_photo
from daemon_helpers import RunningDaemon, files_under, wait_until
from PIL import Image, PngImagePlugin

from cened.config import Duplicates, NearDuplicates, Settings
from cened.journal import Journal
from cened.ml import imaging
from cened.ml.classifying import Classifier
from cened.pipeline import Fate, Processor, Verdict, prepare

MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK", "F")
#: Too slow to write at any size (a Python loop per pixel) or needing outside tools.
SKIP_WRITING = {"PDF", "EPS", "WMF", "BUFR", "GRIB", "HDF5"}


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS header whose FourCC Pillow has no decoder for: it raises NotImplementedError."""
    header = struct.pack("<3I", 0x1007, 64, 64) + bytes(12 + 44)
    header += struct.pack("<4I", 32, 0x4, int.from_bytes(b"XXXX", "little"), 0) + bytes(36)
    return b"DDS " + struct.pack("<I", 124) + header + bytes(64 * 64)


def _written_formats() -> Iterator[tuple[str, bytes]]:
    """Every format and mode Pillow can write, as a small picture."""
    Image.init()
    base = picture("sea", (48, 36), seed=5)
    for fmt in sorted(set(Image.SAVE) - SKIP_WRITING):
        for mode in MODES:
            im = base.convert(mode) if mode not in ("I;16", "F") else base.convert("L").convert(mode)
            buf = io.BytesIO()
            try:
                im.save(buf, fmt)
            except Exception:  # noqa: BLE001 - this format cannot hold this mode
                continue
            yield f"{fmt}-{mode.replace(';', '')}", buf.getvalue()


def _damaged(data: bytes, rnd: random.Random) -> Iterator[tuple[str, bytes]]:
    yield "intact", data
    for cut in (0.1, 0.5, 0.9):
        yield f"cut{int(cut * 100)}", data[: max(1, int(len(data) * cut))]
    for trial in range(3):
        flipped = bytearray(data)
        for _ in range(1 + trial * 3):
            i = rnd.randrange(len(flipped))
            flipped[i] ^= 1 << rnd.randrange(8)
        yield f"flip{trial}", bytes(flipped)
    for trial in range(3):
        fuzzed = bytearray(data)
        for _ in range(4):
            i = rnd.randrange(min(64, len(fuzzed)))
            fuzzed[i] = rnd.choice((0, 0xFF, 0x7F, 0x80, rnd.randrange(256)))
        yield f"fuzz{trial}", bytes(fuzzed)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes]]:
    rnd = random.Random(17)
    files = [("dds-unknown-pixel-format", dds_with_unknown_pixel_format())]
    for name, data in _written_formats():
        files += [(f"{name}-{how}", damaged) for how, damaged in _damaged(data, rnd)]
    return files


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged TIFF tags
def test_every_file_of_the_corpus_gets_a_verdict(
    settings: Settings, classifier: Classifier, corpus: list[tuple[str, bytes]]
) -> None:
    """Each file is written under every extension in turn; intact ones under all of them."""
    extensions = settings.extensions
    paths: list[Path] = []
    for i, (name, data) in enumerate(corpus):
        names = extensions if name.endswith("-intact") else [extensions[i % len(extensions)]]
        for ext in names:
            # A stem of its own for each: one stem as .jpg and .dng would be a RAW+JPEG pair.
            path = settings.inbox / f"{i:04d}-{name}-{ext[1:]}{ext}"
            path.write_bytes(data)
            paths.append(path)
    assert {p.suffix for p in paths} == set(extensions)

    size = classifier.meta.input_size
    verdicts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    prepared = []
    for path in paths:
        prep = prepare(path, settings, size)  # must not raise, whatever the file is
        assert prep.verdict in (Verdict.DECODED, Verdict.REJECTED), (path.name, prep)
        if prep.verdict == Verdict.REJECTED:
            assert prep.reason in set(imaging.Reason), (path.name, prep.reason)
            reasons[prep.reason] += 1
        else:
            assert prep.pixels is not None and prep.pixels.shape == (*size, 3)
        verdicts[prep.verdict] += 1
        prepared.append(prep)
    # The corpus must have exercised both outcomes and the ways of being refused.
    assert verdicts[Verdict.DECODED] > 300 and verdicts[Verdict.REJECTED] > 300, verdicts
    assert {"corrupt", "not-an-image", "unsupported"} <= set(reasons), reasons

    # ... and every one of them is filed or quarantined by the real filing code (the corpus
    # writes the same bytes under every extension: copies, exact or near, which are not what this is about).
    keep = settings.model_copy(update={"duplicates": Duplicates.KEEP, "near_duplicates": NearDuplicates.KEEP})
    with Journal(settings.database) as journal:
        processor = Processor(classifier, journal, lambda: keep)
        outcomes = [o for i in range(0, len(prepared), 64) for o in processor.process(prepared[i : i + 64])]
    assert len(outcomes) == len(paths)
    assert {o.fate for o in outcomes} <= {Fate.MOVED, Fate.REVIEW, Fate.QUARANTINED}, Counter(
        o.fate for o in outcomes
    )
    assert files_under(settings.inbox) == []


def test_dds_with_unknown_pixel_format_is_quarantined_not_raised(settings: Settings, classifier) -> None:
    path = settings.inbox / "x.jpg"
    path.write_bytes(dds_with_unknown_pixel_format())
    with pytest.raises(NotImplementedError):
        Image.open(path)  # what used to escape and stop the daemon
    prep = prepare(path, settings, classifier.meta.input_size)
    assert (prep.verdict, prep.reason) == (Verdict.REJECTED, "unsupported"), prep
    assert "Unimplemented pixel format" in (prep.detail or "")


def _raise_for_odd_sizes(real_load):
    """Pillow's PNG load, made to fail the way a decoder bug would, for pictures 61 pixels wide."""

    def load(self):
        if self.size[0] == 61:
            raise TypeError("a decoder bug nobody catches")
        return real_load(self)

    return load


def test_any_exception_from_a_decoder_rejects_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        PngImagePlugin.PngImageFile, "load", _raise_for_odd_sizes(PngImagePlugin.PngImageFile.load)
    )
    buf = io.BytesIO()
    picture("forest", (61, 40)).save(buf, "PNG")
    with pytest.raises(imaging.Rejected) as caught:
        imaging.decode(buf.getvalue(), (32, 32))
    assert caught.value.reason == "corrupt" and "TypeError" in caught.value.detail


def test_a_failure_outside_decoding_is_the_files_outcome_not_a_retry(
    settings: Settings, classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried, it would fail alike forever, a traceback every few seconds and never an outcome."""
    import cened.pipeline as pipeline

    path = write_photo(settings.inbox / "a.jpg", "sea")

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug of ours, not the file's")

    monkeypatch.setattr(pipeline, "_read_and_decode", broken)
    with structlog.testing.capture_logs() as logs:
        prep = prepare(path, settings, classifier.meta.input_size)
    assert (prep.verdict, prep.reason) == (Verdict.REJECTED, "decoder-failed")
    assert "RuntimeError" in (prep.detail or "") and prep.sha256 is not None
    assert [e["event"] for e in logs] == ["prepare-failed"]


def _ftex() -> bytes:
    """A texture of Pillow's FTEX plugin, which closes the file it was given (so a seek on it fails)."""
    pixels = bytes(range(48)) * 4  # 8 x 8 RGB
    header = b"FTEX" + struct.pack("<i2i2i2i", 1, 8, 8, 1, 1, 1, 36)
    return header + struct.pack("<i", len(pixels)) + pixels


@pytest.mark.parametrize("name", ["texture.jpg", "texture.heic", "texture.dng"])
def test_an_ftex_file_named_as_a_photo_is_quarantined_once(name: str, settings: Settings, filing) -> None:
    file, journal = filing
    path = settings.inbox / name
    path.write_bytes(_ftex())
    (outcome,) = file(path)
    assert outcome.fate == Fate.QUARANTINED, outcome
    assert (settings.quarantine_dir / name).read_bytes() == _ftex()
    assert [r.action for r in journal.history()] == ["quarantined"]


def test_poison_files_in_a_batch_do_not_stop_the_others(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch, two poison files: the good photos are filed, the poison quarantined, the daemon runs on."""
    monkeypatch.setattr(
        PngImagePlugin.PngImageFile, "load", _raise_for_odd_sizes(PngImagePlugin.PngImageFile.load)
    )
    settings = settings.model_copy(
        update={"batch_size": 8, "batch_max_wait_ms": 500, "unfinished_grace_s": 0}
    )
    inbox = settings.inbox
    (inbox / "dds.jpg").write_bytes(dds_with_unknown_pixel_format())
    write_photo(inbox / "bug.png", "forest", fmt="PNG", size=(61, 40))
    good = [write_photo(inbox / f"good{i}.jpg", "sea", seed=i) for i in range(5)]
    with RunningDaemon(settings) as daemon:
        assert wait_until(lambda: not files_under(inbox), timeout=30), files_under(inbox)
        assert daemon.filed == 7
        # Still serving: a photo dropped afterwards is filed too.
        later = write_photo(inbox / "later.jpg", "forest")
        assert wait_until(lambda: not later.exists(), timeout=30)
    assert sorted(p.name for p in files_under(settings.library / "sea")) == sorted(p.name for p in good)
    assert (settings.library / "forest" / "later.jpg").exists()
    with sqlite3.connect(settings.database) as db:
        rows = dict(db.execute("SELECT destination, reason FROM decisions WHERE action = 'quarantined'"))
    reasons = {Path(dest).name: reason for dest, reason in rows.items()}
    assert reasons["dds.jpg"].startswith("unsupported: NotImplementedError: Unimplemented pixel format")
    assert reasons["bug.png"].startswith("corrupt: TypeError: a decoder bug")


def test_an_unsupported_format_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, "ICO")
    with pytest.raises(imaging.Rejected) as caught:
        imaging.decode(buf.getvalue(), (32, 32))
    assert caught.value.reason == "unsupported" and "ICO" in caught.value.detail

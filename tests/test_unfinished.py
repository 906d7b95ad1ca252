"""Photos still being written are never taken: they are left to be finished, then filed once.

Real writers in threads write a real JPEG in chunks into a running daemon's
inbox, with pauses much longer than ``stable_seconds``: one keeps the file
open throughout, one opens and closes it for every chunk (as ``dd
conv=notrunc`` does).  The daemon sees the partial file on the way, and must
hand it back each time rather than quarantine a fragment.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import picture, write_config
from daemon_helpers import RunningDaemon, files_under, run_cli, wait_until
from test_watching import FakeClock

from cened.config import Settings
from cened.pipeline import Fate, Pending, Verdict, prepare, unless_unfinished
from cened.watching import StabilityTracker


def _photo(seed: int = 11) -> bytes:
    buf = io.BytesIO()
    picture("sea", (640, 480), seed=seed).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _chunks(data: bytes, n: int) -> list[tuple[int, bytes]]:
    step = -(-len(data) // n)
    return [(i, data[i : i + step]) for i in range(0, len(data), step)]


def write_holding_open(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """One open, a pause after every chunk, one close at the end."""
    with open(path, "wb") as fh:
        for _, chunk in _chunks(data, chunks):
            fh.write(chunk)
            fh.flush()
            time.sleep(pause)


def write_reopening(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """Open, write at the offset, close, for every chunk: ``dd conv=notrunc seek=…`` in a loop."""
    for offset, chunk in _chunks(data, chunks):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, chunk, offset)
        finally:
            os.close(fd)
        time.sleep(pause)


def _filed_once(settings: Settings, name: str, data: bytes) -> None:
    """The whole photo is in its album, once; no fragment of it anywhere else."""
    assert [p.relative_to(settings.library) for p in files_under(settings.library)] == [Path("sea") / name]
    assert (settings.library / "sea" / name).read_bytes() == data
    assert files_under(settings.inbox) == []
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT action, state, sha256 FROM decisions").fetchall()
    assert rows == [("moved", "done", hashlib.sha256(data).hexdigest())]


def _run_writer(settings: Settings, writer, name: str, chunks: int, pause: float) -> dict[str, int]:
    data = _photo()
    path = settings.inbox / name
    with RunningDaemon(settings) as daemon:
        thread = threading.Thread(target=writer, args=(path, data, chunks, pause))
        thread.start()
        thread.join(timeout=60)
        assert wait_until(lambda: not path.exists(), timeout=30), "the finished photo was never filed"
        time.sleep(settings.stable_seconds + 0.5)  # a fragment filed twice would show by now
        counters = dict(daemon.counters)
    _filed_once(settings, name, data)
    return counters


@pytest.mark.slow
def test_a_writer_that_pauses_with_the_file_open_gets_its_photo_filed_whole(settings: Settings) -> None:
    counters = _run_writer(settings, write_holding_open, "slow.jpg", chunks=4, pause=2.0)
    # The daemon did take the cut-short file during a pause, and handed it back.
    assert counters.get(Fate.RETRY, 0) >= 1, counters
    assert counters.get(Fate.QUARANTINED, 0) == 0 and counters.get(Fate.MOVED) == 1, counters


@pytest.mark.slow
def test_a_writer_that_reopens_for_each_chunk_gets_its_photo_filed_whole(settings: Settings) -> None:
    counters = _run_writer(settings, write_reopening, "dd.jpg", chunks=8, pause=0.5)
    assert counters.get(Fate.RETRY, 0) >= 1, counters
    assert counters.get(Fate.QUARANTINED, 0) == 0 and counters.get(Fate.MOVED) == 1, counters


def test_a_cut_short_file_is_held_while_young_and_refused_once_old(settings: Settings, classifier) -> None:
    data = _photo()
    path = settings.inbox / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    prep = prepare(path, settings, classifier.meta.input_size)
    assert (prep.verdict, prep.reason) == (Verdict.REJECTED, "corrupt")
    mtime = path.stat().st_mtime
    held = unless_unfinished(prep, grace_s=10, now=mtime + 3)
    assert (held.verdict, held.reason) == (Verdict.RETRY, Pending.UNFINISHED)
    assert unless_unfinished(prep, grace_s=10, now=mtime + 11) is prep
    # What more bytes cannot change is refused at once, however young.
    path.write_bytes(b"")
    empty = prepare(path, settings, classifier.meta.input_size)
    assert unless_unfinished(empty, grace_s=10, now=time.time()).verdict == Verdict.RETRY
    path.write_bytes(b"x")
    too_large = prepare(path, settings.model_copy(update={"max_file_mb": 1e-9}), (32, 32))
    assert too_large.reason == "too-large" and unless_unfinished(too_large, 10, time.time()) is too_large


def test_a_second_close_with_other_content_is_not_the_end(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(stable_seconds=5.0, clock=clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"first chunk")
    tracker.touch(path, closed=True)
    with open(path, "ab") as fh:  # reopened, written and closed again before the tracker looked
        fh.write(b" second chunk")
    tracker.touch(path, closed=True)
    assert tracker.ready(10) == []  # this writer's closes mean nothing: wait for it to hold still
    clock.now += 5.0
    assert tracker.ready(10) == [path]


def test_a_path_handed_back_unfinished_waits_to_hold_still(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(stable_seconds=5.0, clock=clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"first chunk")
    tracker.touch(path, closed=True)
    assert tracker.ready(10) == [path]  # a close, with nothing before it: taken at once
    tracker.unfinished(path)  # ... but it read as cut short
    with open(path, "ab") as fh:
        fh.write(b" second chunk")
    tracker.touch(path, closed=True)
    assert tracker.ready(10) == []
    clock.now += 4.0
    assert tracker.ready(10) == []
    clock.now += 1.0
    assert tracker.ready(10) == [path]


@pytest.mark.slow
def test_writers_that_pause_longer_than_ten_seconds_get_their_photos_filed_whole(settings: Settings) -> None:
    """Pauses well past the old 10 s grace, on the default settings: one whole photo each, no fragment."""
    data = {"open.jpg": _photo(1), "dd.jpg": _photo(2)}
    writers = {"open.jpg": write_holding_open, "dd.jpg": write_reopening}
    with RunningDaemon(settings) as daemon:
        threads = [
            threading.Thread(target=writer, args=(settings.inbox / name, data[name], 3, 12.0))
            for name, writer in writers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert wait_until(lambda: files_under(settings.inbox) == [], timeout=30), "never filed"
        counters = dict(daemon.counters)
    assert counters.get(Fate.QUARANTINED, 0) == 0 and counters.get(Fate.MOVED) == 2, counters
    assert sorted(p.name for p in files_under(settings.library)) == ["dd.jpg", "open.jpg"]
    for name in writers:
        assert (settings.library / "sea" / name).read_bytes() == data[name]


@pytest.mark.slow
def test_a_quarantined_file_its_writer_goes_on_writing_is_read_again_and_filed(settings: Settings) -> None:
    """A pause longer than the grace: quarantined, then written to the end there; filed whole all the same."""
    settings = settings.model_copy(update={"unfinished_grace_s": 1.0})
    data = _photo()
    path = settings.inbox / "slow.jpg"
    with RunningDaemon(settings) as daemon:
        write_holding_open(path, data, chunks=3, pause=8.0)  # longer than a recheck (5 s) and the grace
        assert wait_until(lambda: (settings.library / "sea" / "slow.jpg").exists(), timeout=60)
        time.sleep(settings.stable_seconds + 2.5)  # a look at the quarantine more: nothing left there
        counters = dict(daemon.counters)
    assert counters.get(Fate.QUARANTINED, 0) >= 1, counters  # it was quarantined on the way
    assert files_under(settings.quarantine_dir) == [] and files_under(settings.inbox) == []
    assert (settings.library / "sea" / "slow.jpg").read_bytes() == data
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT action, state, sha256 FROM decisions ORDER BY id").fetchall()
    assert rows[-1] == ("moved", "done", hashlib.sha256(data).hexdigest()), rows
    assert {a for a, _, _ in rows[:-1]} == {"quarantined", "returned"}, rows


def test_doctor_finds_a_quarantined_file_that_changed_and_puts_it_back(
    tmp_path: Path, settings: Settings, filing
) -> None:
    file, _journal = filing
    data = _photo()
    path = settings.inbox / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    (outcome,) = file(path)
    assert outcome.fate == Fate.QUARANTINED
    quarantined = settings.quarantine_dir / "cut.jpg"
    with open(quarantined, "ab") as fh:  # its writer had not finished
        fh.write(data[len(data) // 2 :])
    config = write_config(tmp_path / "cened.toml", settings)
    found = run_cli("doctor", config=config)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"changed since it was quarantined: #{outcome.entry.id} {quarantined}" in found.stdout
    fixed = run_cli("doctor", "--fix", config=config)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert path.read_bytes() == data and not quarantined.exists()
    assert run_cli("doctor", config=config).stdout.strip() == "all consistent"

"""Watching the inbox: stability, deduplication, ignored names, rescans and back-pressure.

The daemon runs in a thread of the test process here (signals are only
installed from the main thread), with the real watchdog observer on a real
temp inbox.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import DaemonProcess, RunningDaemon, files_under, wait_until
from watchdog.events import FileSystemEvent

from cened.config import Settings
from cened.watching import InboxPump, InboxWatcher, StabilityTracker, is_candidate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tracker_waits_until_size_and_mtime_hold(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(stable_seconds=2.0, clock=clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"first half")
    tracker.touch(path)
    assert tracker.ready(10) == []
    clock.now += 1.5
    with open(path, "ab") as fh:
        fh.write(b" second half")
    assert tracker.ready(10) == []  # it changed: the clock starts again
    clock.now += 1.9
    assert tracker.ready(10) == []
    clock.now += 0.2
    assert tracker.ready(10) == [path]
    tracker.touch(path)  # events for a path already handed out are ignored
    assert tracker.ready(10) == [] and len(tracker) == 0


def test_close_write_releases_without_waiting(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(stable_seconds=60.0, clock=clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"done")
    tracker.touch(path, closed=True)
    assert tracker.ready(10) == [path]


def test_settled_file_is_ignored_until_it_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(stable_seconds=0.0, clock=clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    tracker.touch(path)
    assert tracker.ready(10) == [path]
    st = path.stat()
    tracker.done(path, keep=(st.st_size, st.st_mtime_ns))
    tracker.touch(path)
    assert tracker.ready(10) == []
    path.write_bytes(b"changed")
    tracker.touch(path)
    assert tracker.ready(10) == [path]


def test_ready_respects_the_limit_and_drops_vanished(tmp_path: Path) -> None:
    tracker = StabilityTracker(stable_seconds=0.0, clock=FakeClock())
    paths = [tmp_path / f"{i}.jpg" for i in range(5)]
    for p in paths:
        p.write_bytes(b"x")
        tracker.touch(p, old=True)
    paths[0].unlink()
    first = tracker.ready(2)
    assert first == paths[1:3]
    assert tracker.ready(10) == paths[3:]


@pytest.mark.parametrize(
    "name,ok",
    [
        ("a.jpg", True),
        ("A.JPEG", True),
        ("sub/b.png", True),
        (".hidden.jpg", False),
        (".sync/c.jpg", False),
        ("c.jpg.part", False),
        ("d.jpg.crdownload", False),
        ("e.jpg~", False),
        ("notes.txt", False),
        ("f.tmp", False),
    ],
)
def test_candidate_names(settings: Settings, name: str, ok: bool) -> None:
    path = settings.inbox / name
    assert is_candidate(path, settings.inbox, settings.extensions, settings.ignore_suffixes) is ok


def test_one_copy_is_released_once_however_many_events(tmp_path: Path) -> None:
    tracker = StabilityTracker(stable_seconds=0.3)
    events: list[Path] = []

    def on_path(path: Path, closed: bool) -> None:
        events.append(path)
        tracker.touch(path, closed=closed)

    watcher = InboxWatcher(tmp_path, on_path, lambda: None)
    watcher.start()
    try:
        target = tmp_path / "photo.jpg"
        with open(target, "wb") as fh:
            for _ in range(20):
                fh.write(b"x" * 1000)
                fh.flush()
        released: list[Path] = []
        assert wait_until(lambda: bool(released.extend(tracker.ready(10)) or released), timeout=10)
        time.sleep(0.5)
        released += tracker.ready(10)
    finally:
        watcher.stop()
    assert len(events) >= 3  # created, modified…, closed: several events for one copy
    assert released == [target]


@pytest.mark.slow
def test_new_and_moved_in_folders_are_watched_but_our_own_reads_are_not_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cened import watching

    delivered: list[str] = []  # every event watchdog hands over, before the handler looks at it
    original = watching._Handler.on_any_event

    def spy(self: watching._Handler, event: FileSystemEvent) -> None:
        delivered.append(type(event).__name__)
        original(self, event)

    monkeypatch.setattr(watching._Handler, "on_any_event", spy)
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    events: list[tuple[str, bool]] = []
    watcher = InboxWatcher(inbox, lambda path, closed: events.append((path.name, closed)), lambda: None)
    watcher.start()
    try:
        (inbox / "trip").mkdir()
        time.sleep(0.3)  # the watch on a new folder is added when its creation is seen
        (inbox / "trip" / "a.jpg").write_bytes(b"x" * 100)
        (outside / "album").mkdir(parents=True)
        (outside / "album" / "b.jpg").write_bytes(b"y" * 100)
        (outside / "album").rename(inbox / "album")
        time.sleep(0.3)
        (inbox / "album" / "c.jpg").write_bytes(b"z" * 100)
        assert wait_until(lambda: {("a.jpg", True), ("c.jpg", True)} <= set(events), timeout=10), events
        time.sleep(0.3)
        delivered.clear()
        (inbox / "trip" / "a.jpg").read_bytes()  # what prepare() does: open, read, close
        (inbox / "trip" / "a.jpg").unlink()  # what a move does to the inbox
        time.sleep(0.5)
        assert delivered == []
        with open(inbox / "album" / "c.jpg", "ab") as fh:
            fh.write(b"more")
        assert wait_until(lambda: ("c.jpg", True) in events[-1:], timeout=10), events
    finally:
        watcher.stop()


@pytest.mark.slow
def test_temporaries_hidden_and_foreign_files_stay_put(settings: Settings) -> None:
    with RunningDaemon(settings):
        keep = [
            write_photo(settings.inbox / ".hidden.jpg", "sea"),
            write_photo(settings.inbox / "download.jpg.part", "sea"),
            write_photo(settings.inbox / ".thumbs" / "t.jpg", "sea"),
        ]
        (settings.inbox / "notes.txt").write_text("not a photo")
        take = write_photo(settings.inbox / "real.jpg", "sea")
        assert wait_until(lambda: not take.exists(), timeout=20)
        time.sleep(0.5)
    assert all(p.exists() for p in keep) and (settings.inbox / "notes.txt").exists()
    assert [p.name for p in files_under(settings.library)] == ["real.jpg"]


MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def inotify_queue_limit() -> Callable[[int], AbstractContextManager[None]]:
    """A context manager that lowers the kernel's inotify queue length, and always puts it back.

    The kernel reads the limit when an inotify instance is created, so an
    instance made meanwhile keeps its short queue after the limit is restored.
    The setting is machine-wide: keep the window short.
    """
    try:
        original = MAX_QUEUED_EVENTS.read_text()
        MAX_QUEUED_EVENTS.write_text(original)  # can we change it at all?
    except OSError as exc:
        pytest.skip(
            f"cannot write {MAX_QUEUED_EVENTS} ({exc.strerror}): a real inotify queue overflow "
            "needs root and a writable /proc"
        )

    @contextlib.contextmanager
    def lowered(limit: int) -> Iterator[None]:
        MAX_QUEUED_EVENTS.write_text(f"{limit}\n")
        try:
            yield
        finally:
            MAX_QUEUED_EVENTS.write_text(original)

    return lowered


def _has_inotify_instance(pid: int) -> bool:
    with contextlib.suppress(OSError):  # the process or the descriptor went away meanwhile
        return any(os.readlink(fd) == "anon_inode:inotify" for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in "tT" for state in states)


@pytest.mark.slow
@pytest.mark.parametrize("log_level", ["info", "error"])
def test_a_real_inotify_queue_overflow_is_recovered_by_a_rescan(
    tmp_path: Path,
    settings: Settings,
    inotify_queue_limit: Callable[[int], AbstractContextManager[None]],
    log_level: str,
) -> None:
    """The kernel drops the events it cannot queue and says so; the daemon must rescan and find every photo.

    A real ``cened run`` gets an inotify queue of 16 events and is stopped
    (SIGSTOP) while 100 photos are renamed into its inbox, so the kernel keeps
    16 events and reports IN_Q_OVERFLOW.  The start-up scan is over and the
    periodic one is off: only the overflow rescan can find the rest.  At
    log_level "error" too, which must not silence the warning it hangs on.
    """
    staging = tmp_path / "staging"  # on the inbox's filesystem: each rename is one IN_MOVED_TO
    photos = {f"{i:03d}.jpg": CLASSES[i % len(CLASSES)] for i in range(101)}
    for i, (name, cls) in enumerate(photos.items()):
        write_photo(staging / name, cls, seed=i)
    config = write_config(tmp_path / "cened.toml", settings, rescan_interval_s=0, log_level=log_level)
    with inotify_queue_limit(16):
        daemon = DaemonProcess(config)
        # Put the machine's limit back as soon as the daemon has made its inotify instance.
        wait_until(lambda: daemon.proc.poll() is not None or _has_inotify_instance(daemon.proc.pid), 90, 0.01)
    first, *flood = photos
    try:
        # Once a photo is filed, the daemon is past its start-up scan (and "started" may not be logged).
        (staging / first).rename(settings.inbox / first)
        assert wait_until(lambda: (settings.library / photos[first] / first).exists(), timeout=90)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            assert wait_until(lambda: _all_threads_stopped(daemon.proc.pid), timeout=10)
            for name in flood:
                (staging / name).rename(settings.inbox / name)
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        emptied = wait_until(lambda: not files_under(settings.inbox), timeout=60)
    finally:
        assert daemon.stop() == 0
    overflow = [i for i, e in enumerate(daemon.events) if "overflowed" in str(e.get("event"))]
    # Watchdog before 7.1 drops IN_Q_OVERFLOW without a word; then nothing rescans either.
    assert overflow, "no inotify queue overflow was reported"
    assert emptied, files_under(settings.inbox)
    assert sorted(files_under(settings.library)) == sorted(
        settings.library / cls / name for name, cls in photos.items()
    )
    if log_level == "info":  # the rescan found what the lost events did not say
        scans = [e["candidates"] for e in daemon.events[overflow[0] :] if e.get("event") == "scanned"]
        assert scans and scans[0] > 16, scans


@pytest.mark.slow
def test_periodic_rescan_is_a_safety_net(settings: Settings, monkeypatch) -> None:
    monkeypatch.setattr(InboxPump, "_on_event", lambda self, path, closed: None)
    with RunningDaemon(settings.model_copy(update={"rescan_interval_s": 1.0})):
        photo = write_photo(settings.inbox / "missed.jpg", "sea")
        assert wait_until(lambda: not photo.exists(), timeout=20)


class PeakQueue(queue.Queue):
    """A queue that remembers the most items it ever held."""

    peak = 0

    def _put(self, item: object) -> None:
        super()._put(item)
        self.peak = max(self.peak, self._qsize())


@pytest.mark.slow
def test_backlog_never_overfills_the_queue(settings: Settings) -> None:
    for i in range(150):
        write_photo(settings.inbox / f"{i:03d}.jpg", "sea", size=(32, 32), seed=i)
    runner = RunningDaemon(settings.model_copy(update={"queue_max": 8, "batch_size": 4}))
    runner.daemon.paths = paths = PeakQueue(maxsize=8)
    with runner:
        assert wait_until(lambda: not files_under(settings.inbox), timeout=120)
    # The whole backlog went through a queue of 8 (all 150 were known to the tracker at once).
    assert paths.peak == 8
    assert len(files_under(settings.library)) == 150


def test_a_burst_into_an_idle_daemon_starts_with_one_model_call(settings: Settings) -> None:
    """The first batch is cut at model_batch_size, so its photos are filed early; the rest are full."""
    for i in range(40):
        write_photo(settings.inbox / f"{i:02d}.jpg", "sea", size=(32, 32), seed=i)
    with RunningDaemon(settings.model_copy(update={"batch_size": 16, "model_batch_size": 4})):
        assert wait_until(lambda: not files_under(settings.inbox), timeout=60)
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT batch_id, count(*) FROM decisions GROUP BY batch_id ORDER BY min(id)")
        sizes = [n for _, n in rows.fetchall()]
    assert sum(sizes) == 40 and sizes[0] <= 4 and max(sizes) > 4, sizes


def test_a_lone_photo_for_an_idle_model_does_not_wait_for_company(settings: Settings) -> None:
    """batch_max_wait_ms only holds batches formed while every model copy is busy."""
    patient = settings.model_copy(update={"batch_max_wait_ms": 20_000, "model_batch_size": 4})
    with RunningDaemon(patient):
        photo = write_photo(settings.inbox / "lone.jpg", "sea")
        # Filed long before the 20 s a batch would wait for three more photos.
        assert wait_until(lambda: not photo.exists(), timeout=10)
    assert files_under(settings.library) == [settings.library / "sea" / "lone.jpg"]


@pytest.mark.slow
def test_a_stop_is_not_held_up_by_a_batch_waiting_to_fill(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """With the only model copy busy, a new batch waits batch_max_wait_ms for company; SIGTERM must not."""
    import threading

    from cened.pipeline import Processor

    busy, release = threading.Event(), threading.Event()
    score = Processor.score

    def slow(self: Processor, batch: list) -> object:
        busy.set()
        release.wait(30)
        return score(self, batch)

    monkeypatch.setattr(Processor, "score", slow)
    patient = settings.model_copy(
        update={"batch_max_wait_ms": 30_000, "model_workers": 1, "model_batch_size": 1, "batch_size": 8}
    )
    runner = RunningDaemon(patient)
    with runner as daemon:
        first = write_photo(settings.inbox / "first.jpg", "sea")
        assert busy.wait(30)  # the one copy is busy: the next batch may wait to fill
        write_photo(settings.inbox / "second.jpg", "sea")
        time.sleep(1.0)  # the collector is now waiting for six more
        daemon.stop()
        release.set()
        started = time.monotonic()
        runner.thread.join(timeout=20)
        assert not runner.thread.is_alive() and time.monotonic() - started < 10
    assert not first.exists()  # the batch already read was finished


def test_the_gil_switch_interval_is_short_while_serving_and_restored_after(settings: Settings) -> None:
    """Set for the model copies' sake (see GIL_SWITCH_INTERVAL_S); an embedding process gets its own back."""
    import sys

    from cened.daemon import GIL_SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    assert before != GIL_SWITCH_INTERVAL_S
    with RunningDaemon(settings):
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {result.stderr.decode().strip()}")


@pytest.mark.slow
def test_full_disk_keeps_photos_in_the_inbox_and_retries_with_backoff(
    settings: Settings, tmp_path: Path
) -> None:
    library = tmp_path / "small-disk"
    _mount_tmpfs(library, "48k")
    try:
        tight = settings.model_copy(update={"library": library, "retry_max_s": 2.0})
        photos = [
            write_photo(settings.inbox / f"{i}.png", "sea", fmt="PNG", size=(200, 150), seed=i)
            for i in range(4)
        ]
        assert sum(p.stat().st_size for p in photos) > 48 * 1024
        with RunningDaemon(tight) as daemon:
            time.sleep(4.0)
            waiting = [p for p in photos if p.exists()]
            assert waiting, "the small disk should have filled up"
            failures = daemon.counters.get("retry", 0)
            # Backoff: a handful of attempts per photo in 4 s, not a busy loop.
            assert 0 < failures <= 4 * len(waiting), failures
            subprocess.run(["mount", "-o", "remount,size=4m", str(library)], check=True)
            assert wait_until(lambda: not any(p.exists() for p in photos), timeout=20)
        assert len(files_under(library / "sea")) == 4
    finally:
        subprocess.run(["umount", "-l", str(library)], check=False)


@pytest.mark.slow
def test_a_full_disk_leaves_one_failed_row_and_one_warning_per_photo(
    settings: Settings, tmp_path: Path
) -> None:
    """Retries of the same failure are one episode: one row and one warning, not one per try."""
    from collections import Counter

    import structlog

    library = tmp_path / "small-disk"
    _mount_tmpfs(library, "48k")
    try:
        tight = settings.model_copy(update={"library": library, "retry_max_s": 1.0})
        photos = [
            write_photo(settings.inbox / f"{i}.png", "sea", fmt="PNG", size=(200, 150), seed=i)
            for i in range(4)
        ]
        with structlog.testing.capture_logs() as logs, RunningDaemon(tight) as daemon:
            # Every photo that does not fit is tried several times (a try a second at most).
            assert wait_until(lambda: daemon.counters.get("retry", 0) >= 8, timeout=20)
            waiting = [p for p in photos if p.exists()]
            assert waiting, "the small disk should have filled up"
            with sqlite3.connect(settings.database) as db:
                failed = Counter(
                    source for (source,) in db.execute("SELECT source FROM decisions WHERE state = 'failed'")
                )
            assert failed == Counter(str(p) for p in waiting), failed
            warned = Counter(
                e["file"] for e in logs if e["event"] == "not-moved" and e["log_level"] == "warning"
            )
            assert warned == Counter(str(p) for p in waiting), warned
            subprocess.run(["mount", "-o", "remount,size=4m", str(library)], check=True)
            assert wait_until(lambda: not any(p.exists() for p in photos), timeout=20)
        with sqlite3.connect(settings.database) as db:
            rows = db.execute("SELECT source, state FROM decisions ORDER BY id").fetchall()
        assert Counter(state for _, state in rows) == {"done": 4, "failed": len(waiting)}
        assert len(files_under(library / "sea")) == 4
    finally:
        subprocess.run(["umount", "-l", str(library)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "moved-away"])
def test_an_inbox_removed_and_made_again_is_watched_again_within_seconds(
    settings: Settings, tmp_path: Path, how: str
) -> None:
    """``rm -rf inbox; mkdir inbox``, or ``mv``: the watch went with the old folder (rescans: 300 s)."""
    import shutil

    import structlog

    with structlog.testing.capture_logs() as logs, RunningDaemon(settings) as daemon:
        first = write_photo(settings.inbox / "before.jpg", "sea")
        assert wait_until(lambda: not first.exists(), timeout=20)
        if how == "removed":
            shutil.rmtree(settings.inbox)  # the new folder often gets the old one's inode number
        else:
            settings.inbox.rename(tmp_path / "old-inbox")  # the old watch lives on, on the old folder
        settings.inbox.mkdir()
        early = write_photo(settings.inbox / "early.jpg", "forest")  # before the watch is back: the rescan
        assert wait_until(lambda: any(e["event"] == "inbox-replaced" for e in logs), timeout=10)
        assert wait_until(lambda: not early.exists(), timeout=10)
        late = write_photo(settings.inbox / "late.jpg", "glacier")  # after: the new watch's events
        assert wait_until(lambda: not late.exists(), timeout=10)
        assert daemon.settings().rescan_interval_s == 300  # neither came from the periodic rescan
    (warning,) = [e for e in logs if e["event"] == "inbox-replaced"]
    assert warning["log_level"] == "warning"
    assert sorted(p.name for p in files_under(settings.library)) == ["before.jpg", "early.jpg", "late.jpg"]

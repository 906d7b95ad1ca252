"""The long-running service: it wires one thread of each kind, and owns their start and stop.

* the **pump** (cened.watching.InboxPump) watches the inbox and releases
  settled files from the tracker into the path queue;
* the **collector** (cened.batching.Collector) forms micro-batches, has them
  read by the decode pool and scored by a scorer thread per model copy;
* the **main thread** takes the scored batches in the order they were
  formed, and is also the only place that talks to systemd's watchdog: it
  waits for each batch's scores without pinging, so a stuck model call stops
  the pings and gets the service restarted;
* the **filer** (cened.batching.Filer) journals and moves each scored batch
  while the model works on the next one; the main thread waits for it before
  handing over another batch, without pinging, so a filer stuck on a dead
  disk gets the service restarted too;
* the **library follower** (cened.library.LibraryFollower) records the
  photos moved or removed by hand in the library;
* the **learner** (cened.learn.AutoLearner) learns from them by itself.

Signals only set flags: SIGTERM/SIGINT stop taking new files and finish the
batches already read; SIGHUP re-reads the configuration.

One daemon per database: an exclusive ``flock`` on a lock file beside it is
held for the daemon's life, so a second one exits (code 4) instead of
recovering, or racing for, the first one's intents.  A journal that cannot
be written stops the daemon the same way: filing without it would fail
every batch forever.
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from cened import inflight, logsetup, recovery, reloading, threadnames, undoing
from cened.batching import Collector, Filer, Scored
from cened.config import Settings, check_folders, load_settings
from cened.errors import ConfigError, JournalError
from cened.hashing import sha256_or_none
from cened.journal import Action, Journal
from cened.learn import AutoLearner
from cened.library import LibraryFollower
from cened.locking import hold_folders, hold_lock
from cened.ml import imaging
from cened.ml.classifying import Classifier
from cened.ml.versions import VersionStore
from cened.notify import Notifier, watchdog_interval
from cened.pipeline import Fate, FileOutcome, Pending, Prepared, Processor, Verdict
from cened.watching import InboxPump, StabilityTracker, signature

log = structlog.get_logger("cened.daemon")

#: Settings that only take effect at start; a reload that changes them is logged and ignored.
RESTART_ONLY = (
    "inbox",
    "library",
    "quarantine",
    "database",
    "model",
    "backend",
    "decode_threads",
    "decode_memory_mb",
    "model_threads",
    "model_workers",
    "model_batch_size",
    "queue_max",
    "watch_library",
)
TICK = 0.1
#: How long a thread may hold the GIL while another waits for it (Python's
#: default is 5 ms).  The decoders and the filer retake the GIL at every read,
#: stat or SQLite step, so a model copy wanting it around its call could wait
#: the whole interval with its core idle (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005
#: The end of the stacks a fatal signal left that goes into the log (the stuck thread is among them).
MAX_LOGGED_STACKS = 16_000
#: How often the pump refreshes systemd's STATUS (when it changed): the filer
#: only sends one per batch, and none while a batch is stuck.
STATUS_EVERY_S = 2.0
#: A batch the main thread has waited on for longer than this is named in
#: STATUS, so `systemctl status` tells a stuck daemon from an idle one.
STUCK_AFTER_S = 10.0
#: Consecutive batches whose journal was busy or locked before the daemon gives
#: up; SQLite has already waited its busy timeout (10 s) for each.
JOURNAL_FAILURES_MAX = 3
#: How long a file the daemon quarantined is watched for changes, and how many at most:
#: a writer that paused longer than unfinished_grace_s may still be writing into it.
QUARANTINE_WATCH_S = 3600.0
QUARANTINE_WATCH_MAX = 10_000


@dataclass
class _Watched:
    row_id: int
    signature: tuple[int, int] | None
    until: float  # monotonic
    changed_at: float | None = None  # monotonic; set once it was seen to change


class QuarantineWatch:
    """The files the daemon quarantined lately, looked at again once they change and then hold still.

    Thread-safe: the filer adds, the pump looks (every STATUS_EVERY_S).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[Path, _Watched] = {}

    def add(self, path: Path, row_id: int) -> None:
        with self._lock:
            self._files[path] = _Watched(row_id, _signature_of(path), time.monotonic() + QUARANTINE_WATCH_S)
            while len(self._files) > QUARANTINE_WATCH_MAX:
                del self._files[next(iter(self._files))]  # the oldest

    def changed(self, hold_s: float) -> list[tuple[Path, int]]:
        """The files that changed and have held still for ``hold_s`` since; no longer watched."""
        now = time.monotonic()
        out: list[tuple[Path, int]] = []
        with self._lock:
            items = list(self._files.items())
        for path, seen in items:
            current = _signature_of(path)
            with self._lock:
                if current is None or (seen.changed_at is None and now > seen.until):
                    self._files.pop(path, None)  # moved on, or finished long ago
                elif current != seen.signature:
                    seen.signature, seen.changed_at = current, now
                elif seen.changed_at is not None and now - seen.changed_at >= hold_s:
                    self._files.pop(path, None)
                    out.append((path, seen.row_id))
        return out


def _signature_of(path: Path) -> tuple[int, int] | None:
    try:
        return signature(os.lstat(path))
    except OSError:
        return None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        *,
        load: Callable[[Path | None], Settings] = load_settings,
    ) -> None:
        self._settings = settings
        self._config_path = config_path
        self._load = load
        self.stopping = threading.Event()
        self._reload = threading.Event()
        self.tracker = StabilityTracker(settings.stable_seconds)
        # Shared by the decoding threads, so the images they hold together stay bounded.
        self._budget = imaging.MemoryBudget(settings.decode_memory_bytes)
        # Photos being read, decoded or scored, remembered across a death of the daemon.
        self._flights = inflight.InFlight(inflight.file_for(settings.database))
        self.paths: queue.Queue[Path] = queue.Queue(maxsize=settings.queue_max)
        self._failures: dict[Path, int] = {}
        self.notifier = Notifier()
        self.serving = threading.Event()  # set once READY has been sent
        self.counters: dict[str, int] = {}  # outcomes by action, shared with the Processor
        self.filed = 0
        self._waiting_since: float | None = None  # the main thread waits on one batch since then
        self._last_status = ""
        self._journal_failures = 0  # consecutive batches the journal refused
        self._fatal: JournalError | None = None  # why the daemon is stopping on its own
        self._classifier: Classifier | None = None
        self._versions = VersionStore(settings.learned_dir)
        self._model_stamp: tuple[int, int] | None = None  # of the learned version in use, when read
        self.library_watched = threading.Event()  # set once the library follower watches and has compared
        self._last_filing = time.monotonic()  # when the filer last finished a batch
        self._quarantined = QuarantineWatch()

    def settings(self) -> Settings:
        return self._settings

    # -- life cycle --------------------------------------------------------

    def run(self) -> int:
        """Start, serve until a stop signal, shut down cleanly; returns the exit code."""
        s = self._settings
        check_folders(s)  # creates them too; an unwritable one stops the start with a clear error
        imaging.release_freed_images()
        self._install_signals()  # first: a SIGHUP or SIGTERM during model loading must not kill us
        started = time.monotonic()
        lock = hold_lock(s.database)  # before recovery, which must never touch a live daemon's intents
        try:
            folders = hold_folders({"inbox": s.inbox, "library": s.library})
        except BaseException:
            os.close(lock)
            raise
        try:
            return self._run(s, started)
        finally:
            for fd in (lock, *folders):
                os.close(fd)

    def _run(self, s: Settings, started: float) -> int:
        journal = Journal(s.database)
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        pump = InboxPump(
            self.settings, self.tracker, self.paths, self.stopping, tick=self._tick, tick_every=STATUS_EVERY_S
        )
        follower: LibraryFollower | None = None
        learner: AutoLearner | None = None
        try:
            journal.check_writable()
            resolved = recovery.reconcile(journal)
            classifier = Classifier.from_settings(s, warm_batch=s.batch_size, learned=False)
            self._classifier = classifier
            self._check_model()  # the learned version in use, if any (cened learn)
            _check_albums(s, classifier.classes)
            processor = Processor(classifier, journal, self.settings, self.counters)
            if self._flights.fault.strip():
                log.error(
                    "died-of-a-fault",
                    stacks=self._flights.fault[-MAX_LOGGED_STACKS:],
                    in_flight=[os.fsdecode(p) for p in sorted(self._flights.at_death)],
                    suspects={os.fsdecode(p): n for p, n in sorted(self._flights.deaths.items())},
                )
            # Only the daemon's own process catches fatal signals: faulthandler is process-wide.
            self._flights.begin(catch_faults=threading.current_thread() is threading.main_thread())
            pump.watch()
            if s.watch_library:  # after recovery: the library is as the journal's intents left it
                follower = LibraryFollower(s, self.stopping, self.library_watched)
                follower.start()
            pump.scan()  # before READY: every file already waiting is known to the tracker
            with (
                ThreadPoolExecutor(
                    s.decode_threads, thread_name_prefix="decode", initializer=threadnames.name_current
                ) as pool,
                ThreadPoolExecutor(
                    classifier.workers, thread_name_prefix="score", initializer=threadnames.name_current
                ) as scorer,
            ):
                collector = Collector(
                    self.settings,
                    self.paths,
                    self.tracker,
                    self.stopping,
                    processor,
                    pool,
                    scorer,
                    self._flights,
                    self._budget,
                )
                log.info(
                    "started",
                    pid=os.getpid(),
                    model=classifier.version,
                    backend=classifier.backend,
                    classes=list(classifier.classes),
                    recovered=len(resolved),
                    startup_s=round(time.monotonic() - started, 3),
                    config=s.summary(),
                )
                self.notifier.ready(self._status())
                self.serving.set()
                # After READY, so that a photo hanging again stops the watchdog's pings.
                self._retry_suspects(processor, collector)
                pump.start()
                collector.start()
                learner = AutoLearner(self.settings, classifier, self.stopping, self._last_busy)
                learner.start()
                threadnames.name_threads()
                self._serve(processor, collector)
                pump.join(timeout=5)  # first: the pump may re-arm the watch
            self._flights.close()  # a clean stop: no photo was in flight at a death
        finally:
            self.stopping.set()  # on an error too: the pump must not watch the inbox again
            pump.close()
            if follower is not None:
                follower.join(timeout=10)
            if learner is not None:
                # A learn under way may finish; cut off at exit, it leaves no version half-written.
                learner.join(timeout=20)
            journal.close()
            sys.setswitchinterval(switch_interval)  # the process is the caller's again (tests, embedding)
        self.notifier.close()
        if self._fatal is not None:
            raise self._fatal
        log.info("stopped", filed=self.filed)
        return 0

    def stop(self) -> None:
        self.stopping.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            if not self.stopping.is_set():
                self.notifier.stopping()
            self.stopping.set()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- the main thread -----------------------------------------------------

    def _serve(self, processor: Processor, collector: Collector) -> None:
        filer = Filer(lambda scored: self._handle(scored, processor))
        filer.start()
        threadnames.name(filer)
        interval = watchdog_interval()
        last_ping = 0.0
        try:
            while collector.is_alive() or not collector.batches.empty():
                if self._reload.is_set():
                    self._reload.clear()
                    if not self.stopping.is_set():  # no READY=1 to systemd after STOPPING=1
                        self._apply_reload(processor.classifier.classes)
                try:
                    scoring = collector.batches.get(timeout=min(TICK * 5, interval or 1.0))
                except queue.Empty:
                    scoring = None
                if scoring is not None:
                    self._waiting_since = time.monotonic()
                    scored = scoring.result()
                    collector.taken()
                    filer.hand_over(scored)
                    self._waiting_since = None
                now = time.monotonic()
                if interval is not None and now - last_ping >= interval:
                    self.notifier.watchdog()
                    last_ping = now
        finally:
            filer.hand_over(None)
            filer.join()

    def _retry_suspects(self, processor: Processor, collector: Collector) -> None:
        """Deal with the photos in flight at deaths by a fatal signal, one at a time, before any other.

        Alone, a photo that kills the daemon again is the only one in flight
        at that death, so it alone reaches DEATHS_TO_QUARANTINE and is
        quarantined at the next start; the photos that shared its batch are
        filed here, one by one.
        """
        size = processor.classifier.meta.input_size
        for path, deaths in sorted(self._flights.deaths.items()):
            if self.stopping.is_set():
                break
            try:
                st = os.lstat(path)
            except OSError:  # filed, moved or deleted since
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                self._flights.forget(path)
                continue
            try:
                if deaths >= inflight.DEATHS_TO_QUARANTINE:
                    log.error("crashed-the-daemon", file=os.fsdecode(path), deaths=deaths)
                    outcomes = processor.process([_crashed(path, st, deaths)])
                else:
                    log.warning("retrying-alone", file=os.fsdecode(path), deaths=deaths)
                    prepared = collector.prepare(path, self._settings, size)
                    try:
                        probabilities = processor.score([prepared])
                    finally:
                        self._flights.end([path])
                    outcomes = processor.file([prepared], probabilities)
            except Exception:
                log.exception("batch-failed", files=1)
                outcomes = []
            for outcome in outcomes:
                self._settle(outcome)
            self._flights.forget(path)
        self._flights.settled()

    # -- the filer's bookkeeping ---------------------------------------------

    def _handle(self, scored: Scored, processor: Processor) -> None:
        prepared = scored.prepared
        outcomes = [FileOutcome(p.path, Fate.RETRY, reason="batch failed") for p in prepared]
        if not scored.failed and self._fatal is None:
            try:
                outcomes = processor.file(prepared, scored.scores)
                self._journal_failures = 0
            except JournalError as exc:
                self._journal_failed(exc, len(prepared))
            except Exception:
                log.exception("batch-failed", files=len(prepared))
        for outcome in outcomes:
            self._settle(outcome)
        self._last_filing = time.monotonic()
        self.notifier.status(self._status())

    def _journal_failed(self, exc: JournalError, files: int) -> None:
        """A batch the journal refused: wait out a busy database a little, stop for anything else.

        Without its journal the daemon can move nothing safely, and would
        fail every batch forever while looking alive.
        """
        self._journal_failures += 1
        cause = getattr(exc.__cause__, "sqlite_errorname", "") or ""
        busy = cause.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
        if busy and self._journal_failures < JOURNAL_FAILURES_MAX:
            log.error("batch-failed", files=files, error=str(exc), consecutive=self._journal_failures)
            return
        log.error("journal-failed", files=files, error=str(exc), action="stopping")
        self._fatal = exc
        self.notifier.status(f"stopping: {exc}")
        self.stopping.set()

    def _settle(self, outcome: FileOutcome) -> None:
        path = outcome.path
        if outcome.fate == Fate.RETRY and outcome.reason in set(Pending):
            # Still being written: no failure, it is taken again once it holds still.
            self.tracker.unfinished(path)
            return
        if outcome.fate == Fate.RETRY:
            failures = self._failures.get(path, 0) + 1
            self._failures[path] = failures
            self.tracker.defer(path, min(self._settings.retry_max_s, 0.5 * 2**failures))
            return
        self._failures.pop(path, None)
        self.tracker.done(path, keep=outcome.keep)
        if outcome.fate.filed:
            self.filed += 1
        entry = outcome.entry
        if entry is not None and entry.action == Action.QUARANTINED and entry.destination and entry.id:
            self._quarantined.add(entry.destination, entry.id)

    def _last_busy(self) -> float:
        """When the daemon last had work: now while photos are queued, else when it last filed a batch."""
        return time.monotonic() if not self.paths.empty() else self._last_filing

    # -- the pump's periodic looks -------------------------------------------

    def _tick(self) -> None:
        if self.serving.is_set():  # no STATUS before READY
            self._check_model()
            self._refresh_status()
            self._look_at_quarantined()

    def _look_at_quarantined(self) -> None:
        """Put the quarantined files that changed since back in the inbox, to be read again whole.

        A writer that paused longer than ``unfinished_grace_s`` goes on writing
        into the file it had open, which was quarantined meanwhile.
        """
        changed = self._quarantined.changed(self._settings.stable_seconds)
        if not changed:
            return
        try:
            with Journal(self._settings.database) as journal:
                for path, row_id in changed:
                    row = journal.get(row_id)
                    if row is None or journal.successor(row_id) is not None:
                        continue
                    if not undoing.changed_since_quarantined(row):
                        continue
                    back = undoing.return_changed(journal, row, self._settings.roots)
                    log.warning(
                        "quarantined-file-changed",
                        file=os.fsdecode(path),
                        id=row_id,
                        returned_to=os.fsdecode(back[0].destination or "") if back else None,
                        state=back[0].state if back else None,
                        action="put back in the inbox to be read again",
                    )
        except JournalError as exc:  # the filer meets the same and stops the daemon
            log.error("quarantine-look-failed", error=str(exc))

    def _check_model(self) -> None:
        """Switch to the learned version put in use (`cened learn`, `cened model use`) since the last look.

        Between batches: each batch is scored and decided by one version.  A
        version that cannot be used is logged and the one in use kept; the
        service never stops for it.
        """
        stamp = self._versions.stamp()
        classifier = self._classifier
        if stamp == self._model_stamp or classifier is None:
            return
        self._model_stamp = stamp
        before = classifier.version
        try:
            learned = self._versions.load_active()
            _check_albums(self._settings, learned.classes if learned else classifier.meta.classes)
            classifier.use(learned)
        except Exception as exc:  # noqa: BLE001 - a bad version (or active.json) must never stop the service
            log.error("model-switch-refused", error=str(exc), kept=before)
            return
        if classifier.version != before:
            log.info("model-switched", model=classifier.version, was=before, classes=list(classifier.classes))

    def _status(self) -> str:
        queued = self.paths.qsize()
        busy = max(0, self.tracker.released - queued)  # being read, classified or filed
        # With the queue full, photos in the inbox wait for room whether or not they have settled.
        waiting = "waiting for room" if queued >= self.paths.maxsize else "settling"
        text = f"{self.filed} filed, {busy} busy, {queued} queued, {len(self.tracker)} {waiting}"
        since = self._waiting_since
        if since is not None and time.monotonic() - since > STUCK_AFTER_S:
            text += f"; a batch has been running for {time.monotonic() - since:.0f} s"
        return text

    def _refresh_status(self) -> None:
        text = self._status()
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def _apply_reload(self, classes: tuple[str, ...]) -> None:
        started = reloading.monotonic_usec()  # after the signal: `cened reload` matches its answer by it
        self.notifier.reloading()
        old = self._settings
        try:
            new = self._load(self._config_path)
            _check_albums(new, classes)
        except Exception as exc:  # noqa: BLE001 - a bad reload must never stop the service
            log.error("reload-refused", error=str(exc))
            reloading.write_answer(reloading.Answer.REFUSED, started, str(exc))
            self.notifier.ready(self._status())
            return
        restart = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        if restart:  # refused whole: half a config in use is one nobody wrote
            why = (
                f"{', '.join(restart)} only change(s) on a restart (systemctl restart cened); "
                "nothing of the new config was applied"
            )
            log.error("reload-needs-restart", keys=restart, error=why)
            reloading.write_answer(reloading.Answer.REFUSED, started, why)
            self.notifier.ready(self._status())
            return
        self._settings = new
        self.tracker.stable_seconds = new.stable_seconds
        logsetup.configure(new.log_format, new.log_level)
        log.info("reloaded", config=new.summary())
        reloading.write_answer(reloading.Answer.RELOADED, started)
        self.notifier.ready(self._status())


def _crashed(path: Path, st: os.stat_result, deaths: int) -> Prepared:
    """A photo to quarantine, unread, for having been in flight at ``deaths`` deaths of the daemon."""
    return Prepared(
        path,
        Verdict.REJECTED,
        sig=signature(st),
        sha256=sha256_or_none(path),
        size=st.st_size,
        reason="crashed-the-daemon",
        detail=f"it was being read, decoded or classified when the daemon died, {deaths} times",
    )


def _check_albums(settings: Settings, classes: tuple[str, ...]) -> None:
    unknown = sorted(set(settings.albums) - set(classes))
    if unknown:
        raise ConfigError(f"albums: unknown class(es) {unknown}; the model knows {list(classes)}")
    # A review album that is a class's would hide the unsure photos among the sure ones.
    class_albums = {settings.album_for(c): c for c in classes}
    for key in ("review_album", "other_album", "videos_album"):
        album = getattr(settings, key)
        if album and album in class_albums:
            raise ConfigError(
                f"{key}: {album!r} is the album of class {class_albums[album]!r}: it needs its own album"
            )

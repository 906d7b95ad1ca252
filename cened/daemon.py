"""The long-running service: watcher → tracker → queue → micro-batches → pipeline.

Four threads of our own, each with one job, connected by bounded queues:

* the **pump** releases settled files from the tracker into the path queue
  (only as many as fit, so a 100,000-file backlog costs a set of paths, not
  decoded images) and runs the start-up, overflow and periodic rescans;
* the **collector** forms micro-batches (up to ``batch_size`` paths, or
  whatever arrived within ``batch_max_wait_ms`` of the first; while a model
  copy is idle, whatever has arrived up to ``model_batch_size``, at once),
  hands each file to a small thread pool that reads and decodes it *while the
  model is busy with the previous batch*, and the batch to a scorer thread,
  one per model copy (``model_workers``), so the next batch can start on a
  free copy while the last one finishes on the other;
* the **main thread** takes the scored batches in the order they were
  formed, and is also the only place that talks to systemd's watchdog: it
  waits for each batch's scores without pinging, so a stuck model call stops
  the pings and gets the service restarted;
* the **filer** journals and moves each scored batch while the model works
  on the next one (the journal's fsyncs would otherwise idle the model); the
  main thread waits for it before handing over another batch, without
  pinging, so a filer stuck on a dead disk gets the service restarted too.

A fifth, the **library** thread, records the photos moved or removed by
hand in the library (cened.library), with a journal connection of its own.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from cened import inflight, learn, library, logsetup, recovery, reloading
from cened.config import Settings, check_folders, load_settings
from cened.errors import ConfigError, JournalError
from cened.hashing import sha256_or_none
from cened.journal import Journal
from cened.locking import hold_folders, hold_lock
from cened.ml import imaging
from cened.ml.classifying import Classifier, Scores
from cened.ml.versions import VersionStore
from cened.moving import PARTIAL_SUFFIX
from cened.notify import Notifier, watchdog_interval
from cened.pipeline import Fate, Outcome, Pending, Prepared, Processor, Verdict, prepare, unless_unfinished
from cened.watching import InboxWatcher, LibraryWatcher, StabilityTracker, is_candidate, scan, signature

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
#: the whole interval with its core idle (README, Benchmarks).
GIL_SWITCH_INTERVAL_S = 0.0005
#: The end of the stacks a fatal signal left that goes into the log (the stuck thread is among them).
MAX_LOGGED_STACKS = 16_000
#: Shortest pause between two looks at the tracker, so a flood of write events
#: from a slow copy cannot turn the pump into a busy loop.
EVENT_GAP = 0.01
#: How often the pump refreshes systemd's STATUS (when it changed): the filer
#: only sends one per batch, and none while a batch is stuck.
STATUS_EVERY_S = 2.0
#: A batch the main thread has waited on for longer than this is named in
#: STATUS, so `systemctl status` tells a stuck daemon from an idle one.
STUCK_AFTER_S = 10.0
#: How often the pump checks that the inbox is still the folder being watched
#: (one stat): a folder removed and made again is noticed within this.
INBOX_CHECK_S = 1.0
#: Consecutive batches whose journal was busy or locked before the daemon gives
#: up; SQLite has already waited its busy timeout (10 s) for each.
JOURNAL_FAILURES_MAX = 3
#: Changes in the library are handled once none has come for this long (a folder
#: dragged elsewhere is a burst of events), or at the latest after LIBRARY_SETTLE_MAX_S.
LIBRARY_SETTLE_S = 1.0
LIBRARY_SETTLE_MAX_S = 5.0
#: A change to a photo that an undo or correction (another process) is moving is looked
#: at again this often, and dropped after LIBRARY_WAIT_MAX_S: that mover's intent then
#: stays pending until recovery, and the next reconcile pass catches anything missed.
LIBRARY_RECHECK_S = 1.0
LIBRARY_WAIT_MAX_S = 60.0
#: After a failure (the journal busy for longer than its timeout), the whole library is
#: compared with the journal again this much later.
LIBRARY_RETRY_S = 30.0
#: With learn_after, the daemon learns once no batch has been filed for LEARN_QUIET_S,
#: looking every LEARN_CHECK_S: a learn takes a core for a few seconds, so not mid-burst.
LEARN_QUIET_S = 30.0
LEARN_CHECK_S = 5.0


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
        self._rescan = threading.Event()
        self._reload = threading.Event()
        self._activity = threading.Event()  # an inbox event: the pump looks now, not at the next tick
        self.tracker = StabilityTracker(settings.stable_seconds)
        # Shared by the decoding threads, so the images they hold together stay bounded.
        self._budget = imaging.MemoryBudget(settings.decode_memory_bytes)
        # Photos being read, decoded or scored, remembered across a death of the daemon.
        self._flights = inflight.InFlight(inflight.file_for(settings.database))
        self.paths: queue.Queue[Path] = queue.Queue(maxsize=settings.queue_max)
        # Batches in the order formed, each being (or waiting to be) scored.
        self._batches: queue.Queue[Future[_Scored]] = queue.Queue(maxsize=1)
        # Batches formed and not yet scored.  While a model copy is idle (fewer
        # than model_workers in flight) the next batch is cut at one model call
        # (model_batch_size) and goes without waiting: the first photos of a
        # burst, or a lone photo, are filed after one call's worth of model time
        # instead of a whole batch's, while the batches formed behind them are full.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        # Scored batches for the filer thread; None tells it to finish.
        self._filing: queue.Queue[_Scored | None] = queue.Queue(maxsize=1)
        self._failures: dict[Path, int] = {}
        self.notifier = Notifier()
        self.serving = threading.Event()  # set once READY has been sent
        self.counters: dict[str, int] = {}  # outcomes by action, shared with the Processor
        self.filed = 0
        self._waiting_since: float | None = None  # the main thread waits on one batch since then
        self._last_status = ""
        self._watcher: InboxWatcher | None = None
        self._inbox_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder watched
        self._journal_failures = 0  # consecutive batches the journal refused
        self._fatal: JournalError | None = None  # why the daemon is stopping on its own
        self._classifier: Classifier | None = None
        self._versions = VersionStore(settings.learned_dir)
        self._model_stamp: tuple[int, int] | None = None  # of the learned version in use, when read
        # Moves and deletions in the library, for the library thread (cened.library).
        self._library_events: queue.SimpleQueue[tuple[Path, Path | None, bool]] = queue.SimpleQueue()
        self._library_reconcile = threading.Event()  # compare every row with the disk: start, lost events
        self._library_thread: threading.Thread | None = None
        self.library_watched = threading.Event()  # set once the library thread is watching and has compared
        self._last_filing = time.monotonic()  # when the filer last finished a batch
        self._learner: threading.Thread | None = None

    def settings(self) -> Settings:
        return self._settings

    # -- life cycle --------------------------------------------------------

    def run(self) -> int:
        """Start, serve until a stop signal, shut down cleanly; returns the exit code."""
        s = self._settings
        check_folders(s)  # creates them too; an unwritable one stops the start with a clear error
        imaging.set_pixel_limit(s.max_pixels)
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
                    in_flight=[os.fsdecode(p) for p in sorted(self._flights.deaths)],
                )
            # Only the daemon's own process catches fatal signals: faulthandler is process-wide.
            self._flights.begin(catch_faults=threading.current_thread() is threading.main_thread())
            self._watch()
            if s.watch_library:  # after recovery: the library is as the journal's intents left it
                self._library_thread = threading.Thread(target=self._watch_library, name="library")
                self._library_thread.daemon = True
                self._library_thread.start()
            self._scan()  # before READY: every file already waiting is known to the tracker
            with (
                ThreadPoolExecutor(s.decode_threads, thread_name_prefix="decode") as pool,
                ThreadPoolExecutor(classifier.workers, thread_name_prefix="score") as scorer,
            ):
                pump = threading.Thread(target=self._pump, name="pump", daemon=True)
                collector = threading.Thread(
                    target=self._collect, args=(pool, scorer, processor), name="collect", daemon=True
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
                self._retry_suspects(processor)
                pump.start()
                collector.start()
                self._learner = threading.Thread(
                    target=self._learn_when_due, args=(classifier,), name="learner", daemon=True
                )
                self._learner.start()
                self._serve(processor, collector)
                pump.join(timeout=5)  # first: the pump may re-arm the watch
            self._flights.close()  # a clean stop: no photo was in flight at a death
        finally:
            self.stopping.set()  # on an error too: the pump must not watch the inbox again
            if self._watcher is not None:
                self._watcher.stop()
            if self._library_thread is not None:
                self._library_thread.join(timeout=10)
            if self._learner is not None:
                # A learn under way may finish; cut off at exit, it leaves no version half-written.
                self._learner.join(timeout=20)
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

    # -- threads -------------------------------------------------------------

    def _on_event(self, path: Path, closed: bool) -> None:
        s = self._settings
        if is_candidate(path, s.inbox, s.watched_extensions, s.ignore_suffixes):
            self.tracker.touch(path, closed=closed)
            self._activity.set()

    def _watch(self) -> None:
        """Start watching the inbox folder that is there now, remembering which one it is."""
        inbox = self._settings.inbox
        st = os.stat(inbox)
        watcher = InboxWatcher(inbox, self._on_event, self._rescan.set)
        watcher.start()
        self._watcher, self._inbox_id = watcher, (st.st_dev, st.st_ino)

    def _check_inbox(self) -> None:
        """Watch the inbox again if it was removed and made again, or came back.

        The kernel's watch dies with the folder it was on, and watchdog then
        ends its thread; without this, new photos would wait for the periodic
        rescan.  Both signs are checked: a new folder often gets the inode
        number the old one freed, and a folder moved away keeps its watch.
        """
        inbox = self._settings.inbox
        try:
            st = os.stat(inbox)
        except OSError as exc:
            if self._inbox_id is not None:
                log.warning("inbox-missing", inbox=str(inbox), error=exc.strerror)
                self._inbox_id = None
            return
        watcher = self._watcher
        same = (st.st_dev, st.st_ino) == self._inbox_id
        if same and watcher is not None and watcher.alive:
            return
        log.warning(
            "inbox-replaced",
            inbox=str(inbox),
            sign="the watch ended" if same else "another folder",
            action="watching it again and rescanning",
        )
        if watcher is not None:
            watcher.stop()
            self._watcher = None
        try:
            self._watch()
        except OSError as exc:  # gone again already: the next check tries again
            log.warning("inbox-missing", inbox=str(inbox), error=exc.strerror)
            self._inbox_id = None
            return
        self._rescan.set()

    def _on_library_change(self, src: Path, dest: Path | None, folder: bool) -> None:
        if dest is None and src.name.endswith(PARTIAL_SUFFIX):
            return  # the daemon's own temporary of a copy across filesystems, linked into place
        self._library_events.put((src, dest, folder))

    def _watch_library(self) -> None:
        """The library thread: record what is moved or removed by hand in the library (cened.library).

        It has its own journal connection (one per thread), and waits for a
        burst of changes to end before looking, so that the disk and the
        journal it reads then tell what happened, not the events.
        """
        s = self._settings
        places = library.Places.of(s)
        journal = Journal(s.database)
        watcher: LibraryWatcher | None = LibraryWatcher(
            s.library, self._on_library_change, self._library_reconcile.set
        )
        try:
            watcher.start()
        except OSError as exc:  # out of inotify watches: recorded at the next start instead
            log.warning("library-not-watched", library=str(s.library), error=exc.strerror)
            watcher = None
        self._library_reconcile.set()  # after the watch starts, so that nothing falls between
        changes = library.Changes()
        first = last = retry_at = next_look = 0.0
        waiting: dict[library.Change, float] = {}  # changes to look at again, and when to give up
        try:
            while not self.stopping.is_set():
                try:
                    src, dest, folder = self._library_events.get(timeout=TICK)
                except queue.Empty:
                    pass
                else:
                    if dest is None:
                        changes.gone(src, folder=folder)
                    else:
                        changes.moved(src, dest, folder=folder)
                    last = time.monotonic()
                    first = first or last
                    continue
                now = time.monotonic()
                if self._library_reconcile.is_set() and now >= retry_at:
                    self._library_reconcile.clear()
                    retry_at = self._library_step(journal, places, None, waiting)
                    self.library_watched.set()
                if changes and (now - last >= LIBRARY_SETTLE_S or now - first >= LIBRARY_SETTLE_MAX_S):
                    retry_at = self._library_step(journal, places, changes.take(), waiting)
                    first = 0.0
                if waiting and now >= next_look:
                    looked, waiting = waiting, {}
                    retry_at = self._library_step(journal, places, list(looked), waiting)
                    # Each keeps its first deadline: a mover that never finishes is given up on.
                    for change in list(waiting):
                        waiting[change] = looked.get(change, waiting[change])
                        if waiting[change] <= now:
                            log.warning("library-change-dropped", file=os.fsdecode(change.src))
                            del waiting[change]
                    next_look = now + LIBRARY_RECHECK_S
        finally:
            if watcher is not None:
                watcher.stop()
            journal.close()

    def _library_step(
        self,
        journal: Journal,
        places: library.Places,
        changes: list[library.Change] | None,
        waiting: dict[library.Change, float],
    ) -> float:
        """Record ``changes``, or compare the whole library with the journal (None).

        Returns the time before which no reconcile is retried: a failure must
        not end the thread, and the next reconcile pass makes up for it.
        """
        try:
            if changes is None:
                done = library.reconcile(journal, places)
            else:
                done = library.record(journal, places, changes)
        except Exception:
            log.exception("library-failed", retry_in_s=LIBRARY_RETRY_S)
            self._library_reconcile.set()
            return time.monotonic() + LIBRARY_RETRY_S
        for change in done.waiting:
            waiting.setdefault(change, time.monotonic() + LIBRARY_WAIT_MAX_S)
        return 0.0

    def _pump(self) -> None:
        last_scan = time.monotonic()  # run() scanned just before starting us
        next_status = last_scan
        last_check = last_scan
        while not self.stopping.is_set():
            if time.monotonic() >= last_check + INBOX_CHECK_S:
                self._check_inbox()
                last_check = time.monotonic()
            # Read the interval each time, so a reload that changes it applies at once.
            interval = self._settings.rescan_interval_s or float("inf")
            if self._rescan.is_set() or time.monotonic() >= last_scan + interval:
                self._rescan.clear()
                self._scan()
                last_scan = time.monotonic()
            self._activity.clear()
            room = self.paths.maxsize - self.paths.qsize()
            for path in self.tracker.ready(room):
                self.paths.put(path)
            if self.serving.is_set() and time.monotonic() >= next_status:  # no STATUS before READY
                self._check_model()
                self._refresh_status()
                next_status = time.monotonic() + STATUS_EVERY_S
            # At most one pass per EVENT_GAP however many events arrive, but the
            # gap comes after a pass, not before it: a photo closed by its writer
            # in an idle inbox is queued at once, not up to a TICK later.
            self.stopping.wait(EVENT_GAP)
            self._activity.wait(TICK)

    def _scan(self) -> None:
        s = self._settings
        found = 0
        cutoff = time.time() - s.stable_seconds
        for path in scan(s.inbox):
            if not is_candidate(path, s.inbox, s.watched_extensions, s.ignore_suffixes):
                continue
            try:
                old = os.lstat(path).st_mtime < cutoff
            except OSError:
                continue
            self.tracker.touch(path, old=old)
            found += 1
        log.info("scanned", inbox=str(s.inbox), candidates=found)

    def _collect(self, pool: ThreadPoolExecutor, scorer: ThreadPoolExecutor, processor: Processor) -> None:
        size = processor.classifier.meta.input_size
        while not self.stopping.is_set():
            try:
                first = self.paths.get(timeout=TICK)
            except queue.Empty:
                continue
            s = self._settings
            # A model copy with nothing to do gets one call's worth at once, of
            # whatever has arrived; waiting for more would only keep it idle.
            # Batches formed while every copy is busy may wait to fill up.
            idle_copy = self._in_flight < processor.classifier.workers
            limit = min(s.batch_size, s.model_batch_size) if idle_copy else s.batch_size
            batch = [pool.submit(self._prepare, first, s, size)]
            deadline = time.monotonic() + (0 if idle_copy else s.batch_max_wait_ms / 1000)
            while len(batch) < limit and not self.stopping.is_set():
                left = deadline - time.monotonic()
                try:
                    # At most a TICK at a time, so a stop is seen during a long batch_max_wait_ms.
                    path = self.paths.get(timeout=max(0.0, min(left, TICK)))
                except queue.Empty:
                    if left <= TICK:
                        break
                    continue
                batch.append(pool.submit(self._prepare, path, s, size))
            with self._in_flight_lock:
                self._in_flight += 1
            self._batches.put(scorer.submit(self._score, batch, processor))
        self._drain_paths()

    def _prepare(self, path: Path, settings: Settings, size: tuple[int, int]) -> Prepared:
        """A decoding thread's work: read and decode one file, leaving one still being written for later."""
        self._flights.start(path)  # until scored: see _score
        prepared = prepare(path, settings, size, self._budget)
        return unless_unfinished(prepared, settings.unfinished_grace_s, time.time())

    def _drain_paths(self) -> None:
        """Paths queued but not read stay in the inbox; forget them so a restart rescans."""
        while True:
            try:
                self.tracker.done(self.paths.get_nowait())
            except queue.Empty:
                return

    def _serve(self, processor: Processor, collector: threading.Thread) -> None:
        filer = threading.Thread(target=self._file_batches, args=(processor,), name="filer", daemon=True)
        filer.start()
        interval = watchdog_interval()
        last_ping = 0.0
        try:
            while collector.is_alive() or not self._batches.empty():
                if self._reload.is_set():
                    self._reload.clear()
                    if not self.stopping.is_set():  # no READY=1 to systemd after STOPPING=1
                        self._apply_reload(processor.classifier.classes)
                try:
                    scoring = self._batches.get(timeout=min(TICK * 5, interval or 1.0))
                except queue.Empty:
                    scoring = None
                if scoring is not None:
                    self._waiting_since = time.monotonic()
                    scored = scoring.result()
                    with self._in_flight_lock:
                        self._in_flight -= 1
                    self._hand_over(scored, filer)
                    self._waiting_since = None
                now = time.monotonic()
                if interval is not None and now - last_ping >= interval:
                    self.notifier.watchdog()
                    last_ping = now
        finally:
            self._hand_over(None, filer)
            filer.join()

    def _score(self, batch: list[Future[Prepared]], processor: Processor) -> _Scored:
        """A scorer thread's work: wait for the batch's photos to be decoded, then run the model."""
        prepared = [f.result() for f in batch]
        try:
            return _Scored(prepared, processor.score(prepared))
        except Exception:
            log.exception("batch-failed", files=len(prepared))
            return _Scored(prepared, None, failed=True)
        finally:
            self._flights.end(p.path for p in prepared)

    def _retry_suspects(self, processor: Processor) -> None:
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
                    prepared = self._prepare(path, self._settings, size)
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

    def _hand_over(self, scored: _Scored | None, filer: threading.Thread) -> None:
        """Queue a scored batch for the filer; waits while it files the previous one.

        No watchdog ping while waiting: a filer stuck on a dead disk must get
        the service restarted, just as a stuck model call does.
        """
        while filer.is_alive():
            try:
                self._filing.put(scored, timeout=TICK)
                return
            except queue.Full:
                continue
        if scored is not None:
            raise RuntimeError("the filer thread has died")

    def _file_batches(self, processor: Processor) -> None:
        """The filer thread: journal and move each scored batch, in order, one at a time."""
        while (scored := self._filing.get()) is not None:
            self._handle(scored, processor)

    def _handle(self, scored: _Scored, processor: Processor) -> None:
        prepared = scored.prepared
        outcomes = [Outcome(p.path, Fate.RETRY, reason="batch failed") for p in prepared]
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

    def _settle(self, outcome: Outcome) -> None:
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

    def _learn_when_due(self, classifier: Classifier) -> None:
        """The learner thread: ``cened learn`` by itself, once ``learn_after`` labelled photos are new.

        Only while the inbox is quiet, and never while a command changes what
        is learned.  The version made is put in use only if it is not worse
        (cened.learn), and the pump switches to it as to any other.  A learn
        that fails is logged (once while it fails alike) and not tried again
        until more photos are labelled.
        """
        failed: tuple[int | None, str] | None = None  # what was due, and the error
        looked: object = None  # what the files were like at the last look
        while not self.stopping.wait(LEARN_CHECK_S):
            s = self._settings
            quiet = time.monotonic() - self._last_filing >= LEARN_QUIET_S and self.paths.empty()
            if not s.learn_after or not quiet:
                continue
            now = (learn.stamp(s), s.learn_after)
            if now == looked:
                continue  # counting reads every correction in the journal: only when it changed
            looked, due = now, None
            try:
                due = learn.unlearned(s, classifier.meta.classes, classifier.meta.version)
                if due < s.learn_after or (failed is not None and due == failed[0]):
                    continue
                with learn.changing(s, wait=False) as held:
                    if not held:
                        looked = None  # a command is at it; look again
                        continue
                    log.info("learning", new_labelled=due)
                    outcome = learn.learn(s, classifier=classifier)
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
        except Exception as exc:  # noqa: BLE001 - a bad version must never stop the service
            log.error("model-switch-refused", version=self._versions.active(), error=str(exc), kept=before)
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
            reloading.write_answer(reloading.Outcome.REFUSED, started, str(exc))
            self.notifier.ready(self._status())
            return
        ignored = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        if ignored:
            log.warning("reload-needs-restart", keys=ignored)
            new = new.model_copy(update={k: getattr(old, k) for k in RESTART_ONLY})
        self._settings = new
        self.tracker.stable_seconds = new.stable_seconds
        imaging.set_pixel_limit(new.max_pixels)  # Pillow's own bomb guard, a global
        logsetup.configure(new.log_format, new.log_level)
        log.info("reloaded", config=new.summary())
        reloading.write_answer(reloading.Outcome.RELOADED, started)
        self.notifier.ready(self._status())


@dataclass
class _Scored:
    """A batch the model has seen, on its way to the filer thread."""

    prepared: list[Prepared]
    scores: Scores | None
    failed: bool = False


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

"""Noticing files in the inbox, and deciding when one has finished arriving.

Watchdog tells us *something happened* to a path; it cannot tell us a copy is
finished.  :class:`StabilityTracker` therefore holds every candidate until its
size and modification time have stayed the same for ``stable_seconds`` (or
the writer closed it and nothing changed since, for a writer that closes
once), and only then releases it for classification.  Each path is held once
however many events arrive, which is what deduplicates the burst of
created/modified/closed events one copy makes.

Events are a hint, not the truth: a full scan runs at start, after the kernel
reports lost events (inotify queue overflow), and periodically as a safety net.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

if TYPE_CHECKING:
    from cened.config import Settings

log = structlog.get_logger("cened.watching")


def is_candidate(path: Path, inbox: Path, extensions: list[str], ignore_suffixes: list[str]) -> bool:
    """Whether a path in the inbox is a photo for us, judged by its name alone.

    Hidden files and folders, partial downloads and editor temporaries are
    someone else's work in progress and are never touched.  Files with other
    extensions are left where they are: a stray PDF in the inbox is not ours
    to quarantine.  A ``.jpg`` that is not really a JPEG *is* ours, and ends up
    in quarantine after decoding fails.
    """
    try:
        rel = path.relative_to(inbox)
    except ValueError:
        return False
    if any(part.startswith(".") for part in rel.parts):
        return False
    name = path.name.lower()
    if any(name.endswith(s) for s in ignore_suffixes):
        return False
    return os.path.splitext(name)[1] in extensions


def scan(inbox: Path) -> Iterator[Path]:
    """Every entry below ``inbox`` that is not a directory, without following links.

    Folder by folder through their descriptors, so a folder whose path is
    longer than PATH_MAX is listed too (``os.walk`` skips it without a word).
    """
    for root, dirs, files, _fd in os.fwalk(inbox, follow_symlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(root) / name


def too_long(exc: OSError) -> bool:
    """Whether a path could not be used for its length: it is reported, never silently dropped."""
    return exc.errno == errno.ENAMETOOLONG


def signature(st: os.stat_result) -> tuple[int, int]:
    """What "unchanged" means for a file: same size and same modification time."""
    return (st.st_size, st.st_mtime_ns)


@dataclass
class _Seen:
    changed_at: float  # monotonic time the file was last seen to change
    signature: tuple[int, int] | None = None  # at the last look
    closed_as: tuple[int, int] | None = None  # at the writer's last close
    not_before: float = 0.0  # a deferred retry waits until then
    # Whether a close means the writer is done.  Not once the file was closed
    # again after more writes, or came back unfinished: its writer opens it
    # anew for each chunk, and only holding still says it is done.
    trust_close: bool = True
    # Handed back unfinished: while it stays as it was then, it is not read again before this.
    recheck_at: float = 0.0


#: How often a file handed back as unfinished is read again while it does not change.
UNFINISHED_RECHECK_S = 5.0


class StabilityTracker:
    """Paths waiting to settle; thread-safe, fed by events and scans, drained by ``ready``.

    A path is in at most one of three places: waiting here, released to the
    worker (*busy*), or *settled* -- left in the inbox on purpose, ignored
    until its size or mtime changes.
    """

    def __init__(self, stable_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_seconds = stable_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Path, _Seen] = {}
        self._busy: set[Path] = set()
        self._settled: dict[Path, tuple[int, int]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    @property
    def released(self) -> int:
        """Paths handed out by :meth:`ready` and not yet finished with (queued or in flight)."""
        with self._lock:
            return len(self._busy)

    def touch(self, path: Path, *, closed: bool = False, old: bool = False) -> None:
        """Note activity on ``path``.

        ``closed`` means the writer closed it (inotify's close-write), so it
        may be taken as soon as it is still the same at the next look, unless
        it was closed before with other content.  ``old`` marks a scan hit,
        which need not wait: it was already there.
        """
        closed_as = None
        if closed:
            try:
                closed_as = signature(os.lstat(path))
            except OSError:
                return
        now = self._clock()
        with self._lock:
            if path in self._busy:
                return
            entry = self._seen.get(path)
            if entry is None:
                entry = self._seen[path] = _Seen(changed_at=now - self.stable_seconds if old else now)
            if closed_as is not None:
                if entry.closed_as is not None and entry.closed_as != closed_as:
                    entry.trust_close = False
                entry.closed_as = closed_as

    def defer(self, path: Path, delay: float) -> None:
        """Put a released path back, to be retried after ``delay`` seconds."""
        now = self._clock()
        with self._lock:
            self._busy.discard(path)
            self._seen[path] = _Seen(changed_at=now - self.stable_seconds, not_before=now + delay)

    def unfinished(self, path: Path) -> None:
        """Put a released path back that is still being written.

        It is taken again once its size and mtime have held for
        ``stable_seconds`` from now; its writer's closes no longer count.
        A writer that pauses leaves it as it is: then it is read again only
        every UNFINISHED_RECHECK_S (over a grace of minutes, not every second).
        """
        now = self._clock()
        try:
            sig: tuple[int, int] | None = signature(os.lstat(path))
        except OSError:
            sig = None
        with self._lock:
            self._busy.discard(path)
            self._seen[path] = _Seen(
                changed_at=now, signature=sig, trust_close=False, recheck_at=now + UNFINISHED_RECHECK_S
            )

    def done(self, path: Path, *, keep: tuple[int, int] | None = None) -> None:
        """Finished with ``path``; ``keep`` (its signature) means it stays and must be ignored."""
        with self._lock:
            self._busy.discard(path)
            self._seen.pop(path, None)
            if keep is not None:
                self._settled[path] = keep
            else:
                self._settled.pop(path, None)

    def ready(self, limit: int) -> list[Path]:
        """Release up to ``limit`` paths that have stopped changing; forget vanished ones."""
        now = self._clock()
        out: list[Path] = []
        with self._lock:
            items = list(self._seen.items())
        for path, entry in items:
            if len(out) >= limit:
                break
            if entry.not_before > now:
                continue
            try:
                st = os.lstat(path)
            except OSError as exc:
                with self._lock:
                    self._seen.pop(path, None)
                    if too_long(exc):  # released all the same: reading it says why it cannot be filed
                        self._busy.add(path)
                        out.append(path)
                continue
            current = signature(st)
            with self._lock:
                if self._settled.get(path) == current:
                    self._seen.pop(path, None)
                    continue
                if current != entry.signature:
                    if entry.signature is not None:
                        entry.changed_at = now
                    entry.signature = current
                closed = entry.trust_close and entry.closed_as == current
                settled = closed or now - entry.changed_at >= self.stable_seconds
                if settled and entry.recheck_at > now and current == entry.signature:
                    continue  # still as it was when it read as unfinished
                if not settled and stat.S_ISREG(st.st_mode):
                    continue
                del self._seen[path]
                self._settled.pop(path, None)
                self._busy.add(path)
            out.append(path)
        return out


class _Handler(FileSystemEventHandler):
    def __init__(self, on_path: Callable[[Path, bool], None]) -> None:
        self._on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self._on_path(Path(os.fsdecode(event.dest_path)), False)
        elif isinstance(event, FileClosedEvent):
            self._on_path(Path(os.fsdecode(event.src_path)), True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._on_path(Path(os.fsdecode(event.src_path)), False)


class _OverflowListener(logging.Handler):
    """Watchdog reports a lost-events overflow only through its logger; we listen there.

    Since watchdog 7.1.0 the kernel's IN_Q_OVERFLOW is logged as a warning
    ("Inotify queue overflowed; ...") and the recursive watches are rebuilt;
    event handlers are not told, nor which files were missed, so the daemon
    must rescan.  Earlier versions dropped the overflow without a word.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


class TreeWatcher:
    """A recursive watchdog observer on a folder, passing ``events`` of those kinds only to ``handler``."""

    _OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")

    def __init__(
        self,
        root: Path,
        handler: FileSystemEventHandler,
        events: tuple[type[FileSystemEvent], ...],
        on_overflow: Callable[[], None],
    ) -> None:
        self._observer = Observer()
        self._observer.schedule(handler, str(root), recursive=True, event_filter=list(events))
        self._listener = _OverflowListener(on_overflow)

    def start(self) -> None:
        for name in self._OVERFLOW_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._listener)
            # A logger drops records below its level before any handler sees them, and
            # without a level of its own it takes the root's, i.e. log_level: "error"
            # there must not silence the warning the rescan hangs on (it is logged too).
            logger.setLevel(logging.WARNING)
        self._observer.start()

    @property
    def alive(self) -> bool:
        """Whether the watch still reports: watchdog ends it when the watched folder itself is deleted."""
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)

    def stop(self) -> None:
        for name in self._OVERFLOW_LOGGERS:
            logging.getLogger(name).removeHandler(self._listener)
        quiet = _StopRace()
        emitter_log = logging.getLogger("watchdog.observers.inotify")
        emitter_log.addFilter(quiet)
        try:
            self._observer.stop()
            self._observer.join(timeout=5)
        finally:
            emitter_log.removeFilter(quiet)


class _StopRace(logging.Filter):
    """Drops the error watchdog 7 logs when a stop catches its emitter between two reads.

    The emitter's thread is ending, as asked; logged at error level, it put a
    false alarm in `journalctl -p err` at every clean stop.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


class InboxWatcher(TreeWatcher):
    """A recursive watchdog observer on the inbox, feeding a callback with paths."""

    #: What the handler uses, plus new folders (so their contents are watched).
    #: Watchdog turns this into the inotify mask, so the kernel never reports the
    #: opens, no-write closes and deletions that the daemon's own reads and moves
    #: cause: four Python events per photo that nobody wanted.
    _EVENTS = (
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileClosedEvent,
        DirCreatedEvent,
        DirMovedEvent,
    )

    def __init__(
        self, inbox: Path, on_path: Callable[[Path, bool], None], on_overflow: Callable[[], None]
    ) -> None:
        super().__init__(inbox, _Handler(on_path), self._EVENTS, on_overflow)
        self.inbox = inbox


class _LibraryHandler(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[Path, Path | None, bool], None]) -> None:
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = Path(os.fsdecode(event.src_path))
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            self._on_change(src, Path(os.fsdecode(event.dest_path)), event.is_directory)
        elif isinstance(event, FileDeletedEvent | DirDeletedEvent):
            self._on_change(src, None, event.is_directory)


class LibraryWatcher(TreeWatcher):
    """A recursive observer on the library, for files and folders that move or go away (cened.library).

    ``on_change(src, dest, folder)`` gets ``dest`` None for a deletion; watchdog
    reports a move out of the library as one, and a move in as a creation,
    which is not asked for: a file brought in by hand is doctor's to adopt.
    The daemon's own filing makes no such event in the library (it links
    files in and removes them from the inbox) but for its hidden temporaries.
    """

    _EVENTS = (FileMovedEvent, DirMovedEvent, FileDeletedEvent, DirDeletedEvent)

    def __init__(
        self,
        library: Path,
        on_change: Callable[[Path, Path | None, bool], None],
        on_overflow: Callable[[], None],
    ) -> None:
        super().__init__(library, _LibraryHandler(on_change), self._EVENTS, on_overflow)


#: How long the pump waits for an inbox event before its periodic work.
TICK = 0.1
#: Shortest pause between two looks at the tracker, so a flood of write events
#: from a slow copy cannot turn the pump into a busy loop.
EVENT_GAP = 0.01
#: How often the pump checks that the inbox is still the folder being watched
#: (one stat): a folder removed and made again is noticed within this.
INBOX_CHECK_S = 1.0


class InboxPump(threading.Thread):
    """The pump: watches the inbox and releases settled files from the tracker into the path queue.

    Only as many as fit, so a 100,000-file backlog costs a set of paths, not
    decoded images.  It runs the start-up, overflow and periodic rescans,
    watches the inbox again when it is replaced, and calls ``tick`` every
    ``tick_every`` seconds for the daemon's own periodic looks.
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        tracker: StabilityTracker,
        paths: queue.Queue[Path],
        stopping: threading.Event,
        *,
        tick: Callable[[], None],
        tick_every: float,
    ) -> None:
        super().__init__(name="pump", daemon=True)
        self._settings = settings
        self._tracker = tracker
        self._paths = paths
        self._stopping = stopping
        self._tick = tick
        self._tick_every = tick_every
        self._rescan = threading.Event()
        self._activity = threading.Event()  # an inbox event: the pump looks now, not at the next tick
        self._watcher: InboxWatcher | None = None
        self._inbox_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder watched

    def watch(self) -> None:
        """Start watching the inbox folder that is there now, remembering which one it is."""
        inbox = self._settings().inbox
        st = os.stat(inbox)
        watcher = InboxWatcher(inbox, self._on_event, self._rescan.set)
        watcher.start()
        self._watcher, self._inbox_id = watcher, (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Stop watching; the thread itself ends with ``stopping``."""
        if self._watcher is not None:
            self._watcher.stop()

    def scan(self) -> None:
        """Tell the tracker of every candidate in the inbox (those older than stable_seconds as settled)."""
        s = self._settings()
        found = 0
        cutoff = time.time() - s.stable_seconds
        for path in scan(s.inbox):
            if not is_candidate(path, s.inbox, s.watched_extensions, s.ignore_suffixes):
                continue
            try:
                old = os.lstat(path).st_mtime < cutoff
            except OSError as exc:
                if not too_long(exc):
                    continue
                old = True
            self._tracker.touch(path, old=old)
            found += 1
        log.info("scanned", inbox=str(s.inbox), candidates=found)

    def run(self) -> None:
        last_scan = time.monotonic()  # the daemon scanned just before starting us
        next_tick = last_scan
        last_check = last_scan
        while not self._stopping.is_set():
            if time.monotonic() >= last_check + INBOX_CHECK_S:
                self._check_inbox()
                last_check = time.monotonic()
            # Read the interval each time, so a reload that changes it applies at once.
            interval = self._settings().rescan_interval_s or float("inf")
            if self._rescan.is_set() or time.monotonic() >= last_scan + interval:
                self._rescan.clear()
                self.scan()
                last_scan = time.monotonic()
            self._activity.clear()
            room = self._paths.maxsize - self._paths.qsize()
            for path in self._tracker.ready(room):
                self._paths.put(path)
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + self._tick_every
            # At most one pass per EVENT_GAP however many events arrive, but the
            # gap comes after a pass, not before it: a photo closed by its writer
            # in an idle inbox is queued at once, not up to a TICK later.
            self._stopping.wait(EVENT_GAP)
            self._activity.wait(TICK)

    def _on_event(self, path: Path, closed: bool) -> None:
        s = self._settings()
        if is_candidate(path, s.inbox, s.watched_extensions, s.ignore_suffixes):
            self._tracker.touch(path, closed=closed)
            self._activity.set()

    def _check_inbox(self) -> None:
        """Watch the inbox again if it was removed and made again, or came back.

        The kernel's watch dies with the folder it was on, and watchdog then
        ends its thread; without this, new photos would wait for the periodic
        rescan.  Both signs are checked: a new folder often gets the inode
        number the old one freed, and a folder moved away keeps its watch.
        """
        inbox = self._settings().inbox
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
            self.watch()
        except OSError as exc:  # gone again already: the next check tries again
            log.warning("inbox-missing", inbox=str(inbox), error=exc.strerror)
            self._inbox_id = None
            return
        self._rescan.set()

"""Which photos were being read, decoded or classified when the daemon died, across restarts.

A photo that hangs the decoder or the model gets the daemon killed by the
watchdog; after the restart it is taken again, and so on forever.  So the
daemon notes each photo as it goes in flight and as it comes out (scored, or
refused), one JSON line each, appended to a small file beside the database:
not in the journal, whose schema is the log's, and not fsynced, because
only the daemon's own death has to be survived, and the kernel keeps what
was written through that.

Only a death by a fatal signal counts: the watchdog's SIGABRT, or a
decoder's SIGSEGV.  Python's faulthandler writes the stacks of every thread
to a second file when one arrives, which at the next start both tells such a
death from a SIGKILL (an operator, the OOM killer, a test) and shows where
the daemon was stuck.  The photos then left in flight are the suspects, each
with one more death to its name.  The daemon retries each suspect alone,
before taking anything else, so that a second death names the photo that
caused it and not the ones that shared its batch; a photo in flight at
:data:`DEATHS_TO_QUARANTINE` deaths is quarantined as having crashed the
daemon.

File format, one JSON object per line: ``{"deaths": {path: n, ...}}`` first
(the counts carried over), then ``{"start": path}`` and ``{"end": path}``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import structlog

log = structlog.get_logger("cened.inflight")

#: Deaths with a photo in flight after which it is taken to be their cause.
DEATHS_TO_QUARANTINE = 2
#: The file is rewritten (to what is in flight now) once it grows past this.
COMPACT_BYTES = 1 << 20


def file_for(database: Path) -> Path:
    """Where the daemon using ``database`` keeps its record: beside it, named after it."""
    return database.with_name(database.name + ".in-flight")


def fault_file_for(record: Path) -> Path:
    """Where the stacks go when the daemon is killed by a fatal signal."""
    return record.with_name(record.name.removesuffix(".in-flight") + ".fault")


def deaths_recorded(file: Path, *, count_in_flight: bool = True) -> dict[Path, int]:
    """Deaths per photo; with ``count_in_flight``, one more for each photo still in flight at the end."""
    deaths, flying = _read(file)
    for path in flying if count_in_flight else ():
        deaths[path] = deaths.get(path, 0) + 1
    return deaths


def in_flight_at_end(file: Path) -> set[Path]:
    """The photos the record leaves in flight: those being read, decoded or scored as the daemon died."""
    return _read(file)[1]


def _read(file: Path) -> tuple[dict[Path, int], set[Path]]:
    """The deaths carried over, and the photos in flight at the record's end."""
    deaths: dict[Path, int] = {}
    flying: set[Path] = set()
    try:
        text = file.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}, set()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the death itself
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("deaths"), dict):
            deaths = {Path(p): int(n) for p, n in record["deaths"].items() if isinstance(n, int)}
        elif isinstance(record.get("start"), str):
            flying.add(Path(record["start"]))
        elif isinstance(record.get("end"), str):
            flying.discard(Path(record["end"]))
    return deaths, flying


class InFlight:
    """The record of photos in flight, shared by the daemon's threads.

    :attr:`fault` holds the stacks the last run wrote as it died of a fatal
    signal ("" when it did not), and :attr:`deaths` the photos and how many
    such deaths each was in flight for.  :meth:`begin` writes the deaths back
    as the new record's first line, so a death while a suspect is retried
    counts against it too.  A record that cannot be written (a full or
    read-only disk) is given up with a warning; it is a safeguard, never a
    reason to stop.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self.fault_file = fault_file_for(file)
        try:
            self.fault = self.fault_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            self.fault = ""
        self.deaths = deaths_recorded(file, count_in_flight=bool(self.fault.strip()))
        # What the death itself caught in flight; the other suspects were carried over from before.
        self.at_death = in_flight_at_end(file) if self.fault.strip() else set()
        self._fault_out: TextIO | None = None  # the open file faulthandler writes to
        self._lock = threading.Lock()
        self._flying: set[Path] = set()
        self._fd = -1
        self._size = 0
        self._broken = False

    def begin(self, *, catch_faults: bool) -> None:
        """Start a new record holding the carried-over deaths.

        With ``catch_faults`` a fatal signal writes every thread's stack to
        :attr:`fault_file` (faulthandler is process-wide, so only the daemon's
        own process should ask for it, not one that embeds it).
        """
        with self._lock:
            self._rewrite()
        if catch_faults:
            try:
                out = self.fault_file.open("w", encoding="utf-8")
            except OSError as exc:
                log.warning("fault-record-failed", file=os.fsdecode(self.fault_file), error=str(exc))
                return
            faulthandler.enable(file=out, all_threads=True)
            self._fault_out = out

    def forget(self, path: Path) -> None:
        """``path`` is dealt with: no more a suspect, on disk at once.

        A suspect filed while another is still to be retried must not be
        counted, nor named, at a death that comes after it was filed.
        """
        with self._lock:
            if self.deaths.pop(path, None) is not None:
                self._rewrite()

    def settled(self) -> None:
        """Every suspect is dealt with: rewrite the record without them."""
        with self._lock:
            self._rewrite()

    def start(self, path: Path) -> None:
        with self._lock:
            self._flying.add(path)
            self._append([{"start": os.fsdecode(path)}])

    def end(self, paths: Iterable[Path]) -> None:
        with self._lock:
            done = [p for p in paths if p in self._flying]
            self._flying.difference_update(done)
            if not self._flying and self._size > 0 and not self.deaths:
                self._truncate()  # nothing in flight: nothing to remember
            else:
                self._append([{"end": os.fsdecode(p)} for p in done])
                if self._size > COMPACT_BYTES:
                    self._rewrite()

    def close(self) -> None:
        """A clean stop: nothing is in flight, and the suspects stay for the next start."""
        with self._lock:
            self._flying.clear()
            self._rewrite()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._fault_out is not None:
            faulthandler.disable()
            self._fault_out.close()
            self._fault_out = None

    def _lines(self, records: list[dict[str, object]]) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8", "surrogateescape")

    def _append(self, records: list[dict[str, object]]) -> None:
        if self._fd < 0 or not records:
            return
        try:
            self._size += os.write(self._fd, self._lines(records))
        except OSError as exc:
            self._give_up(exc)

    def _truncate(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            self._size = 0
        except OSError as exc:
            self._give_up(exc)

    def _rewrite(self) -> None:
        """Replace the file with the deaths and what is in flight now, and append to the new one."""
        if self._broken:
            return
        records: list[dict[str, object]] = []
        if self.deaths:
            records.append({"deaths": {os.fsdecode(p): n for p, n in self.deaths.items()}})
        records += [{"start": os.fsdecode(p)} for p in self._flying]
        tmp = self.file.with_name(self.file.name + ".tmp")
        try:
            data = self._lines(records)
            tmp.write_bytes(data)
            os.replace(tmp, self.file)
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._give_up(exc)
            return
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size = fd, len(data)

    def _give_up(self, exc: OSError) -> None:
        log.warning("in-flight-record-failed", file=os.fsdecode(self.file), error=str(exc))
        self._broken = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

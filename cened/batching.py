"""The daemon's micro-batches: the collector forms them and has them read and scored; the filer files them.

* The **collector** takes paths from the queue into batches (up to
  ``batch_size`` paths, or whatever arrived within ``batch_max_wait_ms`` of the
  first; while a model copy is idle, whatever has arrived up to
  ``model_batch_size``, at once), hands each file to a small thread pool that
  reads and decodes it *while the model is busy with the previous batch*, and
  the batch to a scorer thread, one per model copy (``model_workers``), so the
  next batch can start on a free copy while the last one finishes on the other.
* The **filer** journals and moves each scored batch while the model works on
  the next one (the journal's fsyncs would otherwise idle the model).

The main thread (cened.daemon) takes the scored batches from the collector in
the order they were formed and hands them to the filer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from cened.config import Settings
from cened.inflight import InFlight
from cened.ml import imaging
from cened.ml.classifying import Scores
from cened.pipeline import Prepared, Processor, prepare, unless_unfinished
from cened.watching import StabilityTracker

log = structlog.get_logger("cened.daemon")

#: How long a thread waits on a queue before it looks at ``stopping`` again.
TICK = 0.1


@dataclass
class Scored:
    """A batch the model has seen, on its way to the filer thread."""

    prepared: list[Prepared]
    scores: Scores | None
    failed: bool = False


class Collector(threading.Thread):
    """The collector thread: paths → micro-batches, each read by ``pool`` and scored by ``scorer``."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        paths: queue.Queue[Path],
        tracker: StabilityTracker,
        stopping: threading.Event,
        processor: Processor,
        pool: ThreadPoolExecutor,
        scorer: ThreadPoolExecutor,
        flights: InFlight,
        budget: imaging.MemoryBudget,
    ) -> None:
        super().__init__(name="collect", daemon=True)
        self._settings = settings
        self._paths = paths
        self._tracker = tracker
        self._stopping = stopping
        self._processor = processor
        self._pool = pool
        self._scorer = scorer
        self._flights = flights
        self._budget = budget
        # Batches in the order formed, each being (or waiting to be) scored.
        self.batches: queue.Queue[Future[Scored]] = queue.Queue(maxsize=1)
        # Batches formed and not yet taken.  While a model copy is idle (fewer
        # than model_workers in flight) the next batch is cut at one model call
        # (model_batch_size) and goes without waiting: the first photos of a
        # burst, or a lone photo, are filed after one call's worth of model time
        # instead of a whole batch's, while the batches formed behind them are full.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    def taken(self) -> None:
        """One scored batch was taken from :attr:`batches`: its model copy is free."""
        with self._in_flight_lock:
            self._in_flight -= 1

    def run(self) -> None:
        processor = self._processor
        size = processor.classifier.meta.input_size
        while not self._stopping.is_set():
            try:
                first = self._paths.get(timeout=TICK)
            except queue.Empty:
                continue
            s = self._settings()
            # A model copy with nothing to do gets one call's worth at once, of
            # whatever has arrived; waiting for more would only keep it idle.
            # Batches formed while every copy is busy may wait to fill up.
            idle_copy = self._in_flight < processor.classifier.workers
            limit = min(s.batch_size, s.model_batch_size) if idle_copy else s.batch_size
            batch = [self._pool.submit(self.prepare, first, s, size)]
            deadline = time.monotonic() + (0 if idle_copy else s.batch_max_wait_ms / 1000)
            while len(batch) < limit and not self._stopping.is_set():
                left = deadline - time.monotonic()
                try:
                    # At most a TICK at a time, so a stop is seen during a long batch_max_wait_ms.
                    path = self._paths.get(timeout=max(0.0, min(left, TICK)))
                except queue.Empty:
                    if left <= TICK:
                        break
                    continue
                batch.append(self._pool.submit(self.prepare, path, s, size))
            with self._in_flight_lock:
                self._in_flight += 1
            self.batches.put(self._scorer.submit(self._score, batch))
        self._drain_paths()

    def prepare(self, path: Path, settings: Settings, size: tuple[int, int]) -> Prepared:
        """A decoding thread's work: read and decode one file, leaving one still being written for later."""
        self._flights.start(path)  # until scored: see _score
        prepared = prepare(path, settings, size, self._budget)
        return unless_unfinished(prepared, settings.unfinished_grace_s, time.time())

    def _score(self, batch: list[Future[Prepared]]) -> Scored:
        """A scorer thread's work: wait for the batch's photos to be decoded, then run the model."""
        prepared = [f.result() for f in batch]
        try:
            return Scored(prepared, self._processor.score(prepared))
        except Exception:
            log.exception("batch-failed", files=len(prepared))
            return Scored(prepared, None, failed=True)
        finally:
            self._flights.end(p.path for p in prepared)

    def _drain_paths(self) -> None:
        """Paths queued but not read stay in the inbox; forget them so a restart rescans."""
        while True:
            try:
                self._tracker.done(self._paths.get_nowait())
            except queue.Empty:
                return


class Filer(threading.Thread):
    """The filer thread: ``file`` each scored batch handed over, in order, one at a time."""

    def __init__(self, file: Callable[[Scored], None]) -> None:
        super().__init__(name="filer", daemon=True)
        self._file = file
        self._filing: queue.Queue[Scored | None] = queue.Queue(maxsize=1)  # None: finish

    def run(self) -> None:
        while (scored := self._filing.get()) is not None:
            self._file(scored)

    def hand_over(self, scored: Scored | None) -> None:
        """Queue a scored batch (None: finish after the last); waits while the previous one is filed.

        No watchdog ping while waiting (the caller's): a filer stuck on a dead
        disk must get the service restarted, just as a stuck model call does.
        """
        while self.is_alive():
            try:
                self._filing.put(scored, timeout=TICK)
                return
            except queue.Full:
                continue
        if scored is not None:
            raise RuntimeError("the filer thread has died")

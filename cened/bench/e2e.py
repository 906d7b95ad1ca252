"""The daemon end to end: a real ``cened run`` on temporary folders, timed from its log.

Throughput runs rename the photos into the inbox (arrival is instant) with
``stable_seconds = 0``: the stability hold is a fixed delay per file, not a
limit on throughput, and would otherwise be timed as if it were.  Latency is
measured the way a person drops a photo (a copy, closed by its writer) with the
configured settings, hold included.  Figures are medians over ``--repeats``,
each with its spread; before each run the page cache's dirty pages are written
back (:func:`settle`), so that no run pays for the writes of what came before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cened.bench.photos import warm
from cened.bench.plan import Plan, say
from cened.bench.process import DaemonProcess
from cened.config import Settings

#: The settings that change the figures: the timed daemons run with the
#: user's values, and the report names them.
TIMED_SETTINGS = (
    "backend",
    "batch_size",
    "model_batch_size",
    "batch_max_wait_ms",
    "decode_threads",
    "model_threads",
    "model_workers",
    "thumbnail_min_side",
)


@dataclass
class Workspace:
    root: Path
    inbox: Path = field(init=False)
    library: Path = field(init=False)
    staging: Path = field(init=False)
    database: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inbox, self.library, self.staging = (self.root / n for n in ("inbox", "library", "staging"))
        for folder in (self.inbox, self.library, self.staging, self.root / "state"):
            folder.mkdir(parents=True)
        self.database = self.root / "state" / "cened.sqlite3"

    def config(self, settings: Settings, model: Path, **overrides: object) -> Path:
        keys: dict[str, object] = {
            "inbox": self.inbox,
            "library": self.library,
            "database": self.database,
            "model": model,
            **{k: getattr(settings, k) for k in TIMED_SETTINGS},
            "stable_seconds": settings.stable_seconds,
            "log_format": "json",
            "log_level": "info",
            **overrides,
        }
        lines = [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in keys.items()]
        path = self.root / "cened.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def done_rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            return int(db.execute("SELECT count(*) FROM decisions WHERE state = 'done'").fetchone()[0])


@contextlib.contextmanager
def workspace(cache: Path) -> Iterator[Workspace]:
    """Temporary folders beside the cache, so photos can be hard-linked in rather than copied."""
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
    try:
        yield Workspace(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: Runs of one figure further apart than this, (max - min) / median, are warned of.
SPREAD_WARNING = 0.10


@dataclass(frozen=True)
class Burst:
    """One timed burst: images/s, seconds to the first ``filed`` line, CPU ms per photo (all, by thread)."""

    ips: float
    first_s: float
    cpu_ms: float | None
    #: CPU ms per photo by kind of thread (DaemonProcess.thread_cpu).
    threads_ms: dict[str, float] = field(default_factory=dict)


def settle() -> None:
    """Write back every dirty page before a timed run.

    Making the photo sets writes hundreds of megabytes, and each run's clean-up
    unlinks thousands of files; the daemon's own fsyncs would wait on that
    writeback, in whichever run came first after it.  It is not what makes the
    first runs slower (docs/benchmarks.md): they are, with it or without.
    """
    os.sync()


def drop_burst(daemon: DaemonProcess, ws: Workspace, files: Sequence[Path], tag: str) -> Burst:
    """Images/s from the first photo appearing in the inbox to the last one filed.

    Also the seconds to the first ``filed`` line: filling the pipeline (one
    batch read, decoded and scored before anything can be filed) is part of
    the end-to-end figure, and this shows how much of it.  And the daemon's
    CPU per photo over the burst, to set beside the model's alone: on a
    machine with as many busy threads as cores, the difference is what the
    model has to share its cores with.
    """
    staged = []
    for i, src in enumerate(files):
        dst = ws.staging / f"{tag}-{i:04d}{src.suffix.lower()}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        staged.append(dst)
    targets = [ws.inbox / p.name for p in staged]
    warm(staged)
    cpu_before, threads_before = daemon.cpu_seconds(), daemon.thread_cpu()
    start = time.monotonic()
    for src, dst in zip(staged, targets, strict=True):
        os.rename(src, dst)
    keys = [os.fsdecode(t) for t in targets]
    done = daemon.wait_done(keys, 60 + 5 * len(keys), f"{tag} filed")
    cpu_after, threads_after = daemon.cpu_seconds(), daemon.thread_cpu()
    wall = max(done) - start
    if cpu_before is None or cpu_after is None:
        return Burst(len(keys) / wall, min(done) - start, None)
    # A thread that ended during the burst takes its CPU with it: the kinds may sum to a little less.
    threads_ms = {k: 1000 * (v - threads_before.get(k, 0.0)) / len(keys) for k, v in threads_after.items()}
    return Burst(len(keys) / wall, min(done) - start, 1000 * (cpu_after - cpu_before) / len(keys), threads_ms)


def daemon_figures(
    plan: Plan,
    settings: Settings,
    model: Path,
    sets: dict[str, list[Path]],
    cache: Path,
    between: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Throughput per photo set, cold start and peak memory, then idle latency.

    ``between`` runs after each daemon has stopped (the model limit's rounds).
    """
    throughput: dict[str, list[float]] = {name: [] for name in sets}
    first: dict[str, list[float]] = {name: [] for name in sets}
    cpu: dict[str, list[float]] = {name: [] for name in sets}
    busy: dict[str, list[float]] = {name: [] for name in sets}
    threads: dict[str, list[dict[str, float]]] = {name: [] for name in sets}
    cold, rss = [], []
    for rep in range(plan.repeats):
        settle()
        with workspace(cache) as ws:
            daemon = DaemonProcess(ws.config(settings, model, stable_seconds=0))
            try:
                cold.append(daemon.wait_started())
                for name, files in sets.items():
                    say(f"daemon throughput: {name}, run {rep + 1}/{plan.repeats}")
                    burst = drop_burst(daemon, ws, files, f"{name}-{rep}")
                    throughput[name].append(burst.ips)
                    first[name].append(burst.first_s)
                    if burst.cpu_ms is not None:
                        cpu[name].append(burst.cpu_ms)
                        # CPU per photo x photos per second: the cores kept busy (2.0 is two).
                        busy[name].append(burst.cpu_ms * burst.ips / 1000)
                        threads[name].append(burst.threads_ms)
                rss.append(daemon.peak_rss_mib())
                _check_clean(daemon)
            finally:
                daemon.stop(30, or_kill=True)
            expected = sum(len(f) for f in sets.values())
            if ws.done_rows() != expected:
                raise RuntimeError(f"the log has {ws.done_rows()} done rows, expected {expected}")
        between()
    settle()
    latency, latency_cold, latency_rss = idle_latency(plan, settings, model, sets["150px"], cache)
    return {
        "e2e": {
            name: {
                "ips": round(statistics.median(v), 2),
                "runs": [round(x, 2) for x in v],
                "spread": spread(v),
                "first_filed_s": round(statistics.median(first[name]), 3),
                "cpu_ms_per_photo": round(statistics.median(cpu[name]), 3) if cpu[name] else None,
                "cores_busy": round(statistics.median(busy[name]), 3) if busy[name] else None,
                "cores_busy_runs": [round(x, 3) for x in busy[name]],
                "threads_ms_per_photo": _median_by_key(threads[name]),
                # Each run's, in order: which thread's cost moves from run to run.
                "threads_ms_per_photo_runs": [
                    {k: round(v, 3) for k, v in run.items()} for run in threads[name]
                ],
            }
            for name, v in throughput.items()
        },
        "latency": latency,
        "memory": {"peak_rss_mib": round(max([*rss, latency_rss]), 1)},
        "startup": {
            "cold_start_s": round(statistics.median([*cold, latency_cold]), 3),
            "runs": [round(c, 3) for c in [*cold, latency_cold]],
        },
    }


def _median_by_key(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each key's median over the runs that have it, largest first."""
    keys = {k for run in runs for k in run}
    medians = {k: round(statistics.median(run[k] for run in runs if k in run), 3) for k in keys}
    return dict(sorted(medians.items(), key=lambda kv: -kv[1]))


def spread(runs: Sequence[float]) -> float:
    """How far apart the runs of one figure are: (max - min) / median."""
    return round((max(runs) - min(runs)) / statistics.median(runs), 3)


def spread_warnings(e2e: dict[str, dict[str, Any]]) -> list[str]:
    """A line for each figure whose runs differ by more than :data:`SPREAD_WARNING`."""
    return [
        f"{name}: runs differ by {figures['spread']:.0%} ({', '.join(f'{r:g}' for r in figures['runs'])} "
        "images/s): the machine was not quiet, or something in the daemon varies from run to run"
        for name, figures in e2e.items()
        if len(figures["runs"]) > 1 and figures["spread"] > SPREAD_WARNING
    ]


def idle_latency(
    plan: Plan, settings: Settings, model: Path, files: Sequence[Path], cache: Path
) -> tuple[dict[str, Any], float, float]:
    """Single photos copied in (closed by the writer, as ``cp`` does), each once the daemon is idle."""
    waits = []
    with workspace(cache) as ws:
        daemon = DaemonProcess(ws.config(settings, model))
        try:
            cold = daemon.wait_started()
            time.sleep(plan.latency_gap_s)
            say(f"idle latency: {plan.latency_drops} drops")
            for i in range(plan.latency_drops):
                src = files[i % len(files)]
                dst = ws.inbox / f"single-{i:03d}.jpg"
                start = time.monotonic()
                shutil.copyfile(src, dst)
                key = os.fsdecode(dst)
                waits.append(daemon.wait_done([key], 60, f"drop {i} filed")[0] - start)
                time.sleep(plan.latency_gap_s)
            rss = daemon.peak_rss_mib()
            _check_clean(daemon)
        finally:
            daemon.stop(30, or_kill=True)
    figures = {
        "drops": len(waits),
        "p50_s": round(float(np.percentile(waits, 50)), 3),
        "p95_s": round(float(np.percentile(waits, 95)), 3),
        "max_s": round(max(waits), 3),
        "stable_seconds": settings.stable_seconds,
    }
    return figures, cold, rss


def _check_clean(daemon: DaemonProcess) -> None:
    if daemon.problems:
        raise RuntimeError(f"the daemon did not file every photo cleanly: {daemon.problems[:3]}")

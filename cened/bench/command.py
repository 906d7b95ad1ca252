"""``cened bench``: how fast the daemon is, next to how fast it could be.

One run measures, on the same machine and model, the figures that only mean
something side by side:

* the **limit** -- the model alone on pre-decoded tensors, at its best batch
  size, for both runtimes (so the default runtime is a measured choice);
* the **daemon** end to end, as a subprocess on temporary folders: photos
  appear in the inbox, and the clock stops at the last ``filed`` log line;
  once for small (150 px) JPEGs, once for realistic 12-megapixel ones (with
  the EXIF preview a phone embeds), and once for 12-megapixel ones without it;
* the **naive baseline** -- one file at a time, full decode, ``model.predict``
  -- the way the original notebook sorted photos;
* idle **latency** from one drop to ``filed``, **peak memory** and **cold start**.

Throughput runs rename the photos into the inbox (arrival is instant) with
``stable_seconds = 0``: the stability hold is a fixed delay per file, not a
limit on throughput, and would otherwise be timed as if it were.  Latency is
measured the way a person drops a photo (a copy, closed by its writer) with the
configured settings, hold included.  Figures are medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cened.config import Settings, load_settings
from cened.testing import LARGE, PREVIEW, SMALL, DaemonProcess, image_set

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
TARGETS = {
    "e2e_150px_vs_limit": 0.9,
    "e2e_150px_vs_naive": 10.0,
    "e2e_12mp_vs_150px": 0.5,
}
LATENCY_P95_TARGET_S = 1.0
PEAK_RSS_TARGET_MIB = 1024.0


#: 150 px photos per end-to-end burst.  A burst pays once for filling the
#: pipeline (the first photo is filed after ~0.05 s) and for emptying it; in a
#: burst of 256 that was 2-3% of the time (352 against 360 images/s for 1,024,
#: paired), which the model limit, timed on a running model, never pays.
SMALL_BURST = 1024
#: Paired rounds of ``--compare`` when ``--repeats`` is not given.
COMPARE_ROUNDS = 5


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``--quick`` shrinks everything to a smoke run."""

    repeats: int
    small_count: int
    large_count: int
    large_size: tuple[int, int]
    batch_sizes: tuple[int, ...]
    naive_count: int
    latency_drops: int
    latency_gap_s: float
    raw_min_images: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(1, 12, 3, (1600, 1200), (1, 4), 4, 3, 0.2, 8)
        else:
            plan = cls(3, SMALL_BURST, 48, LARGE, (1, 2, 4, 8, 16, 32), 32, 20, 0.5, 96)
        overrides = {
            "repeats": args.repeats,
            "small_count": args.count,
            "large_count": args.large_count,
            "latency_drops": args.latency_drops,
        }
        kept = {k: v for k, v in overrides.items() if v is not None}
        if args.batch_sizes:
            kept["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
        return cls(**{**asdict(plan), **kept})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model directory (default: the configured model)")
    parser.add_argument("--images", type=Path, help="also time the daemon on these images (a folder)")
    parser.add_argument("--repeats", type=int, help="repeats per figure; the median is reported (3)")
    parser.add_argument("--count", type=int, help=f"150 px photos per throughput run ({SMALL_BURST})")
    parser.add_argument("--large-count", type=int, help="12-megapixel photos per throughput run (48)")
    parser.add_argument("--latency-drops", type=int, help="single drops timed while idle (20)")
    parser.add_argument("--batch-sizes", help="batch sizes for the model limit, e.g. 1,4,8,16,32")
    parser.add_argument("--cache", type=Path, help="where generated photos are kept between runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--compare",
        action="append",
        metavar="KEY=VALUE,...",
        help="instead of the full run, time the daemon with these settings changed against your own, "
        f"in paired rounds (repeatable; --count photos per burst, default {SMALL_BURST}; --repeats rounds, "
        f"default {COMPARE_ROUNDS})",
    )


def run(args: argparse.Namespace) -> int:
    from cened import logsetup

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not a figure
    logsetup.configure("console", "warning", stream=sys.stderr)  # stdout is the report
    plan = Plan.from_args(args)
    settings = load_settings(args.config)
    model = (args.model or settings.model).expanduser().resolve()
    cache = (args.cache or _default_cache()).expanduser()
    if args.compare:
        result, report = _comparison(args, plan, settings, model, cache)
    else:
        result, report = measure(plan, settings, model, cache, args.images), print_report
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


def _comparison(
    args: argparse.Namespace, plan: Plan, settings: Settings, model: Path, cache: Path
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], None]]:
    """``--compare``: the paired rounds' figures, and how to print them."""
    from cened.bench import compare as bench_compare

    variants = [bench_compare.parse_variant(text) for text in args.compare]
    if not args.quick:  # the burst is the full run's; the rounds are not its repeats
        plan = replace(plan, repeats=args.repeats or COMPARE_ROUNDS)
    return bench_compare.compare(plan, settings, model, cache, variants), bench_compare.print_comparison


def measure(plan: Plan, settings: Settings, model: Path, cache: Path, images: Path | None) -> dict[str, Any]:
    """Every figure, in the order that keeps them from disturbing one another."""
    from cened.ml import modelpack

    say(f"model {model}")
    model_meta = modelpack.read_meta(model)
    input_size = model_meta.input_size
    meta = {
        "path": str(model),
        "version": model_meta.version,
        "input_size": list(input_size),
        "backend": _daemon_backend(settings, model),
    }
    large_label = "12MP" if plan.large_size == LARGE else f"{plan.large_size[0]}x{plan.large_size[1]}"
    sets = {
        "150px": image_set(cache, SMALL, plan.small_count, say=say),
        large_label: image_set(cache, plan.large_size, plan.large_count, PREVIEW, say=say),
        f"{large_label}-no-preview": image_set(cache, plan.large_size, plan.large_count, say=say),
    }
    if images is not None:
        sets["yours"] = user_images(images)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": meta,
        "settings": {k: getattr(settings, k) for k in TIMED_SETTINGS},
        "plan": asdict(plan),
        "sets": {name: _describe(files) for name, files in sets.items()},
    }
    result["stages_ms"] = {
        name: stage_costs(files[:16], input_size, settings.thumbnail_min_side) for name, files in sets.items()
    }
    # The limit is measured a round at a time between the daemon runs, so that
    # a burst of load from elsewhere hits both sides of their ratio alike; the
    # other runtime and the naive loop import TensorFlow, so they come last.
    pool = decoded(sets["150px"], input_size)
    limits = limit_rates(model, settings, meta["backend"], pool, plan)

    def limit_round() -> None:
        for rates in limits:
            rates.measure_round()

    result.update(daemon_figures(plan, settings, model, sets, cache, between=limit_round))
    result["raw"] = raw_limits(model, settings, limits, plan)
    result["naive"] = {
        name: naive_throughput(
            model, files[: plan.naive_count if name == "150px" else max(2, plan.naive_count // 4)], plan
        )
        for name, files in sets.items()
    }
    result["machine"]["load_after"] = list(os.getloadavg())
    result["ratios"], result["targets"] = ratios(result, large_label)
    return result


# -- photos ----------------------------------------------------------------


def user_images(folder: Path) -> list[Path]:
    from cened.config import DEFAULT_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DEFAULT_EXTENSIONS)
    if not files:
        raise SystemExit(f"cened bench: no images in {folder}")
    return files


def _describe(files: Sequence[Path]) -> dict[str, Any]:
    sizes = [f.stat().st_size for f in files]
    return {"count": len(files), "mean_mb": round(statistics.fmean(sizes) / 1e6, 3)}


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cened" / "bench"


# -- the machine -------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures depend on, so two runs can be compared honestly."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "ai-edge-litert",
        "pillow",
        "simplejpeg",
        "opencv-python-headless",
        "numpy",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_before": list(os.getloadavg()),
    }


# -- in-process figures --------------------------------------------------------


def stage_costs(
    files: Sequence[Path], input_size: tuple[int, int], thumbnail_min_side: int
) -> dict[str, float]:
    """Median milliseconds per photo for each step of ``pipeline.prepare``, on one thread."""
    from cened.ml import imaging

    read, digest, decode = [], [], []
    for path in files:
        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        t2 = time.perf_counter()
        imaging.decode(data, input_size, thumbnail_min_side=thumbnail_min_side)
        t3 = time.perf_counter()
        read.append(t1 - t0)
        digest.append(t2 - t1)
        decode.append(t3 - t2)
    return {
        k: round(statistics.median(v) * 1000, 3)
        for k, v in (("read", read), ("sha256", digest), ("decode", decode))
    }


class ModelRates:
    """Model-only images/s of one runtime on pre-decoded pixels, by batch size.

    With several model copies (``workers``), as many callers each keep one
    copy busy with calls of that batch size, as the daemon's scorer threads do.
    """

    def __init__(
        self, model: Path, backend: str, threads: int, pool: np.ndarray, plan: Plan, workers: int = 1
    ) -> None:
        from cened.ml.classifying import Classifier

        self.plan = plan
        self.pool = pool
        self.classifier: Any = Classifier(model, backend=backend, threads=threads, workers=workers)  # type: ignore[arg-type]
        self.backend = backend
        self.workers: int = self.classifier.workers
        self.label = backend if self.workers == 1 else f"{backend}×{self.workers}"
        self.runs: dict[int, list[float]] = {batch: [] for batch in plan.batch_sizes}
        self.cpu_ms: dict[int, list[float]] = {batch: [] for batch in plan.batch_sizes}

    def measure_round(self) -> None:
        """One rate per batch size; sizes take turns, so a burst of load hits them all alike."""
        say(f"model limit: {self.label}")
        for batch in self.plan.batch_sizes:
            rate, cpu_ms = _predict_rate(
                self.classifier.predict, self.pool, batch, self.plan.raw_min_images, self.workers
            )
            self.runs[batch].append(rate)
            self.cpu_ms[batch].append(cpu_ms)

    def medians(self) -> dict[str, float]:
        while len(self.runs[self.plan.batch_sizes[0]]) < self.plan.repeats:
            self.measure_round()
        self.classifier = None  # free the runtime before the next one loads
        return {str(batch): round(statistics.median(rates), 2) for batch, rates in self.runs.items()}

    def cpu_ms_per_image(self, batch: int) -> float:
        """Median CPU milliseconds (all threads) the runtime spent per image at ``batch``."""
        return round(statistics.median(self.cpu_ms[batch]), 3)


def decoded(files: Sequence[Path], input_size: tuple[int, int]) -> np.ndarray:
    from cened.ml import imaging

    return np.stack([imaging.decode(f.read_bytes(), input_size) for f in files[:64]])


def limit_rates(
    model: Path, settings: Settings, backend: str, pool: np.ndarray, plan: Plan
) -> list[ModelRates]:
    """The daemon's runtime as one model copy and, where the daemon runs several, as that many."""
    from cened.ml.classifying import model_copies, usable_cores

    copies = model_copies(backend, settings.model_workers, settings.model_threads or usable_cores())
    return [
        ModelRates(model, backend, settings.model_threads, pool, plan, workers=workers)
        for workers in dict.fromkeys((1, copies))
    ]


def raw_limits(model: Path, settings: Settings, limits: Sequence[ModelRates], plan: Plan) -> dict[str, Any]:
    """Every way of running the model alone; the limit is the best of the daemon's runtime, any copies."""
    from cened.errors import ModelError

    by_backend = {rates.label: rates.medians() for rates in limits}
    backend = limits[0].backend
    other = "keras" if backend == "tflite" else "tflite"
    with contextlib.suppress(ModelError):  # a model may ship one runtime only
        by_backend[other] = ModelRates(model, other, settings.model_threads, limits[0].pool, plan).medians()
    winner, best = max(
        ((rates, batch) for rates in limits for batch in by_backend[rates.label]),
        key=lambda pair: by_backend[pair[0].label][pair[1]],
    )
    return {
        "by_backend": by_backend,
        "backend": winner.label,
        "best_batch": int(best),
        "limit_ips": by_backend[winner.label][best],
        "cpu_ms_per_image": winner.cpu_ms_per_image(int(best)),
    }


def _daemon_backend(settings: Settings, model: Path) -> str:
    """The runtime the daemon will pick, by the same rule as :class:`cened.ml.classifying.Classifier`."""
    from cened.ml import modelpack

    if settings.backend != "auto":
        return settings.backend
    return "tflite" if modelpack.TFLITE_FILE in modelpack.read_meta(model).files else "keras"


def _predict_rate(
    predict: Callable[[np.ndarray], np.ndarray], pool: np.ndarray, batch: int, minimum: int, callers: int = 1
) -> tuple[float, float]:
    """Images/s over at least ``minimum`` images, after one untimed call of the same shape per caller.

    ``callers`` threads call at once, each on its own photos.  Also the
    process's CPU milliseconds per image (the runtime's threads, spin-waits
    included): the yardstick for the daemon's own CPU per photo.
    """
    index = np.arange(batch) % len(pool)
    calls = max(minimum, batch * callers) // (batch * callers)

    def caller(offset: int) -> None:
        for call in range(calls):
            predict(pool[(index + offset + call * batch) % len(pool)])

    with ThreadPoolExecutor(callers) as threads:
        list(threads.map(predict, [pool[index]] * callers))
        start, cpu = time.perf_counter(), time.process_time()
        list(threads.map(caller, [n * calls * batch for n in range(callers)]))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = calls * batch * callers
    return done / wall, 1000 * cpu / done


def _median_ips(measure_once: Callable[[], float], plan: Plan) -> float:
    return round(statistics.median(measure_once() for _ in range(plan.repeats)), 2)


def naive_throughput(model: Path, files: Sequence[Path], plan: Plan) -> dict[str, Any]:
    """The notebook's loop: open, decode in full, resize, ``model.predict`` one photo at a time."""
    import keras
    from PIL import Image

    from cened.ml import modelpack

    meta = modelpack.read_meta(model)
    if modelpack.KERAS_FILE not in meta.files:
        return {"ips": None, "images": 0}
    net = keras.models.load_model(model / modelpack.KERAS_FILE, compile=False)
    height, width = meta.input_size
    subset = list(files)
    say(f"naive baseline on {len(subset)} photos")

    def once() -> float:
        start = time.perf_counter()
        for path in subset:
            image = Image.open(path).convert("RGB").resize((width, height))
            net.predict(np.asarray(image, dtype=np.float32)[None], verbose=0)
        return len(subset) / (time.perf_counter() - start)

    once()  # the notebook's first call builds the graph; do not time that
    return {"ips": _median_ips(once, plan), "images": len(subset)}


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


@dataclass(frozen=True)
class Burst:
    """One timed burst: images/s, seconds to the first ``filed`` line, CPU ms per photo."""

    ips: float
    first_s: float
    cpu_ms: float | None


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
    cpu_before = daemon.cpu_seconds()
    start = time.monotonic()
    for src, dst in zip(staged, targets, strict=True):
        os.rename(src, dst)
    keys = [os.fsdecode(t) for t in targets]
    done = daemon.wait_done(keys, 60 + 5 * len(keys), f"{tag} filed")
    cpu_after = daemon.cpu_seconds()
    cpu_ms = None if cpu_before is None or cpu_after is None else 1000 * (cpu_after - cpu_before) / len(keys)
    return Burst(len(keys) / (max(done) - start), min(done) - start, cpu_ms)


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
    cold, rss = [], []
    for rep in range(plan.repeats):
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
                rss.append(daemon.peak_rss_mib())
                _check_clean(daemon)
            finally:
                daemon.stop(30, or_kill=True)
            expected = sum(len(f) for f in sets.values())
            if ws.done_rows() != expected:
                raise RuntimeError(f"the log has {ws.done_rows()} done rows, expected {expected}")
        between()
    latency, latency_cold, latency_rss = idle_latency(plan, settings, model, sets["150px"], cache)
    return {
        "e2e": {
            name: {
                "ips": round(statistics.median(v), 2),
                "runs": [round(x, 2) for x in v],
                "first_filed_s": round(statistics.median(first[name]), 3),
                "cpu_ms_per_photo": round(statistics.median(cpu[name]), 3) if cpu[name] else None,
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


# -- report ------------------------------------------------------------------------


def ratios(result: dict[str, Any], large: str) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """The ratios the targets are stated in, and whether each target is met."""
    e2e = {k: v["ips"] for k, v in result["e2e"].items()}
    naive = {k: v["ips"] for k, v in result["naive"].items()}
    limit = result["raw"]["limit_ips"]

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    values = {
        "e2e_150px_vs_limit": div(e2e["150px"], limit),
        "e2e_150px_vs_naive": div(e2e["150px"], naive["150px"]),
        "e2e_12mp_vs_150px": div(e2e[large], e2e["150px"]),
        "e2e_12mp_no_preview_vs_150px": div(e2e[f"{large}-no-preview"], e2e["150px"]),
        "e2e_12mp_vs_naive_12mp": div(e2e[large], naive[large]),
        # CPU the model costs per photo, over what the daemon spends per photo in all:
        # the most that end to end ÷ limit can reach when every core is busy.
        "model_cpu_share_150px": div(
            result["raw"]["cpu_ms_per_image"], result["e2e"]["150px"]["cpu_ms_per_photo"]
        ),
    }
    targets: dict[str, dict[str, Any]] = {
        name: {"target": f">= {goal:g}", "value": values[name], "met": (values[name] or 0) >= goal}
        for name, goal in TARGETS.items()
    }
    p95 = result["latency"]["p95_s"]
    rss = result["memory"]["peak_rss_mib"]
    targets["idle_latency_p95_s"] = {
        "target": f"<= {LATENCY_P95_TARGET_S:g}",
        "value": p95,
        "met": p95 <= LATENCY_P95_TARGET_S,
    }
    targets["peak_rss_mib"] = {
        "target": f"<= {PEAK_RSS_TARGET_MIB:g}",
        "value": rss,
        "met": rss <= PEAK_RSS_TARGET_MIB,
    }
    return values, targets


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = result["machine"]
    console.print(
        f"[bold]{m['cpu']}[/], {m['cores']} cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; load {m['load_before'][0]:.2f} → {m['load_after'][0]:.2f}"
    )
    s, model = result["settings"], result["model"]
    console.print(
        f"model {model['version']} {tuple(model['input_size'])} on {model['backend']}; "
        f"batch_size {s['batch_size']}, model_batch_size {s['model_batch_size']}, "
        f"batch_max_wait_ms {s['batch_max_wait_ms']}, "
        f"decode_threads {s['decode_threads']}, "
        f"model_threads {s['model_threads']}, model_workers {s['model_workers']}; "
        f"medians of {result['plan']['repeats']}"
    )
    table = Table(title="figures", header_style="bold")
    for column, justify in (("figure", "left"), ("value", "right"), ("unit", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for figure, value, unit in _rows(result):
        table.add_row(figure, value, unit)
    console.print(table)
    targets = Table(title="ratios and targets", header_style="bold")
    for column in ("ratio", "value", "target", "met"):
        targets.add_column(column)
    for name, t in result["targets"].items():
        targets.add_row(name, str(t["value"]), t["target"], "yes" if t["met"] else "[red]no[/]")
    for name, value in result["ratios"].items():
        if name not in result["targets"]:
            targets.add_row(name, str(value), "", "")
    console.print(targets)


def _rows(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    raw = result["raw"]
    yield (
        f"model limit ({raw['backend']}, batch {raw['best_batch']})",
        f"{raw['limit_ips']:.1f}",
        "images/s",
    )
    for backend, rates in raw["by_backend"].items():
        yield (f"  {backend} by batch size", "  ".join(f"{b}:{r:.1f}" for b, r in rates.items()), "images/s")
    for name, e2e in result["e2e"].items():
        count = result["sets"][name]["count"]
        yield (f"daemon end to end, {name} ×{count}", f"{e2e['ips']:.1f}", "images/s")
        yield ("  first of them filed after", f"{e2e['first_filed_s']:.3f}", "s")
        if e2e.get("cpu_ms_per_photo") is not None:
            yield ("  daemon CPU per photo, all threads", f"{e2e['cpu_ms_per_photo']:.2f}", "ms")
    yield ("model alone, CPU per image at the limit", f"{raw['cpu_ms_per_image']:.2f}", "ms")
    for name, naive in result["naive"].items():
        if naive["ips"] is not None:
            yield (f"naive baseline, {name}", f"{naive['ips']:.1f}", "images/s")
    for name, st in result["stages_ms"].items():
        yield (
            f"prepare per photo, {name}",
            f"read {st['read']} · sha256 {st['sha256']} · decode {st['decode']}",
            "ms, 1 thread",
        )
    lat = result["latency"]
    yield ("idle drop → filed p50 / p95", f"{lat['p50_s']:.3f} / {lat['p95_s']:.3f}", "s")
    yield ("peak RSS of the daemon", f"{result['memory']['peak_rss_mib']:.0f}", "MiB")
    yield ("cold start (spawn → started)", f"{result['startup']['cold_start_s']:.2f}", "s")


def say(message: str) -> None:
    print(f"cened bench: {message}", file=sys.stderr, flush=True)

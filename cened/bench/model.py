"""The model alone: its limit on pre-decoded pixels, the naive baseline, and what preparing costs.

The figures the daemon's end-to-end rates are set beside.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cened.bench.photos import warm
from cened.bench.plan import Plan, say
from cened.config import Settings
from cened.errors import MissingExtra, require


def stage_costs(files: Sequence[Path], input_size: tuple[int, int], settings: Settings) -> dict[str, float]:
    """Median milliseconds per photo, on one idle thread: the floor's steps, and the daemon's whole prepare.

    ``read``, ``sha256`` and ``decode`` are the least a photo can cost before the
    model; ``prepare`` is what the daemon's decode threads run for it
    (``pipeline.prepare``: the header pass for the memory budget, the same three
    steps, the near-duplicate signature and the capture time), so the two say
    how much of the daemon's work around the model is there without any contention.
    """
    from cened import pipeline
    from cened.ml import imaging

    budget = imaging.MemoryBudget(settings.decode_memory_bytes)
    warm(files)  # the reads from memory, as the daemon's bursts find them
    read, digest, decode, prepare = [], [], [], []
    for path in files:
        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        t2 = time.perf_counter()
        imaging.decode(data, input_size, thumbnail_min_side=settings.thumbnail_min_side)
        t3 = time.perf_counter()
        pipeline.prepare(path, settings, input_size, budget)
        t4 = time.perf_counter()
        read.append(t1 - t0)
        digest.append(t2 - t1)
        decode.append(t3 - t2)
        prepare.append(t4 - t3)
    return {
        k: round(statistics.median(v) * 1000, 3)
        for k, v in (("read", read), ("sha256", digest), ("decode", decode), ("prepare", prepare))
    }


class ModelRates:
    """Model-only images/s of one runtime on pre-decoded pixels, by batch size.

    Each call is :meth:`Classifier.score`, as the daemon makes it: probabilities
    and, for a model with a novelty detector, each photo's novelty.  With several
    model copies (``workers``), as many callers each keep one copy busy with
    calls of that batch size, as the daemon's scorer threads do.
    """

    def __init__(
        self,
        model: Path,
        backend: str,
        threads: int,
        pool: np.ndarray,
        plan: Plan,
        workers: int = 1,
        name: str = "",
        learned: Any = None,
    ) -> None:
        from cened.ml.classifying import Classifier

        self.plan = plan
        self.pool = pool
        self.classifier: Any = Classifier(model, backend=backend, threads=threads, workers=workers)  # type: ignore[arg-type]
        self.classifier.use(learned)  # a learned version (cened learn), as the daemon would put it on
        self.backend = backend
        self.workers: int = self.classifier.workers
        self.label = backend if self.workers == 1 else f"{backend}×{self.workers}"
        # Only the progress line: with --against two models share one label.
        self.title = f"{name}, {self.label}" if name else self.label
        self.runs: dict[int, list[float]] = {batch: [] for batch in plan.batch_sizes}
        self.cpu_ms: dict[int, list[float]] = {batch: [] for batch in plan.batch_sizes}

    def measure_round(self) -> None:
        """One rate per batch size; sizes take turns, so a burst of load hits them all alike."""
        say(f"model limit: {self.title}")
        for batch in self.plan.batch_sizes:
            rate, cpu_ms = _call_rate(
                self.classifier.score, self.pool, batch, self.plan.raw_min_images, self.workers
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


def daemon_backend(settings: Settings, model: Path) -> str:
    """The runtime the daemon will pick, by the same rule as :class:`cened.ml.classifying.Classifier`."""
    from cened.ml import modelpack

    if settings.backend != "auto":
        return settings.backend
    return "tflite" if modelpack.TFLITE_FILE in modelpack.read_meta(model).files else "keras"


def _call_rate(
    call: Callable[[np.ndarray], object], pool: np.ndarray, batch: int, minimum: int, callers: int = 1
) -> tuple[float, float]:
    """Images/s over at least ``minimum`` images, after one untimed call of the same shape per caller.

    ``callers`` threads call at once, each on its own photos.  Also the
    process's CPU milliseconds per image (the runtime's threads, spin-waits
    included): the yardstick for the daemon's own CPU per photo.
    """
    index = np.arange(batch) % len(pool)
    calls = max(minimum, batch * callers) // (batch * callers)

    def caller(offset: int) -> None:
        for n in range(calls):
            call(pool[(index + offset + n * batch) % len(pool)])

    with ThreadPoolExecutor(callers) as threads:
        list(threads.map(call, [pool[index]] * callers))
        start, cpu = time.perf_counter(), time.process_time()
        list(threads.map(caller, [n * calls * batch for n in range(callers)]))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = calls * batch * callers
    return done / wall, 1000 * cpu / done


def _median_ips(measure_once: Callable[[], float], plan: Plan) -> float:
    return round(statistics.median(measure_once() for _ in range(plan.repeats)), 2)


def naive_throughput(model: Path, files: Sequence[Path], plan: Plan) -> dict[str, Any]:
    """The notebook's loop: open, decode in full, resize, ``model.predict`` one photo at a time.

    Without TensorFlow (the light install) there is no figure, and a note says how to get one.
    """
    from PIL import Image

    from cened.ml import imaging, modelpack  # noqa: F401 - importing imaging registers the HEIF opener

    meta = modelpack.read_meta(model)
    if modelpack.KERAS_FILE not in meta.files:
        return {"ips": None, "images": 0}
    try:
        require("tensorflow", "the Keras figure")
    except MissingExtra as exc:
        say(f"no naive baseline: {exc}")
        return {"ips": None, "images": 0, "note": str(exc)}
    import keras

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

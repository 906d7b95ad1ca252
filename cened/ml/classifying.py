"""Running the model on a batch of pixels, and turning its outputs into a decision.

Two backends run the same model: LiteRT (``model.tflite``), which is the
faster of the two on a small CPU, and Keras (``model.keras``).  Both return
calibrated probabilities: logits divided by the model's fitted temperature,
then softmax, so a confidence of 0.9 means right nine times in ten.  A model
with a novelty detector (:mod:`cened.ml.novelty`) also says how unlike its
training photos each photo is, which is what sends a photo to "other".
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from cened import logsetup
from cened.errors import MissingExtra, ModelError, require
from cened.ml import modelpack, novelty
from cened.ml.modelpack import ModelMeta

if TYPE_CHECKING:
    from cened.config import Settings
    from cened.ml.versions import Learned

Backend = Literal["auto", "tflite", "keras"]


class _Runner(Protocol):
    def outputs(self, batch: Sequence[np.ndarray]) -> np.ndarray: ...


class AlbumKind(StrEnum):
    """Which kind of album a photo goes to."""

    FILE = "file"  # the album of its class
    REVIEW = "review"  # unsure between the classes
    OTHER = "other"  # none of the classes


@dataclass(frozen=True)
class Decision:
    """What to do with one image: its best class, and the album it goes to."""

    label: str
    album: str
    confidence: float
    probabilities: dict[str, float]
    kind: AlbumKind
    novelty: float | None = None

    @property
    def reason(self) -> str | None:
        if self.kind == AlbumKind.OTHER:
            return "none of the model's classes (novelty above its threshold)"
        if self.kind == AlbumKind.REVIEW:
            return "below confidence threshold"
        return None


@dataclass(frozen=True)
class Scores:
    """What the model says of a batch: class probabilities, and how novel each photo is.

    ``classes`` and ``version`` are those of the model that scored it: a
    learned version put in use meanwhile does not relabel a batch.
    """

    probabilities: np.ndarray  # (n, classes)
    novelty: np.ndarray | None  # (n,), or None for a model without a detector
    novelty_threshold: float | None = None
    classes: tuple[str, ...] = ()
    version: str = ""


@dataclass(frozen=True)
class Reading:
    """How a model's raw outputs become :class:`Scores`: the shipped model's, or a learned version's."""

    meta: ModelMeta
    detector: novelty.Detector | None
    learned: Learned | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.learned.classes if self.learned else self.meta.classes

    @property
    def version(self) -> str:
        return self.learned.version if self.learned else self.meta.version

    def with_learned(self, learned: Learned | None) -> Reading:
        """The shipped model with ``learned`` on it (None: as shipped); its examples join the detector."""
        detector = self.detector
        if learned is not None:
            if learned.base != self.meta.version:
                raise ModelError(
                    f"learned version {learned.version} was learned on model {learned.base}, "
                    f"not {self.meta.version}: run `cened learn` again, or `cened model use shipped`"
                )
            if detector is not None and len(learned.prototypes.vectors):
                detector = detector.extended(learned.prototypes.vectors, learned.prototypes.offsets)
        return Reading(self.meta, detector, learned)

    def scores(self, outputs: np.ndarray) -> Scores:
        """Probabilities and novelty from the outputs (logits, then the embedding)."""
        n = len(self.meta.classes)
        if self.learned is None:
            probabilities = softmax(outputs[:, :n], self.meta.temperature)
        else:
            probabilities = softmax(self.learned.head.logits(outputs[:, :n], outputs[:, n:]))
        if self.detector is None:
            return Scores(probabilities, None, None, self.classes, self.version)
        novel = self.detector.scores(outputs[:, n:])
        return Scores(probabilities, novel, self.detector.threshold, self.classes, self.version)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decide(
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    *,
    threshold: float,
    albums: dict[str, str],
    review_album: str,
    novelty: float | None = None,
    novelty_threshold: float | None = None,
    other_album: str = "other",
) -> Decision:
    """Pick the album for one image.

    A photo more novel than the model's threshold goes to ``other_album`` (to
    the review album when that is ""), whatever its probabilities: they only
    rank the classes against each other.  Otherwise classes that share an
    album pool their probability first, so grouping glacier and mountain makes
    a photo that is 50/50 between them a confident member of the shared album
    instead of a review case.
    """
    pooled: dict[str, float] = {}
    for name, p in zip(classes, probabilities, strict=True):
        album = albums.get(name, name)
        pooled[album] = pooled.get(album, 0.0) + float(p)
    best_album = max(pooled, key=lambda a: pooled[a])
    top = int(np.argmax(probabilities))
    confidence = pooled[best_album]
    if novelty is not None and novelty_threshold is not None and novelty > novelty_threshold:
        kind, album = AlbumKind.OTHER, other_album or review_album
    elif confidence < threshold:
        kind, album = AlbumKind.REVIEW, review_album
    else:
        kind, album = AlbumKind.FILE, best_album
    return Decision(
        label=classes[top],
        album=album,
        confidence=round(confidence, 6),
        probabilities={c: round(float(p), 6) for c, p in zip(classes, probabilities, strict=True)},
        kind=kind,
        novelty=round(novelty, 6) if novelty is not None else None,
    )


def decide_all(
    scores: Scores,
    *,
    threshold: float,
    albums: dict[str, str],
    review_album: str,
    other_album: str = "other",
) -> list[Decision]:
    """:func:`decide` for every photo of a batch, by the classes and threshold of the model that scored it."""
    novelty = scores.novelty if scores.novelty is not None else [None] * len(scores.probabilities)
    return [
        decide(
            probabilities,
            scores.classes,
            threshold=threshold,
            albums=albums,
            review_album=review_album,
            novelty=float(n) if n is not None else None,
            novelty_threshold=scores.novelty_threshold,
            other_album=other_album,
        )
        for probabilities, n in zip(scores.probabilities, novelty, strict=True)
    ]


def decide_as_configured(scores: Scores, settings: Settings) -> list[Decision]:
    """:func:`decide_all` with the thresholds and albums of ``settings``: what the daemon decides."""
    return decide_all(
        scores,
        threshold=settings.confidence_threshold,
        albums=settings.albums,
        review_album=settings.review_album,
        other_album=settings.other_album,
    )


def usable_cores() -> int:
    """The cores this process may run on: fewer than the machine's under a CPU affinity
    (``taskset``, systemd's ``CPUAffinity=``), where more threads would only queue."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def model_copies(backend: str, workers: int, threads: int) -> int:
    """How many copies of the model a :class:`Classifier` loads for these settings.

    TensorFlow spreads one call over its own thread pools, so Keras gets one
    copy; LiteRT gets ``workers``, or with 0 two wherever two threads can be shared.
    """
    return 1 if backend == "keras" else workers or min(2, threads)


class Classifier:
    """A loaded model; ``predict`` may be called from several threads at once.

    With ``workers`` > 1 (LiteRT only) the model is loaded that many times,
    each copy with its share of ``threads``, and the chunks of ``max_batch``
    photos a call is cut into run on whichever copy is free.  Single-threaded
    copies beat one multi-threaded copy once the daemon's other threads
    (decoding, filing) want the cores too: a multi-threaded call waits at every
    layer for its slowest thread, so a core taken by another thread leaves the
    rest idle, while independent copies just run at different speeds
    (``cened bench`` measures both).  ``workers=0`` picks two copies where there
    are at least two threads to share.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        backend: Backend = "auto",
        threads: int = 0,
        warm_batch: int = 1,
        max_batch: int = 0,
        workers: int = 1,
    ) -> None:
        self.meta: ModelMeta = modelpack.read_meta(model_dir)
        self.model_dir = model_dir
        detector = novelty.Detector.load(model_dir, self.meta.novelty) if self.meta.novelty else None
        # Replaced whole by use(): a batch is read by one Reading from start to end.
        self._shipped = Reading(self.meta, detector)
        self.reading = self._shipped
        # The runners return the logits and, with a detector, the embedding after them.
        self.width = len(self.meta.classes) + (detector.width if detector else 0)
        self.threads = threads or usable_cores()
        # Photos per model call (0: all at once).  Smaller calls can be faster per
        # photo, as their activations stay in the CPU caches.
        self.max_batch = max_batch
        has_tflite = modelpack.TFLITE_FILE in self.meta.files
        has_keras = modelpack.KERAS_FILE in self.meta.files
        if backend == "auto":
            backend = "tflite" if has_tflite else "keras"
        if backend == "tflite" and not has_tflite:
            raise ModelError(f"{model_dir} has no {modelpack.TFLITE_FILE}")
        if backend == "keras" and not has_keras:
            raise ModelError(f"{model_dir} has no {modelpack.KERAS_FILE}")
        self.backend: str = backend
        self.workers = model_copies(backend, workers, self.threads)
        per_worker = max(1, self.threads // self.workers)
        self._free: queue.SimpleQueue[_Runner] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(self.workers, "model") if self.workers > 1 else None
        # Loading and warming up print to stderr from C++; keep that in the structured log.
        with logsetup.native_stderr_logged("cened.ml.classifying"):
            for _ in range(self.workers):
                runner = self._load(backend, per_worker)
                self._warm_up(runner, min(warm_batch, max_batch or warm_batch))
                self._free.put(runner)

    @classmethod
    def from_settings(cls, settings: Settings, *, warm_batch: int = 1, learned: bool = True) -> Classifier:
        """The classifier the daemon, ``cened classify`` and the benchmark run, as configured.

        With ``learned``, the learned version in use (``cened model list``) is put on it.
        """
        classifier = cls(
            settings.model,
            backend=settings.backend,
            threads=settings.model_threads,
            warm_batch=warm_batch,
            max_batch=settings.model_batch_size,
            workers=settings.model_workers,
        )
        if learned:
            from cened.ml.versions import VersionStore

            classifier.use(VersionStore(settings.learned_dir).load_active())
        return classifier

    def use(self, learned: Learned | None) -> None:
        """Put a learned version on the shipped model (None: the shipped model alone), between batches."""
        self.reading = self._shipped.with_learned(learned)

    @property
    def detector(self) -> novelty.Detector | None:
        return self.reading.detector

    def _load(self, backend: str, threads: int) -> _Runner:
        if backend == "tflite":
            return _TFLiteRunner(
                self.model_dir / modelpack.TFLITE_FILE, self.meta.input_size, threads, self.width
            )
        return _KerasRunner.load(self.model_dir / modelpack.KERAS_FILE, self.meta, threads)

    def _warm_up(self, runner: _Runner, batch: int) -> None:
        """Neither the first photo nor the first full batch pays for graph building or allocation.

        Ending on 1 leaves the runner shaped for the idle case, a single photo.
        """
        for size in dict.fromkeys((batch, 1)):
            outputs = runner.outputs(np.zeros((size, *self.meta.input_size, 3), dtype=np.uint8))
            if not np.isfinite(outputs).all():
                # A broken export (e.g. weights left out of a LiteRT file) gives NaN,
                # which decide() would turn into confident filing in the first album.
                raise ModelError(f"the {self.backend} model in {self.model_dir} gives non-finite outputs")

    @property
    def version(self) -> str:
        return self.reading.version

    @property
    def classes(self) -> tuple[str, ...]:
        return self.reading.classes

    def predict(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities for uint8 images ``(H, W, 3)``, one row per image.

        :meth:`logits` divided by the model's temperature, then softmax.
        """
        return self.score(pixels).probabilities

    def score(self, pixels: Sequence[np.ndarray]) -> Scores:
        """Calibrated probabilities and, with a detector, each photo's novelty: one model call per chunk."""
        reading = self.reading  # once: a version put in use meanwhile applies from the next batch
        return reading.scores(self.outputs(pixels))

    def logits(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """The model's raw class outputs for uint8 images ``(H, W, 3)``, before the temperature.

        ``cened evaluate`` fits and checks the calibration on these.
        """
        return self.outputs(pixels)[:, : len(self.meta.classes)]

    def outputs(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Logits, then the embedding when there is a detector: ``(n, width)``.

        A list of decoded photos is taken as it is, not stacked: the LiteRT
        runner copies each photo straight into the model's input tensor.
        """
        expected = (*self.meta.input_size, 3)
        for image in pixels:
            if image.shape != expected:
                raise ValueError(f"expected {expected} pixels, got {image.shape}")
        step = self.max_batch or len(pixels) or 1
        chunks = [pixels[i : i + step] for i in range(0, len(pixels), step)]
        if self._pool is None or len(chunks) < 2:
            parts = [self._outputs(chunk) for chunk in chunks]
        else:
            parts = list(self._pool.map(self._outputs, chunks))
        return np.concatenate(parts) if parts else np.zeros((0, self.width), dtype=np.float32)

    def _outputs(self, chunk: Sequence[np.ndarray]) -> np.ndarray:
        """One model call on whichever copy is free (waiting for one if none is)."""
        runner = self._free.get()
        try:
            return runner.outputs(chunk)
        finally:
            self._free.put(runner)


class _KerasRunner:
    def __init__(self, model: Any, input_size: tuple[int, int]) -> None:
        import tensorflow as tf

        h, w = input_size
        # A fixed signature with a free batch axis: one trace, whatever the batch size.
        self._fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)],
        )

    @classmethod
    def load(cls, path: Path, meta: ModelMeta, threads: int) -> _KerasRunner:
        try:
            require("tensorflow", "the keras backend")
        except MissingExtra as exc:  # a model error, so that a bench or a fallback can go without it
            raise ModelError(" ".join(line.strip() for line in exc.lines())) from exc
        import tensorflow as tf

        _set_tf_threads(tf, threads)
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise ModelError(f"cannot load {path}: {exc}") from exc
        modelpack.check_shapes(model, meta)
        if meta.novelty:
            # model.keras is the classifier as trained; the embedding is grown on it
            # here exactly as it was for the LiteRT export.
            model = novelty.with_embedding(model, meta.novelty["layers"])
        return cls(model, meta.input_size)

    def outputs(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self._fn(np.stack(batch).astype(np.float32)))


def keras_outputs(model: Any, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Outputs of a Keras model still in memory, as the Keras backend computes them once it is saved.

    Training fits the temperature and the detector on these before there is a
    model directory to load; everything else goes through :class:`Classifier`.
    """
    run = keras_function(model, (pixels.shape[1], pixels.shape[2]))
    return np.concatenate([run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def keras_function(model: Any, input_size: tuple[int, int]) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """The Keras backend's call of an in-memory model, traced once for any batch size."""
    return _KerasRunner(model, input_size).outputs


def tflite_function(
    path: Path, input_size: tuple[int, int], threads: int = 0
) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """The LiteRT backend's call of a model file before it is in a model directory.

    Training fits the "other" detector on the outputs of the file the daemon
    will run, which for an int8 export differ a little from Keras's.
    """
    return _TFLiteRunner(path, input_size, threads or usable_cores(), None).outputs


class _TFLiteRunner:
    """LiteRT needs a fixed input shape; one interpreter is resized to each batch's exact size.

    Only growing the tensor arena to a new largest batch costs anything; resizing
    below that is free (XNNPACK reshapes in place).  That beats both padding a
    partial batch, which computes the padding, and one interpreter per size,
    each with its own copy of the weights.  ``Classifier`` warms it at the
    daemon's batch size.
    """

    def __init__(self, path: Path, input_size: tuple[int, int], threads: int, width: int | None) -> None:
        from cened.ml._tflite import Interpreter

        shape = (*input_size, 3)
        try:
            self._interpreter = Interpreter(model_content=path.read_bytes(), num_threads=threads)
            detail = self._interpreter.get_input_details()[0]
            if tuple(detail["shape"][1:]) != shape:
                raise ModelError(f"tflite input {tuple(detail['shape'][1:])} does not match metadata")
            self._input = detail["index"]
            self._output = self._interpreter.get_output_details()[0]["index"]
            self._resize(1)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot load the LiteRT model: {exc}") from exc
        out = self._interpreter.get_output_details()[0]["shape"]
        if width is not None and tuple(out[1:]) != (width,):
            raise ModelError(f"{path} outputs {tuple(out[1:])} values per photo; its metadata says {width}")

    def _resize(self, size: int) -> None:
        shape = [size, *self._interpreter.get_input_details()[0]["shape"][1:]]
        self._interpreter.resize_tensor_input(self._input, shape)
        self._interpreter.allocate_tensors()
        self._size = size

    def outputs(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        if len(batch) != self._size:
            self._resize(len(batch))
        # Each uint8 photo is converted as it is copied into the input tensor: one
        # pass, where stacking, casting to float32 and set_tensor() made three.
        # The view must be gone before invoke(), hence no name is kept for it.
        for row, image in enumerate(batch):
            self._interpreter.tensor(self._input)()[row] = image
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def _set_tf_threads(tf: object, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)  # type: ignore[attr-defined]
        tf.config.threading.set_inter_op_parallelism_threads(2)  # type: ignore[attr-defined]
    except RuntimeError:
        pass  # already initialised in this process (tests); the first setting stands

"""The on-disk format of a cened model: one directory, one metadata file.

Everything that must agree between training, evaluation and the daemon (class
names, input size, how pixels are prepared, the calibration temperature, which
weight files exist and their hashes) lives in ``metadata.json`` beside the
weights, and is read and checked here and nowhere else.  ``models/README.md``
documents the same format for people.

A model directory holds:

* ``metadata.json`` -- a :class:`ModelMeta`;
* ``model.keras`` -- a Keras 3 model mapping a float32 batch of RGB pixels in
  0..255, shape ``(N, H, W, 3)``, to *logits* of shape ``(N, len(classes))``.
  Normalisation belongs inside the model, so the daemon never needs to know
  which backbone produced it;
* optionally ``model.tflite`` -- the same function exported for LiteRT, which
  is faster on small CPUs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cened.errors import ModelError
from cened.hashing import sha256_file

FORMAT = "cened-model/1"
METADATA_FILE = "metadata.json"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
NOVELTY_FILE = "novelty.npy"  # the "other" detector's prototypes (cened.ml.novelty)
OTHER_FILE = "other.npz"  # its linear detector, where one was fitted with negatives (cened.ml.novelty)
REPLAY_FILE = "replay.npz"  # what learning keeps of the training data (cened.ml.learning)
#: How pixels are prepared before the model sees them; the only one defined so far.
PREPROCESSING = "rgb-exif-bilinear-0-255"


@dataclass(frozen=True)
class ModelMeta:
    """What a model promises about itself; written by training, checked at load."""

    name: str
    version: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width)
    temperature: float = 1.0
    preprocessing: str = PREPROCESSING
    format: str = FORMAT
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    training: dict[str, Any] = field(default_factory=dict)
    # The "other" detector (cened.ml.novelty): layers, k, threshold, how it was fitted; empty if none.
    novelty: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["input_size"] = list(self.input_size)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        try:
            meta = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                classes=tuple(str(c) for c in data["classes"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                temperature=float(data.get("temperature", 1.0)),
                preprocessing=str(data.get("preprocessing", PREPROCESSING)),
                format=str(data.get("format", FORMAT)),
                files={str(k): str(v) for k, v in data.get("files", {}).items()},
                training=dict(data.get("training", {})),
                novelty=dict(data.get("novelty", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"metadata is malformed: {exc!r}") from exc
        if meta.format != FORMAT:
            raise ModelError(f"unknown model format {meta.format!r} (expected {FORMAT!r})")
        if meta.preprocessing != PREPROCESSING:
            raise ModelError(f"unknown preprocessing {meta.preprocessing!r}")
        if len(meta.classes) < 2 or len(set(meta.classes)) != len(meta.classes):
            raise ModelError("metadata needs at least two distinct class names")
        if meta.temperature <= 0:
            raise ModelError("temperature must be positive")
        if meta.novelty and not {"layers", "k", "threshold"} <= set(meta.novelty):
            raise ModelError("the novelty detector's metadata needs layers, k and threshold")
        if min(meta.input_size) < 8:
            raise ModelError(f"input size {meta.input_size} is too small")
        return meta


def read_meta(model_dir: Path) -> ModelMeta:
    """Read and check ``metadata.json`` and the hashes of the files it lists."""
    meta_path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        what = "is a file, not a model directory" if os.path.lexists(model_dir) else "does not exist"
        raise ModelError(f"model directory {model_dir} {what}")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path} is missing")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {meta_path}: {exc}") from exc
    meta = ModelMeta.from_dict(data)
    if KERAS_FILE not in meta.files and TFLITE_FILE not in meta.files:
        raise ModelError(f"{meta_path} lists neither {KERAS_FILE} nor {TFLITE_FILE}")
    for name, expected in meta.files.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"{path} is missing (listed in {METADATA_FILE})")
        if sha256_file(path) != expected:
            raise ModelError(f"{path} does not match the sha256 in {METADATA_FILE}")
    return meta


def write_meta(model_dir: Path, meta: ModelMeta) -> ModelMeta:
    """Hash the weight files present and write ``metadata.json`` atomically."""
    files = {
        name: sha256_file(model_dir / name)
        for name in (KERAS_FILE, TFLITE_FILE, NOVELTY_FILE, OTHER_FILE, REPLAY_FILE)
        if (model_dir / name).is_file()
    }
    meta = ModelMeta(**{**asdict(meta), "files": files})
    tmp = model_dir / (METADATA_FILE + ".tmp")
    tmp.write_text(meta.to_json(), encoding="utf-8")
    tmp.replace(model_dir / METADATA_FILE)
    return meta


def save_keras(
    model: Any, model_dir: Path, meta: ModelMeta, *, tflite: bool = False, tflite_float16: bool = False
) -> ModelMeta:
    """Save a Keras model (and optionally its LiteRT export) with its metadata.

    The model is checked against the metadata first, so a directory that this
    function wrote always loads.  ``tflite_float16`` stores the LiteRT weights
    as float16 (half the bytes; computation stays float32 on CPU).
    """
    check_shapes(model, meta)
    model_dir.mkdir(parents=True, exist_ok=True)
    # Only the weights ship: a compiled model would also save its optimizer's
    # state, which for AdamW is two more copies of every weight.
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        model.save(model_dir / KERAS_FILE)
    finally:
        model.optimizer = optimizer
    if tflite:
        (model_dir / TFLITE_FILE).write_bytes(export_tflite(model, float16=tflite_float16))
    return write_meta(model_dir, meta)


def check_shapes(model: Any, meta: ModelMeta) -> None:
    """Fail unless ``model`` takes ``(N, H, W, 3)`` and gives one logit per class."""
    in_shape = tuple(model.inputs[0].shape[1:])
    out_shape = tuple(model.outputs[0].shape[1:])
    if in_shape != (*meta.input_size, 3):
        raise ModelError(f"model input {in_shape} does not match metadata {(*meta.input_size, 3)}")
    if out_shape != (len(meta.classes),):
        raise ModelError(f"model output {out_shape} does not match {len(meta.classes)} classes")


def export_tflite(model: Any, *, float16: bool = False, int8: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to a LiteRT flatbuffer (the batch axis stays free).

    ``from_keras_model`` is used because converting a hand-made concrete
    function of a Keras 3 model silently drops its variables (garbage logits).
    ``float16`` halves the file; the daemon's tests compare it with Keras.
    ``int8`` (calibration photos) makes a full-integer model: :func:`export_int8`.
    """
    if int8 is not None:
        return export_int8(model, int8)[0]
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())


def export_int8(model: Any, photos: np.ndarray) -> tuple[bytes, tuple[str, ...]]:
    """A full-integer LiteRT model calibrated on ``photos`` (uint8 ``(n, H, W, 3)``), float in and out.

    On CPUs with int8 dot products (VNNI, ARM dotprod) XNNPACK runs it at about
    half the CPU of float (docs/benchmarks.md).  Two kinds of layers stay float:
    the embedding's tail (its poolings, normalisations and concatenation: one
    int8 scale for logits and embedding together made the embedding coarse),
    and every layer whose int8 output is off by more than
    :data:`INT8_MAX_ERROR` of a quantization step on the calibration photos
    (:func:`int8_errors`; the stem and first depthwise convolution, fed by the
    raw picture, are the usual ones).  Returns the model and the names of those layers.
    """
    noisy = tuple(name for name, error in int8_errors(model, photos).items() if error > INT8_MAX_ERROR)
    return bytes(_int8_debugger(model, photos, noisy).get_nondebug_quantized_model()), noisy


def int8_errors(model: Any, photos: np.ndarray) -> dict[str, float]:
    """Each int8 layer's output error on ``photos``: root mean square, in quantization steps.

    LiteRT's quantization debugger runs the int8 model beside the float one, layer by layer.
    """
    import csv
    import io

    debugger = _int8_debugger(model, photos, ())
    debugger.run()
    stats = io.StringIO()
    debugger.layer_statistics_dump(stats)
    stats.seek(0)
    return {
        row["tensor_name"]: math.sqrt(float(row["mean_squared_error"])) / float(row["scale"])
        for row in csv.DictReader(stats)
        if float(row["scale"]) > 0
    }


def _int8_debugger(model: Any, photos: np.ndarray, floats: Sequence[str]) -> Any:
    """LiteRT's quantization debugger of ``model`` calibrated on ``photos``, with ``floats`` kept float."""
    import tensorflow as tf

    def representative() -> Any:
        for photo in photos:
            yield [photo[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(FLOAT_TAIL_OPS), denylisted_nodes=list(floats)
    )
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options
    )


#: A layer whose int8 output is off by more than this share of a quantization step
#: (root mean square, on the calibration photos) stays float.  Rounding alone is
#: 0.29 of a step; LiteRT's selective-quantization guide suggests 0.7.
INT8_MAX_ERROR = 0.5


#: Operations an int8 export keeps in float: what the embedding is made of after the
#: layers it taps (global pooling, unit normalisation, scaling, concatenation).
FLOAT_TAIL_OPS = (
    "CONCATENATION",
    "L2_NORMALIZATION",
    "MEAN",
    "SUM",
    "RSQRT",
    "MUL",
    "MAXIMUM",
    "SQRT",
    "DIV",
)

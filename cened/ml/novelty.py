"""The "other" decision: is a photo like anything the model was trained on?

A classifier's probabilities only compare its classes with each other: a
portrait gets a confident "glacier" because glacier is the least unlike class.
So the model also returns an *embedding* of each photo, and a photo whose
embedding is far from every training photo is novel, whatever the
probabilities say (k-nearest-neighbour distance, Sun et al. 2022).

The embedding concatenates the L2-normalised, globally pooled activations of a
few layers: the penultimate features alone collapse towards the six classes
after fine-tuning, while earlier blocks still describe texture and layout,
which is what tells a document or a face from a mountain.  Training photos are
summarised as per-class prototypes (spherical k-means), so the model pack
carries a few hundred vectors instead of every training photo, and the
distance costs a small matrix product per photo.  The threshold is the
distance below which ``1 - rejection_rate`` of the validation photos fall.

Distance alone files photos that resemble a scene in the embedding (a sea
floor next to the sea, a sky next to the mountains, a room next to the
buildings).  Where the model pack carries a *linear* detector
(:class:`Linear`, ``other.npz``), it decides instead: a logistic regression of
"none of the classes" against the training photos on the standardised
embedding, fitted with photos of other kinds and with small crops of the
training photos as negatives (:mod:`cened.training.other`), so it learns which
directions of the embedding leave the classes, not only how far.  The
prototypes then serve the user's albums (:mod:`cened.ml.learning`): a photo
within reach of one of its examples is never "other", whatever the linear
score says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import threadpoolctl

from cened.errors import ModelError
from cened.ml import modelpack

#: Layers pooled into the embedding, by their names in :mod:`cened.training.backbone`.
DEFAULT_LAYERS = ("pool", "block10_add", "block14_add", "block15_project_bn")


@dataclass(frozen=True)
class NoveltyConfig:
    """How the detector is fitted (stored in the model's metadata)."""

    layers: tuple[str, ...] = DEFAULT_LAYERS
    prototypes: int = 600  # over all classes, split in proportion to their training photos
    k: int = 1
    # Share of validation photos the threshold sends to "other"; a little under the 1.5% aimed
    # at, since a threshold set at the target lands above it on other photos about half the time.
    rejection_rate: float = 0.0145
    seed: int = 20261126
    # The linear detector, fitted when there are negatives (cened.training.other):
    # L2 penalty (scikit-learn's C), views of each training photo (1: itself, 2: and its
    # mirror, 3: and a crop with colour jitter), and the negatives cut from training photos.
    c: float = 0.01
    linear_views: int = 2
    crops: int = 3000
    crop_area: tuple[float, float] = (0.06, 0.16)
    # Negatives are made to look like the training photos: a centre square of this side, JPEG this quality.
    negative_side: int = 150
    negative_quality: int = 95
    # Each training photo once more among the positives, re-encoded as a JPEG of a quality in this
    # range: camera previews carry such artefacts (None: no such view, as packs before it).
    reencoded: tuple[int, int] | None = (70, 90)


@dataclass(frozen=True)
class Linear:
    """A linear score on the standardised embedding: the log-odds that a photo is none of the classes.

    ``threshold`` is the score above which ``rejection_rate`` of the
    validation photos fall.
    """

    mean: np.ndarray  # (d,) float32
    scale: np.ndarray  # (d,) float32, positive
    weights: np.ndarray  # (d,) float32, on the standardised embedding
    bias: float
    threshold: float

    @cached_property
    def _folded(self) -> tuple[np.ndarray, float]:
        """Weights and bias on the raw embedding: one dot product per photo."""
        w = (self.weights / self.scale).astype(np.float32)
        return w, float(self.bias - float(self.mean.astype(np.float64) @ w.astype(np.float64)))

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        w, b = self._folded
        return (embeddings.astype(np.float32, copy=False) @ w).astype(np.float64) + b

    def save(self, model_dir: Path) -> None:
        np.savez(
            model_dir / modelpack.OTHER_FILE,
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            weights=self.weights.astype(np.float32),
            bias=np.float64(self.bias),
            threshold=np.float64(self.threshold),
        )

    @classmethod
    def load(cls, model_dir: Path) -> Linear:
        with np.load(model_dir / modelpack.OTHER_FILE, allow_pickle=False) as f:
            linear = cls(
                f["mean"].astype(np.float32),
                f["scale"].astype(np.float32),
                f["weights"].astype(np.float32),
                float(f["bias"]),
                float(f["threshold"]),
            )
        if not (linear.mean.shape == linear.scale.shape == linear.weights.shape and linear.mean.ndim == 1):
            raise ValueError("mean, scale and weights must be vectors of one length")
        if not (linear.scale > 0).all():
            raise ValueError("the scale must be positive")
        return linear


@dataclass(frozen=True)
class Detector:
    """What sends a photo to "other": prototypes of the training photos, and a linear score if fitted.

    Without ``linear`` a photo's novelty is its cosine distance to the k-th
    nearest prototype, and ``reach`` is the threshold.  With it, novelty is the
    linear score and its threshold decides; the prototypes a user's albums
    added (the last ``learned`` rows) still take in every photo within their
    reach, whose novelty is then at most the threshold.
    """

    prototypes: np.ndarray  # (n, d) float32, unit rows
    k: int
    reach: float  # the cosine distance within which a prototype takes a photo in
    # Added to the similarity to each prototype: how much farther than ``reach`` it
    # reaches (a user's album, cened.ml.learning); None for the shipped prototypes alone.
    offsets: np.ndarray | None = None
    linear: Linear | None = None
    learned: int = 0  # how many of the prototypes, at the end, are a user's examples

    @property
    def threshold(self) -> float:
        """The novelty above which a photo is none of the classes."""
        return self.linear.threshold if self.linear is not None else self.reach

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Each photo's novelty: the linear score, or the distance to the prototypes without one."""
        embeddings = embeddings.astype(np.float32, copy=False)
        if self.linear is None:
            return self.distances(embeddings)
        novelty = self.linear.scores(embeddings)
        if self.learned:
            start = len(self.prototypes) - self.learned
            taken = self.distances(embeddings, start) <= self.reach
            novelty = np.where(taken, np.minimum(novelty, self.linear.threshold), novelty)
        return novelty

    def distances(self, embeddings: np.ndarray, start: int = 0) -> np.ndarray:
        """Cosine distance to the k-th nearest prototype from ``start`` on (0 = a prototype itself)."""
        prototypes = self.prototypes[start:]
        similarity = (prototypes @ embeddings.astype(np.float32, copy=False).T).T
        if self.offsets is not None:
            similarity += self.offsets[start:]
        k = min(self.k, len(prototypes))
        kth = np.partition(similarity, -k, axis=1)[:, -k]
        return (1.0 - kth).astype(np.float64)

    def extended(self, prototypes: np.ndarray, offsets: np.ndarray) -> Detector:
        """This detector with more prototypes (a user's examples), each reaching ``offsets`` farther."""
        own = self.offsets if self.offsets is not None else np.zeros(len(self.prototypes), np.float32)
        return replace(
            self,
            prototypes=np.concatenate([self.prototypes, prototypes.astype(np.float32)]),
            offsets=np.concatenate([own, offsets.astype(np.float32)]),
            learned=self.learned + len(prototypes),
        )

    def with_linear(self, linear: Linear | None) -> Detector:
        return replace(self, linear=linear)

    @property
    def width(self) -> int:
        return int(self.prototypes.shape[1])

    def save(self, model_dir: Path) -> None:
        """The shipped prototypes (``novelty.npy``) and the linear detector (``other.npz``) if any."""
        np.save(model_dir / modelpack.NOVELTY_FILE, self.prototypes.astype(np.float16), allow_pickle=False)
        if self.linear is not None:
            self.linear.save(model_dir)
        else:
            (model_dir / modelpack.OTHER_FILE).unlink(missing_ok=True)

    @classmethod
    def load(cls, model_dir: Path, info: dict[str, Any]) -> Detector:
        """The detector of a model directory; BLAS runs single-threaded from then on.

        The product with the prototypes is small, and a multi-threaded BLAS
        spreads it over every core and spins there, costing more CPU than the
        product itself and taking the cores the model copies run on.  The
        linear detector is loaded where the metadata names one (``linear``);
        a model pack from before it has none and decides by distance.
        """
        threadpoolctl.threadpool_limits(1, user_api="blas")
        try:
            prototypes = np.load(model_dir / modelpack.NOVELTY_FILE, allow_pickle=False).astype(np.float32)
            linear = Linear.load(model_dir) if info.get("linear") else None
            detector = cls(prototypes, int(info["k"]), float(info["threshold"]), linear=linear)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"the novelty detector in {model_dir} cannot be read: {exc}") from exc
        if prototypes.ndim != 2 or not 1 <= detector.k <= len(prototypes):
            raise ModelError(f"{model_dir / modelpack.NOVELTY_FILE} does not fit its metadata")
        if linear is not None and linear.mean.shape != (detector.width,):
            raise ModelError(f"{model_dir / modelpack.OTHER_FILE} does not fit {modelpack.NOVELTY_FILE}")
        return detector


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(x: np.ndarray, n: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """``n`` unit centroids of unit vectors ``x`` (k-means++ seeding, cosine assignment).

    Written out here (a dozen lines of numpy) because the detector is fitted
    wherever a model is trained, including the test suite, which has no
    scikit-learn; and scikit-learn's k-means is Euclidean, not spherical.
    """
    n = min(n, len(x))
    centres = [x[rng.integers(len(x))]]
    nearest = 1.0 - x @ centres[0]
    for _ in range(1, n):
        weights = np.maximum(nearest, 0.0) ** 2
        pick = rng.choice(len(x), p=weights / weights.sum()) if weights.sum() > 0 else rng.integers(len(x))
        centres.append(x[pick])
        nearest = np.minimum(nearest, 1.0 - x @ x[pick])
    c = np.stack(centres)
    for _ in range(iterations):
        assign = np.argmax(x @ c.T, axis=1)
        for j in range(n):
            members = x[assign == j]
            if len(members):
                c[j] = members.sum(axis=0)
        c = normalise(c)
    return c.astype(np.float32)


def fit(
    train: np.ndarray, labels: np.ndarray, validation: np.ndarray, cfg: NoveltyConfig
) -> tuple[Detector, np.ndarray]:
    """Prototypes per class from the training embeddings, and the threshold from the validation ones.

    Returns the detector and the validation photos' scores.
    """
    rng = np.random.default_rng(cfg.seed)
    classes = np.unique(labels)
    parts = []
    for c in classes:
        members = train[labels == c]
        share = max(cfg.k, round(cfg.prototypes * len(members) / len(train)))
        parts.append(spherical_kmeans(members, share, rng))
    # Stored as float16: the threshold is set on the prototypes as they will be loaded.
    prototypes = np.concatenate(parts).astype(np.float16).astype(np.float32)
    provisional = Detector(prototypes, cfg.k, math.inf)
    val_scores = provisional.distances(validation)
    threshold = float(np.quantile(val_scores, 1.0 - cfg.rejection_rate))
    return Detector(prototypes, cfg.k, threshold), val_scores


def with_embedding(model: Any, layers: Sequence[str]) -> Any:
    """A Keras model that returns the logits and the embedding side by side, as one tensor.

    One output keeps the LiteRT runner a single copy out of one tensor; the
    first ``len(classes)`` columns are the logits, the rest the embedding.
    Built from standard layers only, so the LiteRT converter takes it.
    """
    import keras

    parts = []
    for name in layers:
        x = model.get_layer(name).output
        if len(x.shape) == 4:
            x = keras.layers.GlobalAveragePooling2D(name=f"novelty_gap_{name}")(x)
        parts.append(keras.layers.UnitNormalization(name=f"novelty_norm_{name}")(x))
    embedding = keras.layers.Concatenate(name="novelty_concat")(parts) if len(parts) > 1 else parts[0]
    # Each part has unit length; scaled so that the whole embedding does too.
    embedding = keras.layers.Rescaling(1.0 / math.sqrt(len(parts)), name="novelty_embedding")(embedding)
    both = keras.layers.Concatenate(name="logits_and_embedding")([model.outputs[0], embedding])
    return keras.Model(model.inputs, both, name=f"{model.name}_with_embedding")

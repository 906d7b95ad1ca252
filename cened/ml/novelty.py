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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    rejection_rate: float = 0.015  # share of validation photos the threshold sends to "other"
    seed: int = 20261126


@dataclass(frozen=True)
class Detector:
    """Prototypes of the training photos' embeddings, and the distance beyond which a photo is novel."""

    prototypes: np.ndarray  # (n, d) float32, unit rows
    k: int
    threshold: float
    # Added to the similarity to each prototype: how much farther than the threshold it
    # reaches (a user's album, cened.ml.learning); None for the shipped prototypes alone.
    offsets: np.ndarray | None = None

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine distance of each embedding to its k-th nearest prototype (0 = a prototype itself)."""
        similarity = (self.prototypes @ embeddings.astype(np.float32, copy=False).T).T
        if self.offsets is not None:
            similarity += self.offsets
        kth = np.partition(similarity, -self.k, axis=1)[:, -self.k]
        return (1.0 - kth).astype(np.float64)

    def extended(self, prototypes: np.ndarray, offsets: np.ndarray) -> Detector:
        """This detector with more prototypes, each reaching ``offsets`` farther."""
        own = self.offsets if self.offsets is not None else np.zeros(len(self.prototypes), np.float32)
        return Detector(
            np.concatenate([self.prototypes, prototypes.astype(np.float32)]),
            self.k,
            self.threshold,
            np.concatenate([own, offsets.astype(np.float32)]),
        )

    @property
    def width(self) -> int:
        return int(self.prototypes.shape[1])

    def save(self, model_dir: Path) -> None:
        np.save(model_dir / modelpack.NOVELTY_FILE, self.prototypes.astype(np.float16), allow_pickle=False)

    @classmethod
    def load(cls, model_dir: Path, info: dict[str, Any]) -> Detector:
        """The detector of a model directory; BLAS runs single-threaded from then on.

        The product with the prototypes is small, and a multi-threaded BLAS
        spreads it over every core and spins there, costing more CPU than the
        product itself and taking the cores the model copies run on.
        """
        threadpoolctl.threadpool_limits(1, user_api="blas")
        try:
            prototypes = np.load(model_dir / modelpack.NOVELTY_FILE, allow_pickle=False).astype(np.float32)
            detector = cls(prototypes, int(info["k"]), float(info["threshold"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"the novelty detector in {model_dir} cannot be read: {exc}") from exc
        if prototypes.ndim != 2 or not 1 <= detector.k <= len(prototypes):
            raise ModelError(f"{model_dir / modelpack.NOVELTY_FILE} does not fit its metadata")
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
    val_scores = provisional.scores(validation)
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

"""Learning from the user: a head on top of the shipped model, fitted in seconds.

The shipped network is not retrained.  Each photo it sees already gives two
things: its six class logits and its embedding (:mod:`cened.ml.novelty`).  A
learned version adds a *residual head* on those::

    logits = [z / T, 0 for each new album] + s * (e @ W) + b

so a head with ``W = 0, b = 0`` is the shipped model exactly, and the L2
penalty on ``W`` keeps it close to it: corrections bend the decision where
the user said, new albums get logits of their own, and the six classes keep
the shipped accuracy (measured on the shipped validation embeddings).

The user does not have the training photos, so the model pack carries a
*replay set* (``replay.npz``): the embeddings and logits of a stratified
sample of training photos, which keeps the head from forgetting the six
classes, and of the whole validation split, on which every learned version
is compared with the one in use.  Embeddings are stored as int8 with a scale
per row (a quarter of float32; the quantisation moves no validation decision).

"Other" keeps working for new albums: each example becomes a prototype of
the novelty detector, and a new album's prototypes accept photos up to a
distance learnt from its own examples (their leave-one-out nearest-neighbour
distances), never less than the shipped threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cened.errors import ModelError
from cened.ml import modelpack

REPLAY_FILE = modelpack.REPLAY_FILE
#: Training photos per class kept in the replay set of a model pack.
REPLAY_PER_CLASS = 100
#: The fewest examples from which a new album is learned.
MIN_EXAMPLES = 20
#: The most examples of one label that are kept and learned from (an album of 20,000
#: photos, or that many corrections): a fixed sample, the photos first in :func:`rank`'s
#: order, so it stays the same as photos are added, and memory and the state folder stay
#: bounded (each example is a prototype, and the fit holds every one).
MAX_EXAMPLES = 1000
#: Share of a user's labelled photos held back to compare versions (by sha256, so stable).
HELD_BACK = 0.2
#: Quantile of a new album's leave-one-out distances that its prototypes accept.
ALBUM_RADIUS_QUANTILE = 0.8


@dataclass(frozen=True)
class Labelled:
    """Photos with a label: what the model said of each (logits, embedding), and the label's name."""

    logits: np.ndarray  # (n, base classes) float32, raw (before the temperature)
    embeddings: np.ndarray  # (n, d) float32, unit rows
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Sequence[int] | np.ndarray) -> Labelled:
        index = np.asarray(index, dtype=np.int64)
        return Labelled(self.logits[index], self.embeddings[index], tuple(self.labels[i] for i in index))

    @classmethod
    def empty(cls, classes: int, width: int) -> Labelled:
        return cls(np.zeros((0, classes), np.float32), np.zeros((0, width), np.float32), ())

    def __add__(self, other: Labelled) -> Labelled:
        return Labelled(
            np.concatenate([self.logits, other.logits]),
            np.concatenate([self.embeddings, other.embeddings]),
            self.labels + other.labels,
        )


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows with one float32 scale each."""
    scale = np.maximum(np.abs(x).max(axis=1), 1e-12) / 127.0
    return np.round(x / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None]


@dataclass(frozen=True)
class Replay:
    """What a model pack keeps of its training data: a sample of the training split and all of validation."""

    train: Labelled
    validation: Labelled

    def save(self, model_dir: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for part, data in (("train", self.train), ("validation", self.validation)):
            q, scale = quantise(data.embeddings)
            arrays[f"{part}_embeddings"], arrays[f"{part}_scale"] = q, scale
            arrays[f"{part}_logits"] = data.logits.astype(np.float16)
            arrays[f"{part}_labels"] = np.asarray(data.labels, dtype=str)
        save_npz(model_dir / REPLAY_FILE, compressed=True, **arrays)

    @classmethod
    def load(cls, model_dir: Path) -> Replay:
        path = model_dir / REPLAY_FILE
        if not path.is_file():
            raise ModelError(
                f"{model_dir} has no {REPLAY_FILE}, so it cannot learn: "
                "`cened train --other-only` writes one for a trained model"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                parts = [
                    Labelled(
                        z[f"{part}_logits"].astype(np.float32),
                        dequantise(z[f"{part}_embeddings"], z[f"{part}_scale"]),
                        tuple(str(s) for s in z[f"{part}_labels"]),
                    )
                    for part in ("train", "validation")
                ]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path} cannot be read: {exc}") from exc
        return cls(*parts)


def replay_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``per_class`` photos of each label, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    picked = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in np.unique(labels)]
    return np.concatenate(picked)


@dataclass(frozen=True)
class Head:
    """The residual head of a learned version (see the module docstring)."""

    classes: tuple[str, ...]  # the shipped classes first, then the user's albums
    weights: np.ndarray  # (d, len(classes)) float32
    bias: np.ndarray  # (len(classes),) float32
    temperature: float  # the shipped model's, applied to its own logits
    scale: float = 10.0  # embeddings have unit length; this puts s * e @ W on the logits' scale

    def logits(self, base_logits: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        n, base = base_logits.shape
        z = np.zeros((n, len(self.classes)), dtype=np.float64)
        z[:, :base] = base_logits / self.temperature
        return z + self.scale * (embeddings.astype(np.float32) @ self.weights) + self.bias


@dataclass(frozen=True)
class FitConfig:
    l2: float = 1e-3
    steps: int = 400
    learning_rate: float = 0.05


def fit_head(
    base_classes: tuple[str, ...],
    classes: tuple[str, ...],
    temperature: float,
    replay: Labelled,
    examples: Labelled,
    cfg: FitConfig = FitConfig(),
) -> Head:
    """Fit the residual head on the replay sample and the user's examples (full-batch Adam, numpy).

    Each user label weighs at least as much in total as a shipped class does
    in the replay sample, so twenty examples of a new album are not drowned
    by six hundred landscapes, nor fifty corrections by the photos they correct.
    """
    if classes[: len(base_classes)] != base_classes:
        raise ValueError("a head's classes start with the shipped ones")
    data = replay + examples
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in data.labels], dtype=np.int64)
    per_class = len(replay) / max(1, len(set(replay.labels)))
    weights = np.ones(len(data))
    for label in set(examples.labels) - set(base_classes):
        mine = np.flatnonzero(np.asarray(data.labels[len(replay) :]) == label) + len(replay)
        weights[mine] = max(1.0, per_class / len(mine))
    weights /= weights.sum()
    x = data.embeddings.astype(np.float64)
    head = Head(
        classes,
        np.zeros((x.shape[1], len(classes)), np.float64),
        np.zeros(len(classes), np.float64),
        temperature,
    )
    base = head.logits(data.logits, np.zeros_like(x))  # the shipped logits, zero for new albums
    onehot = np.eye(len(classes))[y]
    w, b = head.weights, head.bias
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    for t in range(1, cfg.steps + 1):
        z = base + head.scale * (x @ w) + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * weights[:, None]
        grads = (head.scale * (x.T @ g) + cfg.l2 * w, g.sum(axis=0))
        for i, (param, grad) in enumerate(zip((w, b), grads, strict=True)):
            m[i] = 0.9 * m[i] + 0.1 * grad
            v[i] = 0.999 * v[i] + 0.001 * grad * grad
            param -= cfg.learning_rate * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    return Head(classes, w.astype(np.float32), b.astype(np.float32), temperature, head.scale)


@dataclass(frozen=True)
class Prototypes:
    """The user's examples as extra prototypes of the novelty detector, each with how far it reaches."""

    vectors: np.ndarray  # (n, d) float32, unit rows
    offsets: np.ndarray  # (n,) float32: added to a photo's similarity to this prototype


def album_radius(embeddings: np.ndarray, threshold: float) -> float:
    """How far from its examples a new album still accepts a photo: the shipped threshold at least."""
    if len(embeddings) < 2:
        return threshold
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = 1.0 - similarity.max(axis=1)
    return max(threshold, float(np.quantile(nearest, ALBUM_RADIUS_QUANTILE)))


def fit_prototypes(examples: Labelled, base_classes: tuple[str, ...], threshold: float) -> Prototypes:
    """Every example is a prototype; a new album's reach is :func:`album_radius` of its own examples."""
    offsets = np.zeros(len(examples), np.float32)
    labels = np.asarray(examples.labels, dtype=str)
    for label in sorted(set(examples.labels) - set(base_classes)):
        mine = labels == label
        offsets[mine] = album_radius(examples.embeddings[mine], threshold) - threshold
    return Prototypes(examples.embeddings.astype(np.float32), offsets)


def sample(shas: Sequence[str], limit: int = MAX_EXAMPLES) -> set[str]:
    """The ``limit`` of ``shas`` first in :func:`rank`'s order: a sample that new photos change little."""
    return set(sorted(set(shas), key=rank)[:limit])


def rank(sha256: str) -> str:
    """A photo's place in the order examples are held back in: stable, and unrelated to its content."""
    return hashlib.sha256(f"held-back:{sha256}".encode()).hexdigest()


def save_npz(path: Path, *, compressed: bool = False, **arrays: Any) -> None:
    """Write arrays whole, then rename: a reader never finds half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
    tmp.replace(path)

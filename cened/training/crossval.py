"""Cross-validation of a training recipe: one model per fold, each measured on the photos it never saw.

One split of 1,311 photos cannot rank two recipes a point apart; K folds over
every photo can, with a spread.  The trunk's activations are cached once for
all photos (the frozen layers are the same in every fold), and each fold's
result is saved as it ends, so a run cut off resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cened.ml.classifying import keras_outputs
from cened.training import dataset, train
from cened.training.train import TrainConfig


@dataclass(frozen=True)
class Fold:
    """One fold's model measured on its held-out photos."""

    fold: int
    photos: int
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class CrossValidation:
    """Every fold's figure, and the held-out logits of every photo (out of fold)."""

    folds: tuple[Fold, ...]
    logits: np.ndarray  # (n, classes), each row from the fold model that never saw the photo
    labels: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))

    @property
    def sd(self) -> float:
        """Standard deviation of the fold accuracies (ddof 1)."""
        return float(np.std([f.accuracy for f in self.folds], ddof=1)) if len(self.folds) > 1 else 0.0

    @property
    def se(self) -> float:
        """Standard error of the mean over folds: what tells two recipes apart (2 se)."""
        return self.sd / math.sqrt(len(self.folds))

    def as_dict(self, recipe: TrainConfig) -> dict[str, Any]:
        pooled = float((self.logits.argmax(1) == self.labels).mean())
        return {
            "folds": [asdict(f) for f in self.folds],
            "mean": self.mean,
            "sd": self.sd,
            "se": self.se,
            "pooled_accuracy": pooled,
            "photos": len(self.labels),
            "recipe": asdict(recipe),
        }


def cross_validate(
    cfg: TrainConfig,
    listing: dataset.Listing,
    folds: np.ndarray,
    checkpoint: Path,
    *,
    verbose: int = 0,
    say: Callable[[str], None] = print,
) -> CrossValidation:
    """Train ``cfg`` once per fold (``folds``: a fold number per photo) and measure each on its fold."""
    import keras

    checkpoint.mkdir(parents=True, exist_ok=True)
    n_folds = int(folds.max()) + 1
    n, n_cls = len(listing.paths), len(listing.classes)
    logits = np.full((n, n_cls), np.nan, dtype=np.float32)
    results: dict[int, Fold] = {}
    for k in range(n_folds):
        saved = checkpoint / f"fold-{k}.npz"
        if saved.is_file():
            with np.load(saved) as done:
                if np.array_equal(done["held"], np.flatnonzero(folds == k)):
                    logits[done["held"]] = done["logits"]
                    results[k] = Fold(**json.loads(str(done["fold"])))
                    say(f"fold {k}: {results[k].accuracy:.4f}, from {saved}")
    todo = [k for k in range(n_folds) if k not in results]
    if todo:
        size = (cfg.input_size, cfg.input_size)
        pixels = dataset.load_pixels(listing.paths, size)
        trunk = train.build(cfg, n_cls).trunk  # frozen ImageNet layers: the same in every fold
        everything = np.arange(n)
        say(f"caching {cfg.views} views of {n} photos")
        cache = train.cache_activations(trunk, pixels, cfg.views, cfg.seed, everything, cfg.batch_size)
    for k in todo:
        t0 = time.monotonic()
        keras.backend.clear_session()
        keras.utils.set_random_seed(cfg.seed)
        held, kept = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        built = train.build(cfg, n_cls)
        rows = np.concatenate([v * n + kept for v in range(cfg.views)])
        say(f"fold {k}: training on {len(kept)} photos, measuring on {len(held)}")
        train.fit(
            cfg,
            built,
            (cache[rows], cache[held]),
            pixels,
            listing.labels,
            (kept, held),
            verbose=verbose,
            say=say,
            timings={},
        )
        out = keras_outputs(built.model, pixels[held], cfg.batch_size)
        logits[held] = out
        accuracy = float((out.argmax(1) == listing.labels[held]).mean())
        results[k] = Fold(k, len(held), accuracy, round(time.monotonic() - t0, 1))
        tmp = checkpoint / f"fold-{k}.tmp.npz"
        np.savez(tmp, held=held, logits=out, fold=json.dumps(asdict(results[k])))
        tmp.replace(checkpoint / f"fold-{k}.npz")
        say(f"fold {k}: {accuracy:.4f} in {results[k].seconds:.0f} s")
    return CrossValidation(tuple(results[k] for k in range(n_folds)), logits, listing.labels)

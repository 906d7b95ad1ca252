"""Listing a labelled image folder and splitting it the same way every time.

Training and evaluation both call :func:`split_indices` with the seed and
fraction stored in the model's metadata, so ``cened evaluate`` measures the
model on exactly the images it never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cened.ml.imaging import decode

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Listing:
    """Image files under ``<root>/<class>/`` of one or more roots, sorted, with integer labels."""

    roots: tuple[Path, ...]
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, one per path

    def subset(self, idx: np.ndarray) -> Listing:
        return Listing(self.roots, self.classes, tuple(self.paths[i] for i in idx), self.labels[idx])


def list_images(roots: Path | Sequence[Path], classes: Sequence[str] | None = None) -> Listing:
    """List ``<root>/<class>/*`` of each root in turn; sorting makes the split independent of directory order.

    ``classes`` pins the label order (a model's classes) so an evaluation folder
    with a missing or extra class cannot silently shift the labels.
    """
    roots = (roots,) if isinstance(roots, Path) else tuple(roots)
    found: set[str] = set()
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"data directory {root} does not exist")
        found |= {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    names = tuple(classes) if classes is not None else tuple(sorted(found))
    unknown = found - set(names)
    if unknown:
        where = ", ".join(map(str, roots))
        raise ValueError(f"{where} has folders that are not model classes: {sorted(unknown)}")
    paths: list[Path] = []
    labels: list[int] = []
    for root in roots:
        for label, name in enumerate(names):
            folder = root / name
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise ValueError(f"no images found under {', '.join(f'{r}/<class>/' for r in roots)}")
    return Listing(roots, names, tuple(paths), np.asarray(labels, dtype=np.int64))


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices: each class contributes ``round(n * fraction)``.

    Each class draws from its own generator seeded by ``(seed, class)``, so
    adding images to one class does not reshuffle the others.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng([seed, int(c)]).permutation(idx)
        n_val = round(len(idx) * val_fraction)
        val.append(np.sort(perm[:n_val]))
        train.append(np.sort(perm[n_val:]))
    return np.concatenate(train), np.concatenate(val)


def data_hash(listing: Listing) -> str:
    """sha256 over every file's class, name and content: names what a model was trained on."""
    digest = hashlib.sha256()
    for path, label in zip(listing.paths, listing.labels, strict=True):
        file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{listing.classes[label]}/{path.name}\t{file_hash}\n".encode())
    return digest.hexdigest()


def load_pixels(
    paths: Sequence[Path], size: tuple[int, int], progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """Decode files with the daemon's own :func:`decode`, into one uint8 array."""
    out = np.empty((len(paths), *size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode(path.read_bytes(), size)
        if progress is not None:
            progress(1)
    return out

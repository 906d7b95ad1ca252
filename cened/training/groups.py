"""Near-duplicate groups of training photos, and splits and folds that keep each group together.

The data set holds the same scene more than once (another frame of a burst,
a re-edited copy, a shifted crop).  A validation photo whose twin was trained
on measures memory, not generalisation, so splits and cross-validation folds
assign whole groups.

Two photos are linked when their local features agree geometrically: ORB
keypoints matched both ways and a similarity transform fitted by RANSAC with
at least ``MIN_INLIERS`` inliers.  That proof is costly, so it is only run on
candidate pairs: photos whose difference hashes are close, or that are among
each other's nearest neighbours by a small grey thumbnail or by colour.
Layout alone (a sunset over the sea, a street canyon) makes many distinct
photos hash alike; the geometric check tells them from true copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

#: Inliers of the fitted transform that prove two photos show the same scene.
MIN_INLIERS = 15
#: Difference-hash distance (of 64 bits) that makes two photos a candidate pair.
DHASH_CANDIDATE = 8
#: Nearest neighbours by thumbnail and by colour that each photo is checked against.
NEIGHBOURS = 3
#: The side photos are scaled to for ORB, as the data set's photos are about that size.
ORB_SIDE = 300


Keypoints = tuple[np.ndarray, np.ndarray | None]


def _descriptors(path: Path) -> tuple[np.uint64, np.ndarray, np.ndarray, Keypoints]:
    """dHash, a normalised 12x12 grey thumbnail, an HSV histogram, and ORB keypoints of one photo."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} cannot be read")
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    dhash = np.uint64(int("".join("1" if b else "0" for b in bits), 2))
    thumb = cv2.resize(grey, (12, 12), interpolation=cv2.INTER_AREA).astype(np.float32).flatten()
    thumb -= thumb.mean()
    thumb /= np.linalg.norm(thumb) + 1e-6
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).flatten()
    hist = np.sqrt(hist / (hist.sum() + 1e-6)).astype(np.float32)  # Hellinger: cosine of square roots
    height = round(grey.shape[0] * ORB_SIDE / grey.shape[1])
    orb = cv2.ORB_create(nfeatures=500, fastThreshold=10, edgeThreshold=15, patchSize=15)
    keypoints, features = orb.detectAndCompute(cv2.resize(grey, (ORB_SIDE, height)), None)
    return dhash, thumb, hist, (np.float32([k.pt for k in keypoints]), features)


def _neighbours(x: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of each row and its ``k`` nearest rows by cosine (rows are unit vectors)."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(x), 1024):
        sims = x[start : start + 1024] @ x.T
        rows = np.arange(start, min(start + 1024, len(x)))
        sims[rows - start, rows] = -np.inf
        for i, near in zip(rows, np.argpartition(-sims, k, axis=1)[:, :k], strict=True):
            pairs.update((min(i, j), max(i, j)) for j in near)
    return pairs


def _inliers(a: Keypoints, b: Keypoints) -> int:
    import cv2

    (pa, da), (pb, db) = a, b
    if da is None or db is None or len(da) < 8 or len(db) < 8:
        return 0
    matches = [m for m in cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db) if m.distance < 50]
    if len(matches) < 6:
        return 0
    src = pa[[m.queryIdx for m in matches]]
    dst = pb[[m.trainIdx for m in matches]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0)
    return 0 if transform is None else int(mask.sum())


def near_duplicate_groups(
    paths: Sequence[Path], progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, int]:
    """A group number per photo (0..n_groups-1), and how many pairs were linked."""
    import cv2

    cv2.setNumThreads(1)
    described = []
    for path in paths:
        described.append(_descriptors(path))
        if progress is not None:
            progress(1)
    hashes = np.array([d[0] for d in described], dtype=np.uint64)
    candidates = _neighbours(np.stack([d[1] for d in described]), NEIGHBOURS)
    candidates |= _neighbours(np.stack([d[2] for d in described]), NEIGHBOURS)
    for start in range(0, len(hashes), 1024):
        close = np.bitwise_count(hashes[start : start + 1024, None] ^ hashes[None, :]) <= DHASH_CANDIDATE
        rows, cols = np.nonzero(close)
        candidates.update((int(i) + start, int(j)) for i, j in zip(rows, cols, strict=True) if j > i + start)
    parent = np.arange(len(paths))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links = 0
    for i, j in sorted(candidates):
        if _inliers(described[i][3], described[j][3]) >= MIN_INLIERS:
            links += 1
            ri, rj = root(i), root(j)
            parent[max(ri, rj)] = min(ri, rj)
    _, groups = np.unique([root(i) for i in range(len(paths))], return_inverse=True)
    return groups.astype(np.int64), links


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, about ``val_fraction`` of each class held out, whole groups at a time."""
    folds = round(1 / val_fraction)
    if not 2 <= folds <= len(labels):
        raise ValueError("val_fraction must be between 1/n and 1/2")
    assigned = grouped_folds(labels, groups, folds, seed)
    return np.flatnonzero(assigned != 0), np.flatnonzero(assigned == 0)


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per photo: stratified by class, each group in one fold (scikit-learn)."""
    from sklearn.model_selection import StratifiedGroupKFold

    assigned = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        assigned[held] = fold
    return assigned

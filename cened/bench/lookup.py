"""How long finding a new photo's near-duplicates takes against a library of each size.

The daemon compares every photo it files with the signatures of the whole
library (cened.grouping), so this cost grows with the library, which a
benchmark that starts from an empty one never shows.  The library here is
random signatures (distinct photos by construction, so the hashes rule out
nearly all of them, as they do for distinct real photos); the photos looked
up are the benchmark's own 150 px set.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cened import grouping
from cened.ml import imaging, similar


def lookup_costs(
    files: Sequence[Path], input_size: tuple[int, int], sizes: Sequence[int], seed: int = 0
) -> dict[str, float]:
    """Median milliseconds to look one photo up, by library size, on one thread."""
    queries = [similar.signature(imaging.decode(path.read_bytes(), input_size)) for path in files]
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for size in sizes:
        raw = rng.integers(0, 256, (size, similar.SIZE), dtype=np.uint8)
        raw[:, 0] = similar.VERSION
        library = similar.Signatures.of([bytes(row) for row in raw])
        shots = np.full(size, np.nan)
        times = []
        for sig in queries:
            t0 = time.perf_counter()
            grouping.kinds(sig, None, library, shots)
            times.append(time.perf_counter() - t0)
        out[str(size)] = round(statistics.median(times) * 1000, 3)
    return out

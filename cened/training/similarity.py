"""``cened near-duplicates``: how well the signature (cened.ml.similar) tells copies from other photos.

On labelled folders of photos, two rates for each limit:

- **found**: of copies made here from a sample of the photos, as a messenger, an
  editor or a camera would make them (:data:`EDITS`), the share the limit
  takes for the same picture as their original;
- **false**: of every pair of distinct photos of one class (``--pairs`` at
  most, drawn at random), the share it takes for the same picture.  Photos of
  one class share their layout and colours (sunsets, street canyons), so this
  is the hard case; a few are real near-copies (another frame of a burst), and
  count against the limit all the same.

The photos are read as the daemon reads them (cened.ml.imaging.decode, at the
model's input size), so the signatures are the ones the daemon computes.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from cened.ml import imaging, similar

Edit = Callable[[Image.Image, random.Random], bytes]


def _jpeg(im: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    im.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _reencoded(im: Image.Image, rng: random.Random) -> bytes:
    return _jpeg(im, rng.randint(40, 95))


def _halved(im: Image.Image, rng: random.Random) -> bytes:
    w, h = im.size
    return _jpeg(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR), rng.randint(70, 95))


def _cropped(im: Image.Image, rng: random.Random) -> bytes:
    """5% of each side's length cut away, split at random between its two ends."""
    w, h = im.size
    cut_w, cut_h = round(w * 0.05), round(h * 0.05)
    left, top = rng.randint(0, cut_w), rng.randint(0, cut_h)
    return _jpeg(im.crop((left, top, w - (cut_w - left), h - (cut_h - top))), 90)


def _stripped(im: Image.Image, rng: random.Random) -> bytes:
    """Saved again without its metadata (and so without an EXIF orientation): what many services do."""
    return _jpeg(Image.frombytes(im.mode, im.size, im.tobytes()), rng.randint(80, 95))


def _recoloured(im: Image.Image, rng: random.Random) -> bytes:
    """A light edit: brightness, contrast and saturation each within ±10-15%."""
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.9, 1.1))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.85, 1.15))
    return _jpeg(im, 90)


def _forwarded(im: Image.Image, rng: random.Random) -> bytes:
    """Through a messenger: halved, stripped, recompressed hard."""
    w, h = im.size
    return _jpeg(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR), rng.randint(40, 70))


#: The copies made of each sampled photo, by name.
EDITS: dict[str, Edit] = {
    "re-encoded q40-95": _reencoded,
    "halved": _halved,
    "cropped 5%": _cropped,
    "metadata stripped": _stripped,
    "colours edited": _recoloured,
    "forwarded (halved, q40-70)": _forwarded,
}


@dataclass(frozen=True)
class Rates:
    """What one limit does: the share of copies found, and of distinct pairs taken for copies."""

    limits: dict[str, float]
    found: float
    found_by_edit: dict[str, float]
    false: float
    false_pairs: int
    pairs: int


def measure(
    folders: Sequence[Path],
    size: tuple[int, int],
    *,
    sample: int = 2000,
    pairs: int = 2_000_000,
    seed: int = 0,
    limits: Sequence[similar.Limits] = (similar.SAME_PICTURE, similar.BURST),
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Found and false rates of each of ``limits`` on the photos of ``folders`` (one sub-folder per class)."""
    photos = sorted(p for folder in folders for p in folder.glob("*/*") if p.is_file())
    classes = [p.parent.name for p in photos]
    say(f"signatures of {len(photos)} photos")
    originals = similar.Signatures.of([_signature(p.read_bytes(), size) for p in photos])
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(photos)), min(sample, len(photos))))
    say(f"{len(EDITS)} copies of each of {len(chosen)} photos")
    copies: dict[str, similar.Signatures] = {}
    for name, edit in EDITS.items():
        made = []
        for i in chosen:
            with Image.open(photos[i]) as im:
                made.append(_signature(edit(im.convert("RGB"), rng), size))
        copies[name] = similar.Signatures.of(made)
    by_class: dict[str, list[int]] = {}
    for i, cls in enumerate(classes):
        by_class.setdefault(cls, []).append(i)
    left, right = _distinct_pairs(by_class, pairs, np.random.default_rng(seed))
    say(f"{len(left)} pairs of distinct photos of one class")
    apart = _pair_distances(originals, left, right)
    results = []
    for limit in limits:
        found_by_edit = {
            name: float(limit.holds(*_matched(made, chosen, originals)).mean())
            for name, made in copies.items()
        }
        false = limit.holds(*apart)
        results.append(
            Rates(
                limits=asdict(limit),
                found=float(np.mean(list(found_by_edit.values()))),
                found_by_edit=found_by_edit,
                false=float(false.mean()),
                false_pairs=int(false.sum()),
                pairs=len(left),
            )
        )
    return {
        "photos": len(photos),
        "copied": len(chosen),
        "size": list(size),
        "seed": seed,
        "rates": [asdict(r) for r in results],
        "copies_percentiles": {
            name: _percentiles(*_matched(made, chosen, originals)) for name, made in copies.items()
        },
        "distinct_percentiles": _percentiles(*apart),
    }


def _signature(data: bytes, size: tuple[int, int]) -> bytes:
    return similar.signature(imaging.decode(data, size))


def _matched(
    made: similar.Signatures, chosen: Sequence[int], originals: similar.Signatures
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.asarray(chosen)
    phash = np.bitwise_count(made.phash ^ originals.phash[idx]).sum(axis=1)
    dhash = np.bitwise_count(made.dhash ^ originals.dhash[idx]).sum(axis=1)
    diff = (made.colour - originals.colour[idx]).reshape(len(idx), -1, 3)
    return phash, dhash, np.sqrt((diff**2).sum(axis=2)).mean(axis=1)


def _distinct_pairs(
    by_class: dict[str, list[int]], most: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of different photos of one class: all of them, or ``most`` drawn at random in proportion."""
    total = sum(len(m) * (len(m) - 1) // 2 for m in by_class.values())
    lefts, rights = [], []
    for members in by_class.values():
        m = np.asarray(members)
        n = len(m) * (len(m) - 1) // 2
        if n == 0:
            continue
        if total <= most:
            a, b = np.triu_indices(len(m), k=1)
        else:
            want = max(1, round(most * n / total))
            a = rng.integers(0, len(m), want * 2)
            b = rng.integers(0, len(m), want * 2)
            keep = a != b
            a, b = a[keep][:want], b[keep][:want]
        lefts.append(m[a])
        rights.append(m[b])
    return np.concatenate(lefts), np.concatenate(rights)


def _pair_distances(
    sigs: similar.Signatures, left: np.ndarray, right: np.ndarray, chunk: int = 500_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for at in range(0, len(left), chunk):
        a, b = left[at : at + chunk], right[at : at + chunk]
        phash = np.bitwise_count(sigs.phash[a] ^ sigs.phash[b]).sum(axis=1)
        dhash = np.bitwise_count(sigs.dhash[a] ^ sigs.dhash[b]).sum(axis=1)
        diff = (sigs.colour[a] - sigs.colour[b]).reshape(len(a), -1, 3)
        parts.append((phash, dhash, np.sqrt((diff**2).sum(axis=2)).mean(axis=1)))
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def _percentiles(phash: np.ndarray, dhash: np.ndarray, colour: np.ndarray) -> dict[str, list[float]]:
    qs = [0.1, 1, 2, 5, 50, 95, 98, 99, 99.9]
    return {
        "q": qs,
        "phash": np.percentile(phash, qs).round(1).tolist(),
        "dhash": np.percentile(dhash, qs).round(1).tolist(),
        "colour": np.percentile(colour, qs).round(2).tolist(),
    }

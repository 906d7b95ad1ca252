"""Near-duplicates: a perceptual signature of what the model saw, and the index it is compared in.

A photo forwarded through a messenger (re-encoded, halved, its metadata
stripped), an edited copy or another frame of a burst has other bytes than
the photo it copies, so its sha256 says nothing.  Its signature, made from the
pixels the model is given (the centre crop at the model's size), stays close:

- a 256-bit **pHash**: the signs, against their median, of the 16x16 lowest
  frequencies of the 64x64 grey image's DCT (the picture's layout);
- a 256-bit **dHash**: whether each of 16x16 grey cells is brighter than its
  right-hand neighbour (its edges);
- the **colours**: the mean CIELAB colour of each cell of a 4x4 grid.

Two photos are the same picture when all three are near (:data:`SAME_PICTURE`);
two frames of a burst, taken seconds apart, when the looser :data:`BURST` holds.
The thresholds were measured by ``cened near-duplicates`` (cened.training.similarity)
on edited copies and on distinct photos of one class: docs/usage.md gives the rates.
A 64-bit dHash alone links many distinct photos of one layout (sunsets, street
canyons), hence three parts that must all agree.

A leaf module: numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The first byte of every signature; a signature of another version is never compared.
VERSION = 2
_HASH_BYTES = 32  # 256 bits each
_GRID = 4
_COLOUR_BYTES = _GRID * _GRID * 3
SIZE = 1 + 2 * _HASH_BYTES + _COLOUR_BYTES
#: How far apart in time (seconds, by the EXIF capture time) two frames of a burst may be.
BURST_GAP_S = 2.0


@dataclass(frozen=True)
class Limits:
    """How near two signatures must be in each part: bits of pHash and dHash, colour in CIELAB units."""

    phash: int
    dhash: int
    colour: float

    def holds(self, phash: np.ndarray, dhash: np.ndarray, colour: np.ndarray) -> np.ndarray:
        return (phash <= self.phash) & (dhash <= self.dhash) & (colour <= self.colour)


#: The same picture: re-encoded, resized, cropped a little, its colours touched (measured: see above).
SAME_PICTURE = Limits(phash=100, dhash=106, colour=7.0)
#: Frames of one burst: a moved hand, a moved subject; only with capture times BURST_GAP_S apart.
BURST = Limits(phash=116, dhash=120, colour=12.0)
#: Near by either measure: what is farther is neither, whatever its capture time.
LOOSEST = Limits(
    max(SAME_PICTURE.phash, BURST.phash),
    max(SAME_PICTURE.dhash, BURST.dhash),
    max(SAME_PICTURE.colour, BURST.colour),
)


def signature(pixels: np.ndarray) -> bytes:
    """The signature (:data:`SIZE` bytes) of a ``(height, width, 3)`` uint8 RGB image."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    grey = image.convert("L")
    small = np.asarray(grey.resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    low = (_DCT @ small @ _DCT.T)[:16, :16].ravel()
    # The DC term is the mean brightness, not the layout: left out of the median.
    phash = np.packbits(low > np.median(low[1:]))
    cells = np.asarray(grey.resize((17, 16), Image.Resampling.BOX), dtype=np.int16)
    dhash = np.packbits(cells[:, 1:] > cells[:, :-1])
    grid = np.asarray(image.resize((_GRID, _GRID), Image.Resampling.BOX))
    return bytes([VERSION]) + phash.tobytes() + dhash.tobytes() + _lab8(grid.reshape(-1, 3)).tobytes()


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as a matrix: ``m @ x`` transforms the columns of ``x``."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.sqrt(2 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


_DCT = _dct_matrix(64)
_SRGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65 = np.array([0.950456, 1.0, 1.088754])


def _lab8(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``(n, 3)`` uint8 to CIELAB in 8 bits: L scaled to 0..255, a and b offset by 128.

    OpenCV's formula, in which the colour limits were first measured; by hand
    rather than through Pillow's ImageCms, for sixteen colours.
    """
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _SRGB_TO_XYZ.T) / _D65
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
    lightness = np.where(t[:, 1] > 0.008856, 116 * f[:, 1] - 16, 903.3 * t[:, 1])
    lab = np.stack(
        [lightness * 255 / 100, 500 * (f[:, 0] - f[:, 1]) + 128, 200 * (f[:, 1] - f[:, 2]) + 128], axis=1
    )
    return np.clip(np.rint(lab), 0, 255).astype(np.uint8)


@dataclass
class Signatures:
    """Many signatures as arrays, to compare one against all of them at once."""

    phash: np.ndarray  # (n, 4) uint64
    dhash: np.ndarray  # (n, 4) uint64
    colour: np.ndarray  # (n, 48) float32, L in CIELAB units

    @classmethod
    def of(cls, signatures: list[bytes]) -> Signatures:
        good = [s for s in signatures if len(s) == SIZE and s[0] == VERSION]
        if len(good) != len(signatures):
            raise ValueError("signatures of another size or version")
        raw = np.frombuffer(b"".join(good), np.uint8).reshape(len(good), SIZE)
        phash = raw[:, 1 : 1 + _HASH_BYTES].copy().view(np.uint64)
        dhash = raw[:, 1 + _HASH_BYTES : 1 + 2 * _HASH_BYTES].copy().view(np.uint64)
        lab = raw[:, 1 + 2 * _HASH_BYTES :].astype(np.float32).reshape(len(good), _GRID * _GRID, 3)
        lab[..., 0] *= 100 / 255  # OpenCV's 8-bit L back to CIELAB's 0..100
        return cls(phash, dhash, lab.reshape(len(good), _COLOUR_BYTES))

    def __len__(self) -> int:
        return len(self.phash)

    def head(self, n: int) -> Signatures:
        """The first ``n`` signatures (views, not copies)."""
        return Signatures(self.phash[:n], self.dhash[:n], self.colour[:n])

    def near(self, index: int, others: Signatures, within: Limits) -> tuple[np.ndarray, ...]:
        """Which of ``others`` are within ``within`` of signature ``index`` by both hashes, and how far.

        Returns their indices, pHash and dHash bits and colour distances.  The
        hashes go first: a few integer operations per photo rule out nearly all
        of a large library, and the colour, forty-eight floats a photo, is only
        measured on what is left.
        """
        phash = _bits(others.phash, self.phash[index])
        found = np.flatnonzero(phash <= within.phash)
        if not len(found):  # mostly: the rest is skipped, which matters in a batch of a few dozen
            return found, phash[found], phash[found], np.zeros(0, np.float32)
        dhash = _bits(others.dhash[found], self.dhash[index])
        kept = dhash <= within.dhash
        found, dhash = found[kept], dhash[kept]
        return found, phash[found], dhash, colour_distance(self.colour[index], others.colour[found])


def _bits(rows: np.ndarray, one: np.ndarray) -> np.ndarray:
    """How many bits each row of ``rows`` (n, 4 uint64) differs from ``one`` in.

    Column by column: NumPy sums a row of four three times slower than it adds four columns.
    """
    counts = np.bitwise_count(rows ^ one).astype(np.uint16)
    return sum((counts[:, i] for i in range(1, counts.shape[1])), counts[:, 0])


def appended(store: Signatures, used: int, more: Signatures) -> Signatures:
    """``store``, whose first ``used`` rows are taken, with ``more`` after them.

    The rows are written into room ``store`` has; when it is full, into a new
    store twice the size, so adding a batch costs its own rows, not the library's.
    """
    need = used + len(more)
    if need > len(store):
        room = max(need, 2 * len(store), 64)
        grown = Signatures(
            np.empty((room, *store.phash.shape[1:]), store.phash.dtype),
            np.empty((room, *store.dhash.shape[1:]), store.dhash.dtype),
            np.empty((room, *store.colour.shape[1:]), store.colour.dtype),
        )
        for mine, theirs in zip(
            (grown.phash, grown.dhash, grown.colour), (store.phash, store.dhash, store.colour), strict=True
        ):
            mine[:used] = theirs[:used]
        store = grown
    store.phash[used:need], store.dhash[used:need], store.colour[used:need] = (
        more.phash,
        more.dhash,
        more.colour,
    )
    return store


def colour_distance(one: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The mean, over the grid's cells, of the CIELAB distance between their colours."""
    diff = (others - one).reshape(len(others), _GRID * _GRID, 3)
    return np.sqrt((diff**2).sum(axis=2)).mean(axis=1)


def usable(sig: bytes | None) -> bool:
    """Whether ``sig`` is a signature of this version (rows of older versions have other ones, or none)."""
    return sig is not None and len(sig) == SIZE and sig[0] == VERSION


#: Stored for a photo this version looked at and could not sign (undecodable): not looked at again.
UNSIGNABLE = bytes([VERSION])


def current(sig: bytes | None) -> bool:
    """Whether this version has looked at the photo: a signature of it, or :data:`UNSIGNABLE`."""
    return sig is not None and sig[:1] == UNSIGNABLE

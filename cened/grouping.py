"""Near-duplicates and bursts: which photo of the library, or of its batch, a new photo belongs with.

Every photo the daemon decodes has a signature (:mod:`cened.ml.similar`) and,
when its EXIF says so, the time it was taken; both go into its journal row.
:class:`LibraryIndex` holds the signatures of the photos filed into the library,
read from the journal once and then row by row as they are added, and finds the
one a new photo is near: the same picture (:data:`Kind.SAME`), or another frame
of a burst taken seconds apart (:data:`Kind.BURST`).  What becomes of it is the
``near_duplicates`` setting's (cened.pipeline).

The first photo of a group is its lead; the others name its row (``similar_id``),
and undo and correct act on the whole group (cened.undoing).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from cened.journal import Entry, Journal, State
from cened.ml import similar
from cened.undoing import lead_of


class Kind(StrEnum):
    """How a photo is near another."""

    SAME = "near-duplicate"  # the same picture: re-encoded, resized, edited
    BURST = "burst"  # another frame, taken seconds apart


def kinds(
    sig: bytes, shot_at: float | None, others: similar.Signatures, shots: np.ndarray
) -> list[tuple[int, Kind]]:
    """The signatures of ``others`` that ``sig`` is near, nearest first, each with how.

    A burst needs both capture times, apart by more than nothing (the same
    capture time is the same picture, edited) and at most BURST_GAP_S.
    """
    if not len(others):
        return []
    one = similar.Signatures.of([sig])
    near, phash, dhash, colour = one.near(0, others, similar.LOOSEST)
    if not len(near):
        return []
    same = similar.SAME_PICTURE.holds(phash, dhash, colour)
    burst = np.zeros(len(near), bool)
    if shot_at is not None:
        gap = np.abs(shots[near] - shot_at)
        burst = (gap > 0) & (gap <= similar.BURST_GAP_S) & similar.BURST.holds(phash, dhash, colour)
    found = np.flatnonzero(same | burst)
    order = found[np.argsort(phash[found], kind="stable")]
    return [(int(near[i]), Kind.BURST if burst[i] else Kind.SAME) for i in order]


@dataclass(frozen=True)
class Match:
    """A photo in the library that a new photo is near, as its row is now."""

    row: Entry
    kind: Kind
    lead_id: int  # the first row of its group, which the new photo's row names (similar_id)


@dataclass
class LibraryIndex:
    """The signatures of the photos filed into the library, kept in step with the journal.

    Rows are only added to the journal, so a refresh reads the rows after the
    last one read.  Whether a photo is still where its row says is checked on
    the few that match, not kept here: an undo or a move by hand is seen then.
    """

    _last: int = 0
    _ids: list[int] = field(default_factory=list)
    # Arrays with room to grow (similar.appended): their first len(_ids) rows are the library's.
    _sigs: similar.Signatures = field(default_factory=lambda: similar.Signatures.of([]))
    _shots: np.ndarray = field(default_factory=lambda: np.empty(0))

    def refresh(self, journal: Journal) -> None:
        rows = journal.signed(self._last)
        if not rows:
            return
        self._last = rows[-1][0]
        kept = [row for row in rows if similar.usable(row[1])]
        if not kept:
            return
        n = len(self._ids)
        self._sigs = similar.appended(self._sigs, n, similar.Signatures.of([sig for _, sig, _ in kept]))
        if len(self._shots) < len(self._sigs):
            grown = np.full(len(self._sigs), np.nan)
            grown[:n] = self._shots[:n]
            self._shots = grown
        self._shots[n : n + len(kept)] = [np.nan if shot is None else shot for _, _, shot in kept]
        self._ids.extend(row_id for row_id, _, _ in kept)

    def match(
        self,
        journal: Journal,
        sig: bytes,
        shot_at: float | None,
        library: Path,
        apart: tuple[Path, ...],
        not_sha256: str | None = None,
    ) -> Match | None:
        """The photo in ``library`` (not in the folders ``apart``) that ``sig`` is nearest, if any.

        A photo of content ``not_sha256`` is no near-duplicate but an exact copy, and left out.
        """
        self.refresh(journal)
        n = len(self._ids)
        for index, kind in kinds(sig, shot_at, self._sigs.head(n), self._shots[:n]):
            row = journal.get(self._ids[index])
            if row is not None and row.sha256 != not_sha256 and _in_library(journal, row, library, apart):
                return Match(row, kind, lead_of(journal, row))
        return None


def _in_library(journal: Journal, row: Entry, library: Path, apart: tuple[Path, ...]) -> bool:
    """Whether ``row``'s photo is in the library now: done, not moved on since, and on disk at its size."""
    dst = row.destination
    if row.state != State.DONE or dst is None or not dst.is_relative_to(library):
        return False
    if any(dst.is_relative_to(folder) for folder in apart) or journal.successor(row.id or 0) is not None:
        return False
    try:
        st = os.lstat(dst)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == row.size

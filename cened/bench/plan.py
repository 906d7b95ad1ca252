"""How much one ``cened bench`` run measures (:class:`Plan`), and its progress lines on stderr."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from cened.bench.photos import LARGE

#: 150 px photos per end-to-end burst.  A burst pays once for filling and
#: emptying the pipeline, which the model limit, timed on a running model,
#: never pays; a long burst keeps that a small share of the time.
SMALL_BURST = 1024
#: Runs behind each figure: its median, and a spread that says whether the runs agree.
REPEATS = 5


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``--quick`` shrinks everything to a smoke run."""

    repeats: int
    small_count: int
    large_count: int
    large_size: tuple[int, int]
    #: Large HEIC photos per set: each costs the daemon a HEVC decode without its thumbnail.
    heic_count: int
    batch_sizes: tuple[int, ...]
    naive_count: int
    latency_drops: int
    latency_gap_s: float
    raw_min_images: int
    #: Library sizes the near-duplicate lookup of a photo is timed against.
    lookup_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(1, 12, 3, (1600, 1200), 2, (1, 4), 4, 3, 0.2, 8, (1_000,))
        else:
            plan = cls(REPEATS, SMALL_BURST, 48, LARGE, 16, (1, 2, 4, 8, 16, 32), 32, 20, 0.5, 96)
        overrides = {
            "repeats": args.repeats,
            "small_count": args.count,
            "large_count": args.large_count,
            "heic_count": args.heic_count,
            "latency_drops": args.latency_drops,
        }
        kept = {k: v for k, v in overrides.items() if v is not None}
        if args.batch_sizes:
            kept["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
        return cls(**{**asdict(plan), **kept})


def say(message: str) -> None:
    print(f"cened bench: {message}", file=sys.stderr, flush=True)

"""``cened near-duplicates``: measure how well near-duplicates are told apart (cened.training.similarity)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cened.config import shipped_model_dir

NAME = "near-duplicates"
HELP = "measure the near-duplicate limits: copies found, distinct photos taken for copies"
EXAMPLES = """
cened near-duplicates --data ../shared/data/intel/train ../shared/data/intel/more
cened near-duplicates --data ~/Pictures/sorted --sample 500 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="folders with one sub-folder of photos per class"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=shipped_model_dir(),
        help="its input size is used (default: the shipped)",
    )
    parser.add_argument(
        "--sample", type=int, default=2000, help="photos to make copies of (default: %(default)s)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=2_000_000,
        help="pairs of distinct photos of one class, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="for the sample and the copies (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cened.ml import modelpack
    from cened.training import similarity

    size = modelpack.read_meta(args.model).input_size
    result = similarity.measure(
        args.data,
        size,
        sample=args.sample,
        pairs=args.pairs,
        seed=args.seed,
        say=lambda line: print(f"cened near-duplicates: {line}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['photos']} photos, copies of {result['copied']}, at {size[0]}x{size[1]}")
    for rates in result["rates"]:
        limits = ", ".join(f"{k} <= {v:g}" for k, v in rates["limits"].items())
        print(f"\n{limits}")
        for edit, found in rates["found_by_edit"].items():
            print(f"  found {found:8.2%}  {edit}")
        print(f"  found {rates['found']:8.2%}  all copies")
        pairs = f"{rates['false_pairs']} of {rates['pairs']} pairs of distinct photos"
        print(f"  false {rates['false']:8.4%}  {pairs}")
    return 0

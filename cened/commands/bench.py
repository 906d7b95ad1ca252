"""``cened bench``: throughput, latency, memory and start-up time, next to the limits (cened.bench)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cened.commands import _common
from cened.config import Settings

if TYPE_CHECKING:
    from cened.bench.plan import Plan

NAME = "bench"
HELP = "measure throughput, latency, memory and start-up time"
EXAMPLES = """
cened bench --quick
cened bench --compare batch_size=8 --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cened.bench.compare import COMPARE_ROUNDS
    from cened.bench.plan import REPEATS, SMALL_BURST

    parser.add_argument("--model", type=Path, help="model directory (default: the configured model)")
    parser.add_argument("--images", type=Path, help="also time the daemon on these images (a folder)")
    parser.add_argument(
        "--repeats", type=int, help=f"repeats per figure; the median and spread are reported ({REPEATS})"
    )
    parser.add_argument("--count", type=int, help=f"150 px photos per throughput run ({SMALL_BURST})")
    parser.add_argument("--large-count", type=int, help="12-megapixel photos per throughput run (48)")
    parser.add_argument("--heic-count", type=int, help="12-megapixel HEIC photos per throughput run (16)")
    parser.add_argument("--latency-drops", type=int, help="single drops timed while idle (20)")
    parser.add_argument("--batch-sizes", help="batch sizes for the model limit, e.g. 1,4,8,16,32")
    parser.add_argument("--cache", type=Path, help="where generated photos are kept between runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--compare",
        action="append",
        metavar="KEY=VALUE,...",
        help="instead of the full run, time the daemon with these settings changed against your own, "
        f"in paired rounds (repeatable; --count photos per burst, default {SMALL_BURST}; --repeats rounds, "
        f"default {COMPARE_ROUNDS})",
    )
    modes.add_argument(
        "--against",
        type=Path,
        metavar="MODEL_DIR",
        help="instead of the full run, time the model limit of your model (or --model) and of MODEL_DIR "
        "in paired rounds, on the same runtime, copies and photos: what a model change costs in CPU",
    )


def run(args: argparse.Namespace) -> int:
    from cened import logsetup
    from cened.bench.against import against, print_against
    from cened.bench.command import machine_info, measure
    from cened.bench.plan import Plan
    from cened.bench.report import print_report

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not a figure
    logsetup.configure("console", "warning", stream=sys.stderr)  # stdout is the report
    plan = Plan.from_args(args)
    settings = _common.settings_of(args)
    model = (args.model or settings.model).expanduser().resolve()
    cache = (args.cache or _default_cache()).expanduser()
    if args.compare:
        result, report = _comparison(args, plan, settings, model, cache)
    elif args.against:
        other = args.against.expanduser().resolve()
        result = {"machine": machine_info(), **against(plan, settings, model, other, cache)}
        result["machine"]["load_after"] = list(os.getloadavg())
        report = print_against
    else:
        result, report = measure(plan, settings, model, cache, args.images), print_report
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


def _comparison(
    args: argparse.Namespace, plan: Plan, settings: Settings, model: Path, cache: Path
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], None]]:
    """``--compare``: the paired rounds' figures, and how to print them."""
    from dataclasses import replace

    from cened.bench.compare import COMPARE_ROUNDS, compare, parse_variant, print_comparison

    variants = [parse_variant(text) for text in args.compare]
    if not args.quick:  # the burst is the full run's; the rounds are not its repeats
        plan = replace(plan, repeats=args.repeats or COMPARE_ROUNDS)
    return compare(plan, settings, model, cache, variants), print_comparison


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cened" / "bench"

"""``cened learn``: learn from corrections and your albums; put the result in use if not worse."""

from __future__ import annotations

import argparse
import json

from cened.commands import _common

NAME = "learn"
HELP = "learn from corrections and your albums; use the result if not worse"
EXAMPLES = """
cened learn
cened learn --json | jq .accepted
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="put the new version in use even if it measures worse"
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON")


def run(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _common.reading_photos(args, json=args.json)
    with learn.changing(settings):
        outcome = learn.learn(settings, force=args.force, say=print if not args.json else lambda _: None)
    if args.json:
        print(json.dumps(outcome.as_dict()))
    else:
        _common.print_learned(outcome)
    return 0

"""``cened corrections``: the photos people corrected; ``--export`` copies them out as training data."""

from __future__ import annotations

import argparse
from pathlib import Path

from cened.commands import _common

NAME = "corrections"
HELP = "list human-corrected photos; export them as training data"
EXAMPLES = """
cened corrections
cened corrections --export ~/my-labels
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--export", type=Path, metavar="DIR", help="copy them into DIR/<label>/ for cened train"
    )


def run(args: argparse.Namespace) -> int:
    from cened.undoing import corrections, export_corrections

    settings = _common.settings_of(args)
    with _common.readonly_journal(settings) as journal:
        rows = corrections(journal)
    for row in rows:
        print(f"#{row.id}\t{row.label} -> {row.human_label}\t{_common.short(row.destination, settings)}")
    if args.export is not None:
        print(f"exported {export_corrections(rows, args.export)} photos to {args.export}")
    return 0

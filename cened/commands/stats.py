"""``cened stats``: files per album and their mean confidence; how often people undo and correct."""

from __future__ import annotations

import argparse
import json

from cened.commands import _common

NAME = "stats"
HELP = "counts per album, confidence, undo and correction rates"
EXAMPLES = """
cened stats
cened stats --json | jq .albums
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cened.journal import Action

    settings = _common.settings_of(args)
    with _common.readonly_journal(settings) as journal:
        stats = journal.stats()
    counts = {a: stats.actions.get(a, 0) for a in (Action.UNDONE, Action.CORRECTED, Action.SKIPPED)}
    if args.json:
        result = {
            "albums": {
                album: {
                    "files": a.files,
                    "mean_confidence": round(a.mean_confidence, 4) if a.mean_confidence is not None else None,
                }
                for album, a in stats.albums.items()
            },
            "filed": stats.filed,
            **counts,
            "undo_rate": round(stats.rate(Action.UNDONE), 4),
            "correct_rate": round(stats.rate(Action.CORRECTED), 4),
        }
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats.filed} files filed", header_style="bold")
    table.add_column("album")
    table.add_column("files", justify="right")
    table.add_column("mean confidence", justify="right")
    for album, a in stats.albums.items():
        conf = f"{a.mean_confidence:.3f}" if a.mean_confidence is not None else ""
        table.add_row(album, str(a.files), conf)
    console = Console()
    console.print(table)
    console.print(
        f"undone {counts[Action.UNDONE]} ({stats.rate(Action.UNDONE):.1%}), "
        f"corrected {counts[Action.CORRECTED]} ({stats.rate(Action.CORRECTED):.1%}), "
        f"skipped {counts[Action.SKIPPED]}"
    )
    return 0

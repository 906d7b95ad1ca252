"""``cened history``: the decision log, newest last, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cened.commands import _common
from cened.config import Settings

if TYPE_CHECKING:
    from cened.journal import Entry

NAME = "history"
HELP = "show the decision log"
EXAMPLES = """
cened history --limit 5
cened history --since 2h --json | jq 'select(.confidence < 0.8)'
cened history --file ~/Pictures/cened/albums/sea/IMG_2041.jpg
"""

#: The note on pixels that were not the photo's own (imaging.FROM_*; cened.ml is not imported here).
_PIXEL_SOURCES = {
    "exif-preview": "from the EXIF preview",
    "mpf-preview": "from the camera's MPF preview",
    "heif-thumbnail": "from the HEIF thumbnail",
    "raw-preview": "from the RAW preview",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="newest N rows (0 = all; default 50)")
    parser.add_argument("--file", type=Path, help="rows that moved this path (either end)")
    parser.add_argument("--since", help="rows since a time: 30m, 2h, 7d or ISO date/time")
    parser.add_argument("--batch", help="rows of one batch id")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    from cened.undoing import parse_since

    settings = _common.settings_of(args)
    since = parse_since(args.since) if args.since else None
    filters = {
        "since": since,
        "batch_id": args.batch,
        "file": args.file.absolute() if args.file else None,
    }
    with _common.readonly_journal(settings) as journal:
        rows = journal.history(limit=args.limit or None, **filters)
        matching = journal.count(**filters) if args.limit and len(rows) == args.limit else len(rows)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict(), ensure_ascii=False))
    else:
        _table(rows, settings)
    if matching > len(rows):
        # On stderr, so that `--json | jq` reads rows only, and the note still shows.
        print(
            f"cened: the newest {len(rows)} of {matching} rows; --limit N shows more, --limit 0 all",
            file=sys.stderr,
        )
    return 0


def _table(rows: list[Entry], settings: Settings) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from cened.journal import Action, State
    from cened.logsetup import printable

    table = Table(show_lines=False, header_style="bold")
    for column in ("id", "time", "action", "file", "→", "label", "conf", "note"):
        table.add_column(column, overflow="fold")
    for r in rows:
        action = r.action if r.state == State.DONE else f"{r.action} ({r.state})"
        dest = _common.short(r.destination, settings)
        note = r.reason or (f"undoes #{r.ref_id}" if r.ref_id else "")
        if r.human_label:
            note = f"human: {r.human_label}; {note}"
        seen = _PIXEL_SOURCES.get(r.pixel_source or "")
        if seen:
            note = f"{seen}; {note}" if note else seen
        # A photo in other is like none of the classes: its top class is only the nearest one.
        label = f"none (nearest {r.label})" if r.action == Action.OTHER and r.label else r.label or ""
        cells = (
            str(r.id),
            r.time[5:16].replace("T", " "),
            action,
            _common.short(r.source, settings),
            dest,
            label,
            f"{r.confidence:.2f}" if r.confidence is not None else "",
            printable(note),
        )
        table.add_row(*(Text(cell) for cell in cells))  # Text: a name is never read as markup
    # Not on a terminal (a pipe, a file), no width to fit: no line is folded.
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)

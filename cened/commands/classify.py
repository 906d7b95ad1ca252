"""``cened classify``: what the daemon would do with these photos; with ``--apply``, do it."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cened.commands import _common
from cened.config import Settings
from cened.errors import ExitCode

if TYPE_CHECKING:
    from cened.pipeline import Outcome

NAME = "classify"
HELP = "classify files or folders once; moves nothing without --apply"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--apply", action="store_true", help="file them as the daemon would, with log rows")


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from cened.journal import Journal
    from cened.ml.classifying import Classifier
    from cened.pipeline import Processor

    settings = _common.reading_photos(args, json=args.json)
    classifier = Classifier.from_settings(settings)
    files = list(_expand(args.paths, settings))
    # Without --apply the same Processor simulates: no database is created, nothing moves.
    journal = Journal(settings.database) if args.apply else None
    processor = Processor(classifier, journal, lambda: settings, simulate=not args.apply)
    status = ExitCode.OK
    try:
        with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
            for outcome in processor.run(files, pool):
                row = _outcome_row(outcome, applied=args.apply)
                status = status if _answered(outcome) else ExitCode.REFUSED
                _print_result(row, args.json)
    finally:
        if journal is not None:
            journal.close()
    return status


def _expand(paths: Sequence[Path], settings: Settings) -> Iterator[Path]:
    from cened.watching import scan

    for path in paths:
        if path.is_dir():
            for found in scan(path):
                if found.suffix.lower() in settings.extensions:
                    yield found
        else:
            yield path


def _outcome_row(outcome: Outcome, *, applied: bool) -> dict[str, object]:
    """One line of ``cened classify``: the decision, where the photo went (or would go), or why not."""
    from cened.journal import Action

    e = outcome.entry
    row: dict[str, object] = {"file": os.fsdecode(outcome.path), "action": outcome.fate}
    if e is not None and e.label is not None:
        row.update(label=e.label, album=e.album, confidence=e.confidence, probabilities=e.probabilities)
    if not _answered(outcome):
        error, _, detail = (outcome.reason or outcome.fate).partition(": ")
        row.update(error=error, detail=detail or None)
    elif outcome.fate == Action.DUPLICATE:
        row["reason"] = outcome.reason
    if e is not None and e.destination is not None:
        row["destination"] = os.fsdecode(e.destination)
    if applied and e is not None:
        row["id"] = e.id
    return row


def _answered(outcome: Outcome) -> bool:
    """The model classified the photo: filed in its album, or apart as a duplicate."""
    from cened.journal import Action

    return outcome.fate.classified or outcome.fate == Action.DUPLICATE


def _print_result(row: dict[str, object], as_json: bool) -> None:
    from cened.logsetup import printable

    if as_json:
        print(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
    elif "error" in row:
        print(printable(f"{row['file']}\tERROR {row['error']}\t{row.get('detail') or ''}"))
    else:
        conf = f"{row['confidence']:.3f}" if row.get("confidence") is not None else ""
        where = row.get("album") or row.get("reason") or ""
        fields = (row["file"], row["action"], where, conf, row.get("destination") or "")
        print("\t".join(printable(str(f)) for f in fields))

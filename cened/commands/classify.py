"""``cened classify``: what the daemon would do with these photos; with ``--apply``, do it.

Without ``--apply`` it is a dry run of the real filing code (``Processor`` with
``simulate``), reading the log when there is one: duplicates of photos in the
library, companions, the layout and the names already taken come out as
``--apply`` would make them.  On a terminal a progress bar runs, and a
summary per album ends the list; ``--json`` and a pipe get the rows only.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cened.commands import _common
from cened.config import Settings
from cened.errors import ConfigError, ExitCode, Refused

if TYPE_CHECKING:
    from rich.console import Console

    from cened.pipeline import FileOutcome

NAME = "classify"
HELP = "classify files or folders once: a dry run unless --apply"
EXAMPLES = """
cened classify ~/old-photos            # a dry run: what --apply would do
cened classify ~/old-photos --apply    # file them like the daemon would
cened classify IMG_2041.jpg --json | jq .probabilities
"""

#: How each fate reads in a row: (in a dry run, applied).
_VERBS = {
    "moved": ("would move", "moved"),
    "review": ("would move", "moved"),
    "other": ("would move", "moved"),
    "duplicate": ("would set apart", "set apart"),
    "quarantined": ("would quarantine", "quarantined"),
    "skipped": ("would skip", "skipped"),
    "retry": ("would leave", "left"),
    "failed": ("would fail", "failed"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos, or folders of them")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, and nothing else")
    parser.add_argument("--apply", action="store_true", help="file them as the daemon would, with log rows")


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from cened.journal import Journal
    from cened.ml.classifying import Classifier
    from cened.pipeline import Processor

    settings = _common.reading_photos(args, json=args.json)
    files = _files(args.paths, settings)
    classifier = Classifier.from_settings(settings)
    # A dry run reads the log (never creating it) to see the library as --apply will.
    if args.apply:
        journal: Journal | None = Journal(settings.database)
    else:
        journal = Journal(settings.database, readonly=True) if settings.database.exists() else None
    processor = Processor(classifier, journal, lambda: settings, simulate=not args.apply)
    human = not args.json
    console = _console() if human else None
    if console is not None and not args.apply:
        console.print(f"[bold]DRY RUN[/]: nothing is moved; add --apply to file {len(files)} photos as shown")
    status, summary, along = ExitCode.OK, Counter[tuple[str, str]](), 0
    named = set(files)
    try:
        with (
            ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool,
            _progress(console, len(files)) as advance,
        ):
            for outcome in processor.run(files, pool):
                row = _outcome_row(outcome, applied=args.apply)
                _print_result(row, settings, console, dry=not args.apply)
                if outcome.path not in named:  # a sidecar or video that travels with a photo
                    along += 1
                    continue
                status = status if _answered(outcome) else ExitCode.REFUSED
                summary[_summary_key(row)] += 1
                advance()
    finally:
        if journal is not None:
            journal.close()
    if console is not None:
        _print_summary(console, summary, along, dry=not args.apply)
    return status


def _files(paths: Sequence[Path], settings: Settings) -> list[Path]:
    """The photos named, and those in the folders named; a missing path, or no photo at all, is an error."""
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise ConfigError("; ".join(f"{os.fsdecode(p)} does not exist" for p in missing))
    files = list(_expand(paths, settings))
    if not files:
        kinds = ", ".join(sorted({e.lstrip(".") for e in settings.extensions})[:8])
        raise Refused(f"no photos in {', '.join(map(os.fsdecode, paths))} (looked for {kinds}, …)")
    return files


def _expand(paths: Sequence[Path], settings: Settings) -> Iterator[Path]:
    from cened.watching import scan

    for path in paths:
        if path.is_dir():
            for found in scan(path):
                if found.suffix.lower() in settings.extensions:
                    yield found
        else:
            yield path


def _console() -> Console:
    """Where the rows for a person go: stdout, in colour and with a progress bar only on a terminal."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


class _progress:
    """A progress bar with an ETA on the terminal, or nothing; ``advance()`` counts one file."""

    def __init__(self, console: Console | None, total: int) -> None:
        self._console, self._total = console, total
        self._bar: Any = None

    def __enter__(self) -> Any:
        # Not when piped: a bar redrawn in a file or a pager is noise.
        if self._console is None or not self._console.is_terminal or self._total < 2:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("classifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,  # gone at the end: the summary says what happened
        )
        self._bar.start()
        task = self._bar.add_task("classify", total=self._total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _outcome_row(outcome: FileOutcome, *, applied: bool) -> dict[str, object]:
    """One line of ``cened classify``: the decision, where the photo went (or would go), or why not."""
    from cened.journal import Action

    e = outcome.entry
    row: dict[str, object] = {"file": os.fsdecode(outcome.path), "action": outcome.fate}
    if e is not None and e.label is not None:
        row.update(label=e.label, album=e.album, confidence=e.confidence, probabilities=e.probabilities)
    if not _answered(outcome):
        error, _, detail = (outcome.reason or outcome.fate).partition(": ")
        row.update(error=error, detail=detail or None)
    elif outcome.fate == Action.DUPLICATE or (e is not None and (e.lead or e.group_id)):
        row["reason"] = outcome.reason  # a copy of which photo, or the photo a companion goes with
    if e is not None and e.destination is not None:
        row["destination"] = os.fsdecode(e.destination)
    if applied and e is not None:
        row["id"] = e.id
    if not applied:
        row["dry_run"] = True
    return row


def _answered(outcome: FileOutcome) -> bool:
    """The model classified the photo: filed in its album, or apart as a duplicate."""
    from cened.journal import Action

    return outcome.fate.classified or outcome.fate == Action.DUPLICATE


def _summary_key(row: dict[str, object]) -> tuple[str, str]:
    """What a row counts as at the end: its action, and the album (or the reason it has none)."""
    from cened.config import DUPLICATES_FOLDER

    action = str(row["action"])
    if "error" in row:
        return action, str(row["error"])
    if action == "duplicate":
        return action, DUPLICATES_FOLDER
    return action, str(row.get("album") or "")


def _print_result(row: dict[str, object], settings: Settings, console: Console | None, *, dry: bool) -> None:
    if console is None:
        _print_line(row)
        return
    from rich.markup import escape

    from cened.logsetup import printable

    verb = _VERBS.get(str(row["action"]), (str(row["action"]),) * 2)[0 if dry else 1]
    where = _common.short(Path(str(row["destination"])), settings) if row.get("destination") else ""
    arrow = f" → {escape(where)}" if where else ""
    name = escape(printable(str(row["file"])))  # a name is shown, never obeyed: no escape codes, no markup
    if "error" in row:
        detail = f": {row['detail']}" if row.get("detail") else ""
        why = escape(printable(f"{row['error']}{detail}"))
        console.print(f"{name}  [red]{verb}[/]{arrow}  [dim]{why}[/]")
        return
    note = _decision(row)
    console.print(f"{name}  {verb}{arrow}  [dim]{escape(printable(note))}[/]")


def _decision(row: dict[str, object]) -> str:
    """Why the album: the class and its confidence; for other, that the photo is like none of them."""
    if row.get("reason"):
        return str(row["reason"])
    if row.get("label") is None:
        return ""
    conf = f"{row['confidence']:.2f}" if row.get("confidence") is not None else ""
    if row["action"] == "other":
        return f"like none of the classes (nearest: {row['label']} {conf})"
    if row["action"] == "review":
        return f"unsure: {row['label']} {conf}"
    return f"{row['label']} {conf}"


def _print_line(row: dict[str, object]) -> None:
    """A row for a program (``--json``): every field but the empty ones."""
    print(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))


def _print_summary(console: Console, summary: Counter[tuple[str, str]], along: int, *, dry: bool) -> None:
    from rich.table import Table

    photos = sum(summary.values())
    title = f"{'DRY RUN: ' if dry else ''}{photos} photos" + (
        f", and {along} file{'s' if along > 1 else ''} that travel with them" if along else ""
    )
    table = Table(title=title, header_style="bold", title_justify="left")
    table.add_column("action")
    table.add_column("album or reason")
    table.add_column("files", justify="right")
    for (action, where), n in sorted(summary.items(), key=lambda item: (-item[1], item[0])):
        verb = _VERBS.get(action, (action, action))[0 if dry else 1]
        table.add_row(verb, where, str(n))
    console.print(table)
    if dry:
        console.print("[bold]DRY RUN[/]: nothing was moved; run again with --apply to file them")

"""What several commands share: their settings, a read-only log, and how they show paths and shares."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cened.config import Settings, installed_config, load_settings
from cened.errors import ExitCode

if TYPE_CHECKING:
    from cened import learn
    from cened.journal import Entry, Journal


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: labelled photos for train and evaluate, from one folder or several."""
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="folders with one sub-folder of images per class (several: their photos together)",
    )


def config_of(args: argparse.Namespace) -> Path | None:
    """The file the global ``--config`` names, else ``$CENED_CONFIG``, else an installed service's."""
    return args.config or installed_config()


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings of :func:`config_of`."""
    return load_settings(config_of(args))


def reading_photos(args: argparse.Namespace, *, json: bool = False) -> Settings:
    """Settings for a command that reads photos as the daemon does: its limits, warnings on stderr."""
    from cened import logsetup
    from cened.ml import imaging

    loaded = settings_of(args)
    logsetup.configure("json" if json else loaded.log_format, "warning", stream=sys.stderr)
    imaging.release_freed_images()
    return loaded


def readonly_journal(settings: Settings) -> Journal:
    """The log, read only, once SQLite found it whole: damage no query reads still ends the command (4)."""
    from cened.journal import Journal

    journal = Journal(settings.database, readonly=True)
    return _checked(journal)


def journal(settings: Settings) -> Journal:
    """The log to write to (undo, correct), once SQLite has found it whole."""
    from cened.journal import Journal

    return _checked(Journal(settings.database))


def _checked(journal: Journal) -> Journal:
    try:
        journal.check_integrity()
    except BaseException:
        journal.close()
        raise
    return journal


def name(path: Path | None) -> str:
    """A path as printed: its control characters escaped (cened.logsetup.printable)."""
    from cened.logsetup import printable

    return "" if path is None else printable(os.fsdecode(path))


def short(path: Path | None, settings: Settings) -> str:
    """Paths relative to the inbox or library, which is what a person scans a table for; printable."""
    if path is None:
        return ""
    for root, prefix in ((settings.inbox, "inbox/"), (settings.library, "")):
        if path.is_relative_to(root):
            return prefix + name(path.relative_to(root))
    return name(path)


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage (``0.1234`` is ``12.3%``); nothing for None."""
    return "" if x is None else f"{x:.{digits}%}"


def report_moves(entries: list[Entry], verb: str) -> int:
    """What ``undo`` and ``correct`` moved, one line each; failures on stderr and in the exit code."""
    from cened.journal import State
    from cened.logsetup import printable

    failed = 0
    for e in entries:
        if e.state == State.DONE:
            print(f"{verb} #{e.ref_id}: {name(e.source)} -> {name(e.destination)} (#{e.id})")
        else:
            failed += 1
            print(f"cened: failed #{e.ref_id}: {printable(e.reason or '')}", file=sys.stderr)
    return ExitCode.REFUSED if failed else ExitCode.OK


def print_learned(outcome: learn.LearnReport) -> None:
    """A learned version against the one in use, as ``learn`` and ``album add/remove`` report it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{outcome.version} against {outcome.previous}", header_style="bold")
    table.add_column("measured on")
    table.add_column("in use", justify="right")
    table.add_column("new", justify="right")
    yours_old, yours_new = outcome.current["yours"], outcome.new["yours"]
    val_old, val_new = outcome.current["validation"], outcome.new["validation"]
    table.add_row(
        f"your photos held back ({yours_new.n}): filed right", pct(yours_old.right), pct(yours_new.right)
    )
    table.add_row(f"shipped validation ({val_new.n}): top-1", pct(val_old.accuracy), pct(val_new.accuracy))
    table.add_row("shipped validation: to other", pct(val_old.to_other), pct(val_new.to_other))
    for label in outcome.classes:
        new = yours_new.per_label.get(label)
        if new and new["n"]:
            old = yours_old.per_label.get(label, {"precision": 0.0, "recall": 0.0})
            table.add_row(
                f"  {label} ({new['n']}): precision / recall",
                f"{pct(old['precision'])} / {pct(old['recall'])}",
                f"{pct(new['precision'])} / {pct(new['recall'])}",
            )
    console = Console()
    console.print(table)
    for note in outcome.notes:
        console.print(f"note: {note}")
    trained = ", ".join(f"{k} {v}" for k, v in sorted(outcome.examples.items()))
    console.print(f"learned from: {trained or 'nothing new'} ({outcome.seconds:.1f} s)")
    if outcome.accepted:
        forced = " (forced: it measured worse)" if outcome.forced else ""
        console.print(f"in use now: {outcome.version}{forced}")
    else:
        console.print(
            f"kept, not in use: it measured worse than {outcome.previous}; "
            f"`cened model use {outcome.version}` or `cened learn --force` to use it anyway"
        )

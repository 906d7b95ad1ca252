"""``cened doctor``: where the log and the disk disagree (cened.doctor); ``--fix`` mends it."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path

from cened.commands import _common
from cened.config import Settings
from cened.errors import JournalError, Refused

NAME = "doctor"
HELP = "find and fix disagreements between the log and the disk"
EXAMPLES = """
cened doctor
cened doctor --fix
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fix", action="store_true", help="mend what was found (never deletes a file)")


def run(args: argparse.Namespace) -> int:
    settings = _common.settings_of(args)
    if not os.path.lexists(settings.database):
        # Opening would create an empty database, which is "all consistent" with any library.
        raise JournalError(f"no database at {settings.database}: has cened run with this configuration?")
    # Mending resolves intents and moves files: never beside a daemon doing the same.
    lock = _lock_to_mend(settings.database) if args.fix else None
    try:
        return _examine(settings, fix=args.fix)
    finally:
        if lock is not None:
            os.close(lock)


def _lock_to_mend(database: Path) -> int:
    from cened.locking import hold_lock

    try:
        return hold_lock(database)
    except JournalError as exc:
        raise Refused(
            f"{exc}. `cened doctor --fix` mends a database no daemon is using: "
            "stop the service, or run `cened doctor` without --fix to look only"
        ) from exc


def _examine(settings: Settings, *, fix: bool) -> int:
    from cened.doctor import examine, repair
    from cened.journal import Journal
    from cened.library import Places
    from cened.logsetup import printable

    with Journal(settings.database) as journal:
        journal.check_integrity(full=True)  # damage no row of the report reads is damage all the same
        report = examine(
            journal, settings.library, settings.quarantine_dir, functools.partial(_photo, settings)
        )
        for e in report.pending:
            print(f"interrupted move #{e.id}: {_common.name(e.source)} -> {_common.name(e.destination)}")
        for e in report.missing:
            print(f"missing: #{e.id} says {_common.name(e.destination)}")
        for p in report.unlogged:
            print(f"not in the log: {_common.name(p)}")
        for p in report.partials:
            print(f"stray partial copy: {_common.name(p)}")
        for e in report.changed:
            print(f"changed since it was quarantined: #{e.id} {_common.name(e.destination)}")
        if report.unsigned:
            print(
                f"{len(report.unsigned)} photos filed before this version's near-duplicate signature: "
                "copies of them are not recognised until `cened doctor --fix` signs them"
            )
        if report.clean and (not report.unsigned or not fix):
            print("all consistent")
            return 0
        if not fix:
            print("run `cened doctor --fix` to mend these (nothing is deleted)")
            return 1
        places = Places.of(settings)
        look = _look(settings) if report.unlogged or report.unsigned else None
        for line in repair(
            journal, report, settings.library, settings.quarantine_dir, places=places, look=look
        ):
            print(f"fixed: {printable(line)}")
    return 0


def _photo(settings: Settings, path: Path) -> bool:
    """A photo, which a signature is made of, rather than a companion that travels with one."""
    from cened import companions

    return companions.kind(path, settings) == companions.Kind.PHOTO


def _look(settings: Settings) -> Callable[[Path], tuple[bytes | None, float | None]] | None:
    """How doctor sees a photo it adopts, at the configured model's input size; None without a model."""
    from cened import pipeline
    from cened.errors import ModelError
    from cened.ml import modelpack

    try:
        size = modelpack.read_meta(settings.model).input_size
    except ModelError as exc:
        print(f"adopting without signatures, so copies will not join them: {exc}")
        return None
    return functools.partial(pipeline.look, settings=settings, input_size=size)

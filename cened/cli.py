"""The ``cened`` command: the daemon and the tools around its log.

Heavy imports (TensorFlow above all) happen inside the commands that need
them, so ``cened history`` or ``cened undo`` answer instantly.

Exit codes are :class:`cened.errors.ExitCode`; every failure is a
:class:`cened.errors.CenedError` that carries its own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cened import __version__
from cened.config import Settings, load_settings
from cened.errors import CenedError, ExitCode
from cened.journal import Action, Entry, Journal, State

if TYPE_CHECKING:
    from cened import learn
    from cened.pipeline import Outcome


#: Commands whose module declares its own options (``add_arguments``/``run``).
LAZY_COMMANDS = {
    "train": ("cened.training.train", "train a model from a folder of labelled images"),
    "evaluate": ("cened.training.evaluate", "measure a model on the validation split and write its card"),
    "install-service": ("cened.service", "write a systemd unit for cened and print how to enable it"),
    "doctor": ("cened.doctor", "find and fix disagreements between the log and the disk"),
    "bench": ("cened.bench.command", "measure throughput, latency, memory and start-up time"),
    "reload": ("cened.reloading", "make the running service re-read its config and wait for the outcome"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(load=[a for a in argv if a in LAZY_COMMANDS][:1])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.CONFIG
    try:
        return int(args.func(args))
    except CenedError as exc:
        from cened import logsetup

        logsetup.print_failure(exc.lines(), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def build_parser(load: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; modules of commands named in ``load`` are imported for their options."""
    parser = argparse.ArgumentParser(prog="cened", description="Sort photos from an inbox into albums.")
    parser.add_argument("--version", action="version", version=f"cened {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="TOML config file (default: $CENED_CONFIG)")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground (systemd supervises it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("classify", help="classify files or folders once; moves nothing without --apply")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--apply", action="store_true", help="file them as the daemon would, with log rows")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("history", help="show the decision log")
    p.add_argument("--limit", type=int, default=50, help="newest N rows (0 = all; default 50)")
    p.add_argument("--file", type=Path, help="rows that moved this path (either end)")
    p.add_argument("--since", help="rows since a time: 30m, 2h, 7d or ISO date/time")
    p.add_argument("--batch", help="rows of one batch id")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("undo", help="move files back to where they came from")
    p.add_argument("ids", nargs="*", type=int, help="row ids from cened history")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, metavar="N", help="the last N moves")
    group.add_argument("--since", help="every move since a time: 30m, 2h, 7d or ISO date/time")
    group.add_argument("--batch", help="every move of one batch")
    p.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("correct", help="move a misfiled photo to the right album and record the label")
    p.add_argument("id", type=int)
    p.add_argument("label", help="the right class (or any album name)")
    p.set_defaults(func=cmd_correct)

    p = sub.add_parser("corrections", help="list human-corrected photos; export them as training data")
    p.add_argument("--export", type=Path, metavar="DIR", help="copy them into DIR/<label>/ for cened train")
    p.set_defaults(func=cmd_corrections)

    p = sub.add_parser("stats", help="counts per album, confidence, undo and correction rates")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("album", help="albums of your own: teach the model a class from example photos")
    actions = p.add_subparsers(metavar="ACTION", required=True)
    q = actions.add_parser("add", help="learn album NAME from the photos in DIR (at least 20)")
    q.add_argument("name")
    q.add_argument("folder", type=Path, metavar="DIR")
    q.set_defaults(func=cmd_album_add)
    q = actions.add_parser("remove", help="unlearn album NAME (the photos filed in it stay where they are)")
    q.add_argument("name")
    q.set_defaults(func=cmd_album_remove)
    q = actions.add_parser("list", help="your albums, and corrections that may become albums")
    q.set_defaults(func=cmd_album_list)

    p = sub.add_parser("learn", help="learn from corrections and your albums; use the result if not worse")
    p.add_argument(
        "--force", action="store_true", help="put the new version in use even if it measures worse"
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("model", help="learned versions of the model: list, use one, roll back")
    actions = p.add_subparsers(metavar="ACTION", required=True)
    q = actions.add_parser("list", help="the learned versions, and which is in use")
    q.set_defaults(func=cmd_model_list)
    q = actions.add_parser("use", help="put VERSION in use (`shipped` for the model as shipped)")
    q.add_argument("version")
    q.set_defaults(func=cmd_model_use)
    q = actions.add_parser("rollback", help="go back to the version in use before this one")
    q.set_defaults(func=cmd_model_rollback)

    for name, (module, text) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if name in load:
            # These modules declare their own options; importing them costs
            # TensorFlow's start-up, so only when the command is the one run.
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


# -- run -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cened import logsetup
    from cened.daemon import Daemon

    settings = _settings(args)
    logsetup.configure(settings.log_format, settings.log_level)
    return Daemon(settings, args.config).run()


# -- classify --------------------------------------------------------------


def _expand(paths: Sequence[Path], settings: Settings) -> Iterator[Path]:
    from cened.watching import scan

    for path in paths:
        if path.is_dir():
            for found in scan(path):
                if found.suffix.lower() in settings.extensions:
                    yield found
        else:
            yield path


def _reading_photos(args: argparse.Namespace, *, json: bool = False) -> Settings:
    """Settings for a command that reads photos as the daemon does: its limits, warnings on stderr."""
    from cened import logsetup
    from cened.ml import imaging

    settings = _settings(args)
    logsetup.configure("json" if json else settings.log_format, "warning", stream=sys.stderr)
    imaging.set_pixel_limit(settings.max_pixels)
    imaging.release_freed_images()
    return settings


def cmd_classify(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from cened.ml.classifying import Classifier
    from cened.pipeline import Processor

    settings = _reading_photos(args, json=args.json)
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


def _outcome_row(outcome: Outcome, *, applied: bool) -> dict[str, object]:
    """One line of ``cened classify``: the decision, where the photo went (or would go), or why not."""
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
    return outcome.fate.classified or outcome.fate == Action.DUPLICATE


def _print_result(row: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
    elif "error" in row:
        print(f"{row['file']}\tERROR {row['error']}\t{row.get('detail') or ''}")
    else:
        conf = f"{row['confidence']:.3f}" if row.get("confidence") is not None else ""
        where = row.get("album") or row.get("reason") or ""
        print(f"{row['file']}\t{row['action']}\t{where}\t{conf}\t{row.get('destination') or ''}")


# -- history / stats -------------------------------------------------------


def _readonly_journal(settings: Settings) -> Journal:
    return Journal(settings.database, readonly=True)


def cmd_history(args: argparse.Namespace) -> int:
    from cened.undoing import parse_since

    settings = _settings(args)
    since = parse_since(args.since) if args.since else None
    with _readonly_journal(settings) as journal:
        rows = journal.history(
            limit=args.limit or None,
            since=since,
            batch_id=args.batch,
            file=args.file.absolute() if args.file else None,
        )
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict(), ensure_ascii=False))
        return 0
    _history_table(rows, settings)
    return 0


def _short(path: Path | None, settings: Settings) -> str:
    """Paths relative to the inbox or library, which is what a person scans a table for."""
    if path is None:
        return ""
    for root, prefix in ((settings.inbox, "inbox/"), (settings.library, "")):
        if path.is_relative_to(root):
            return prefix + os.fsdecode(path.relative_to(root))
    return os.fsdecode(path)


#: The history's note on pixels that were not the photo's own (imaging.FROM_*; cened.ml is not imported here).
_PIXEL_SOURCES = {
    "exif-preview": "from the EXIF preview",
    "heif-thumbnail": "from the HEIF thumbnail",
    "raw-preview": "from the RAW preview",
}


def _history_table(rows: list[Entry], settings: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for column in ("id", "time", "action", "file", "→", "label", "conf", "note"):
        table.add_column(column, overflow="fold")
    for r in rows:
        action = r.action if r.state == State.DONE else f"{r.action} ({r.state})"
        dest = _short(r.destination, settings)
        note = r.reason or (f"undoes #{r.ref_id}" if r.ref_id else "")
        if r.human_label:
            note = f"human: {r.human_label}; {note}"
        seen = _PIXEL_SOURCES.get(r.pixel_source or "")
        if seen:
            note = f"{seen}; {note}" if note else seen
        table.add_row(
            str(r.id),
            r.time[5:16].replace("T", " "),
            action,
            _short(r.source, settings),
            dest,
            r.label or "",
            f"{r.confidence:.2f}" if r.confidence is not None else "",
            note,
        )
    Console().print(table)


def cmd_stats(args: argparse.Namespace) -> int:

    settings = _settings(args)
    with _readonly_journal(settings) as journal:
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


def cmd_corrections(args: argparse.Namespace) -> int:
    from cened.undoing import corrections, export_corrections

    settings = _settings(args)
    with _readonly_journal(settings) as journal:
        rows = corrections(journal)
    for row in rows:
        print(f"#{row.id}\t{row.label} -> {row.human_label}\t{_short(row.destination, settings)}")
    if args.export is not None:
        print(f"exported {export_corrections(rows, args.export)} photos to {args.export}")
    return 0


# -- learning from the user -----------------------------------------------


def cmd_album_add(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _reading_photos(args)
    with learn.changing(settings):
        n = learn.add_album(settings, args.name, args.folder)
        print(f"album {args.name!r}: {n} example photos read from {args.folder}")
        _print_learned(learn.learn(settings, say=print))
    return 0


def cmd_album_remove(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _reading_photos(args)
    with learn.changing(settings):
        outcome = learn.remove_album(settings, args.name)
    print(f"album {args.name!r} removed; the photos filed in it stay where they are")
    if outcome is None:
        print("nothing else to learn from: the shipped model is in use")
    else:
        _print_learned(outcome)
    return 0


def cmd_album_list(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _settings(args)
    for row in learn.album_list(settings):
        print(row)
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _reading_photos(args, json=args.json)
    with learn.changing(settings):
        outcome = learn.learn(settings, force=args.force, say=print if not args.json else lambda _: None)
    if args.json:
        print(json.dumps(outcome.as_dict()))
    else:
        _print_learned(outcome)
    return 0


def _print_learned(outcome: learn.Outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{outcome.version} against {outcome.previous}", header_style="bold")
    table.add_column("measured on")
    table.add_column("in use", justify="right")
    table.add_column("new", justify="right")
    yours_old, yours_new = outcome.current["yours"], outcome.new["yours"]
    val_old, val_new = outcome.current["validation"], outcome.new["validation"]
    table.add_row(
        f"your photos held back ({yours_new.n}): filed right", _pct(yours_old.right), _pct(yours_new.right)
    )
    table.add_row(f"shipped validation ({val_new.n}): top-1", _pct(val_old.accuracy), _pct(val_new.accuracy))
    table.add_row("shipped validation: to other", _pct(val_old.to_other), _pct(val_new.to_other))
    for label in outcome.classes:
        new = yours_new.per_label.get(label)
        if new and new["n"]:
            old = yours_old.per_label.get(label, {"precision": 0.0, "recall": 0.0})
            table.add_row(
                f"  {label} ({new['n']}): precision / recall",
                f"{_pct(old['precision'])} / {_pct(old['recall'])}",
                f"{_pct(new['precision'])} / {_pct(new['recall'])}",
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


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def cmd_model_list(args: argparse.Namespace) -> int:
    from cened import learn

    for row in learn.version_list(_settings(args)):
        print(row)
    return 0


def cmd_model_use(args: argparse.Namespace) -> int:
    from cened import learn
    from cened.ml.versions import VersionStore

    settings = _settings(args)
    with learn.changing(settings):
        VersionStore(settings.learned_dir).use(args.version)
    print(f"in use now: {args.version} (a running daemon switches within seconds)")
    return 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    from cened import learn
    from cened.ml.versions import VersionStore

    settings = _settings(args)
    with learn.changing(settings):
        version = VersionStore(settings.learned_dir).rollback()
    print(f"in use now: {version} (a running daemon switches within seconds)")
    return 0


# -- undo / correct --------------------------------------------------------


def cmd_undo(args: argparse.Namespace) -> int:
    from cened.undoing import carry_out, plan_undo, select_undo

    settings = _settings(args)
    with Journal(settings.database) as journal:
        ids = select_undo(journal, ids=args.ids, last=args.last, since=args.since, batch_id=args.batch)
        if not ids:
            print("nothing to undo")
            return 0
        plans = plan_undo(journal, ids)
        if args.dry_run:
            for plan in plans:
                print(f"would move {os.fsdecode(plan.source)} -> {os.fsdecode(plan.destination)}")
            return 0
        entries = carry_out(journal, plans, Action.UNDONE, settings=settings)
    return _report_moves(entries, "undid")


def cmd_correct(args: argparse.Namespace) -> int:
    from cened.undoing import carry_out, plan_correct

    settings = _settings(args)
    with Journal(settings.database) as journal:
        plans = plan_correct(journal, settings, args.id, args.label)
        entries = carry_out(journal, plans, Action.CORRECTED, label=args.label, settings=settings)
    return _report_moves(entries, "corrected")


def _report_moves(entries: list[Entry], verb: str) -> int:
    failed = 0
    for e in entries:
        if e.state == State.DONE:
            print(
                f"{verb} #{e.ref_id}: {os.fsdecode(e.source)} -> {os.fsdecode(e.destination or '')} (#{e.id})"
            )
        else:
            failed += 1
            print(f"cened: failed #{e.ref_id}: {e.reason}", file=sys.stderr)
    return ExitCode.REFUSED if failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

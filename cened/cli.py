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
from cened.errors import CenedError, ConfigError, ExitCode
from cened.journal import Entry, Journal

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from cened.ml.classifying import Classifier
    from cened.pipeline import Prepared, Processor


#: Commands whose module declares its own options (``add_arguments``/``run``).
LAZY_COMMANDS = {
    "train": ("cened.ml.training", "train a model from a folder of labelled images"),
    "evaluate": ("cened.ml.evaluation", "measure a model on the validation split and write its card"),
    "install-service": ("cened.service", "write a systemd unit for cened and print how to enable it"),
    "doctor": ("cened.doctor", "find and fix disagreements between the log and the disk"),
    "bench": ("cened.bench.command", "measure throughput, latency, memory and start-up time"),
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
        print(f"cened: {exc}", file=sys.stderr)
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


def _prepared_batches(
    files: Sequence[Path], settings: Settings, input_size: tuple[int, int], pool: Executor
) -> Iterator[list[Prepared]]:
    """``batch_size`` files at a time, read and decoded by ``pool``, one batch ahead.

    As in the daemon, the next batch decodes while the model scores this one,
    and decoded pixels exist for two batches at most, however many files there are.
    """
    from cened.pipeline import prepare

    size = settings.batch_size
    chunks = [files[i : i + size] for i in range(0, len(files), size)]

    def submit(chunk: Sequence[Path]) -> list[Future[Prepared]]:
        return [pool.submit(prepare, f, settings, input_size) for f in chunk]

    ahead = submit(chunks[0]) if chunks else []
    for index in range(len(chunks)):
        current, ahead = ahead, submit(chunks[index + 1]) if index + 1 < len(chunks) else []
        yield [f.result() for f in current]


def cmd_classify(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from cened import logsetup
    from cened.ml import imaging
    from cened.ml.classifying import Classifier
    from cened.pipeline import Processor

    settings = _settings(args)
    logsetup.configure("json" if args.json else settings.log_format, "warning", stream=sys.stderr)
    imaging.set_pixel_limit(settings.max_pixels)
    classifier = Classifier.from_settings(settings)
    files = list(_expand(args.paths, settings))
    journal = Journal(settings.database) if args.apply else None
    processor = Processor(classifier, journal, lambda: settings) if journal else None
    status = 0
    with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
        for batch in _prepared_batches(files, settings, classifier.meta.input_size, pool):
            rows = _filed_rows(processor, batch) if processor else _scored_rows(classifier, settings, batch)
            for row in rows:
                status = 1 if "error" in row else status
                _print_result(row, args.json)
    if journal is not None:
        journal.close()
    return status


def _filed_rows(processor: Processor, batch: list[Prepared]) -> Iterator[dict[str, object]]:
    """``classify --apply``: what the daemon would have done with each file, done."""
    for outcome in processor.process(batch):
        e = outcome.entry
        row: dict[str, object] = {
            "file": os.fsdecode(outcome.path),
            "action": outcome.action,
            "reason": outcome.reason,
        }
        if e is not None:
            row.update(
                id=e.id,
                album=e.album,
                label=e.label,
                confidence=e.confidence,
                destination=os.fsdecode(e.destination) if e.destination else None,
            )
        yield row


def _scored_rows(
    classifier: Classifier, settings: Settings, batch: list[Prepared]
) -> Iterator[dict[str, object]]:
    """``classify`` alone: the decision for each file, or why it could not be classified."""
    from cened.ml.classifying import decide

    ok = [p for p in batch if p.pixels is not None]
    probs = classifier.predict([p.pixels for p in ok]) if ok else []
    by_path = dict(zip([p.path for p in ok], probs, strict=True))
    for prep in batch:
        row: dict[str, object] = {"file": os.fsdecode(prep.path)}
        if prep.path in by_path:
            d = decide(
                by_path[prep.path],
                classifier.classes,
                threshold=settings.confidence_threshold,
                albums=settings.albums,
                review_album=settings.review_album,
            )
            row.update(label=d.label, album=d.album, confidence=d.confidence, probabilities=d.probabilities)
        else:
            reason = prep.reject.reason if prep.reject else (prep.skip or prep.retry)
            row.update(error=reason, detail=prep.reject.detail if prep.reject else None)
        yield row


def _print_result(row: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
        return
    if "error" in row:
        print(f"{row['file']}\tERROR {row['error']}\t{row.get('detail') or ''}")
    elif "action" in row:
        dest = row.get("destination") or ""
        conf = f"{row['confidence']:.2f}" if row.get("confidence") is not None else ""
        print(
            f"{row['file']}\t{row['action']}\t{row.get('album') or row.get('reason') or ''}\t{conf}\t{dest}"
        )
    else:
        print(f"{row['file']}\t{row['album']}\t{row['label']}\t{row['confidence']:.3f}")


# -- history / stats -------------------------------------------------------


def _readonly_journal(settings: Settings) -> Journal:
    return Journal(settings.database, readonly=True)


def cmd_history(args: argparse.Namespace) -> int:
    from cened.undoing import parse_since

    settings = _settings(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
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


def _history_table(rows: list[Entry], settings: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for column in ("id", "time", "action", "file", "→", "label", "conf", "note"):
        table.add_column(column, overflow="fold")
    for r in rows:
        action = r.action if r.state == "done" else f"{r.action} ({r.state})"
        dest = _short(r.destination, settings)
        note = r.reason or (f"undoes #{r.ref_id}" if r.ref_id else "")
        if r.human_label:
            note = f"human: {r.human_label}; {note}"
        if r.pixel_source == "exif-preview":
            note = f"from the EXIF preview; {note}" if note else "from the EXIF preview"
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
        per_album = journal.count_by(
            "SELECT coalesce(album, action), count(*), avg(confidence) FROM decisions "
            "WHERE state = 'done' AND action IN ('moved', 'review', 'quarantined') GROUP BY 1 ORDER BY 2 DESC"
        )
        totals = dict(
            journal.count_by("SELECT action, count(*) FROM decisions WHERE state = 'done' GROUP BY action")
        )
    filed = sum(totals.get(a, 0) for a in ("moved", "review", "quarantined"))
    result = {
        "albums": {
            a: {"files": n, "mean_confidence": round(c, 4) if c is not None else None}
            for a, n, c in per_album
        },
        "filed": filed,
        "undone": totals.get("undone", 0),
        "corrected": totals.get("corrected", 0),
        "skipped": totals.get("skipped", 0),
        "undo_rate": round(totals.get("undone", 0) / filed, 4) if filed else 0.0,
        "correct_rate": round(totals.get("corrected", 0) / filed, 4) if filed else 0.0,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{filed} files filed", header_style="bold")
    table.add_column("album")
    table.add_column("files", justify="right")
    table.add_column("mean confidence", justify="right")
    for album, info in result["albums"].items():  # type: ignore[union-attr]
        conf = info["mean_confidence"]
        table.add_row(album, str(info["files"]), f"{conf:.3f}" if conf is not None else "")
    console = Console()
    console.print(table)
    console.print(
        f"undone {result['undone']} ({result['undo_rate']:.1%}), corrected {result['corrected']} "
        f"({result['correct_rate']:.1%}), skipped {result['skipped']}"
    )
    return 0


def cmd_corrections(args: argparse.Namespace) -> int:
    """Human labels are the best training data we will ever get; make them easy to reuse.

    The export is a folder per label, the layout ``cened train --data`` reads,
    so users can retrain on their own photos (alone, or merged with the
    original data set).  Files are copied, never moved: the albums stay as they are.
    """
    import shutil

    from cened.moving import free_name
    from cened.undoing import undoable

    settings = _settings(args)
    with _readonly_journal(settings) as journal:
        rows = [r for r in undoable(journal) if r.action == "corrected" and r.human_label]
    exported = 0
    for row in rows:
        assert row.destination is not None
        print(f"#{row.id}\t{row.label} -> {row.human_label}\t{_short(row.destination, settings)}")
        if args.export is not None and row.destination.is_file():
            target = free_name(args.export / row.human_label, row.destination.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(row.destination, target)
            exported += 1
    if args.export is not None:
        print(f"exported {exported} photos to {args.export}")
    return 0


# -- undo / correct --------------------------------------------------------


def cmd_undo(args: argparse.Namespace) -> int:
    from cened.undoing import UndoError, carry_out, parse_since, plan_undo, undoable

    settings = _settings(args)
    with Journal(settings.database) as journal:
        if args.ids:
            ids = list(args.ids)
        else:
            try:
                since = parse_since(args.since) if args.since else None
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            if args.last is None and since is None and args.batch is None:
                print("cened: say what to undo: IDs, --last N, --since TIME or --batch ID", file=sys.stderr)
                return ExitCode.CONFIG
            rows = undoable(journal, since=since, batch_id=args.batch)
            if args.last is not None:
                rows = rows[-args.last :] if args.last > 0 else []
            ids = [r.id for r in rows if r.id is not None]
        if not ids:
            print("nothing to undo")
            return 0
        try:
            plans = plan_undo(journal, ids)
        except UndoError as exc:
            for problem in exc.problems:
                print(f"cened: refused: {problem}", file=sys.stderr)
            print("cened: nothing was moved", file=sys.stderr)
            return ExitCode.REFUSED
        if args.dry_run:
            for plan in plans:
                print(f"would move {os.fsdecode(plan.source)} -> {os.fsdecode(plan.destination)}")
            return 0
        entries = carry_out(journal, plans, "undone")
    return _report_moves(entries, "undid")


def cmd_correct(args: argparse.Namespace) -> int:
    from cened.undoing import UndoError, carry_out, plan_correct

    settings = _settings(args)
    with Journal(settings.database) as journal:
        try:
            plan = plan_correct(journal, settings, args.id, args.label)
        except UndoError as exc:
            for problem in exc.problems:
                print(f"cened: refused: {problem}", file=sys.stderr)
            return ExitCode.REFUSED
        entries = carry_out(journal, [plan], "corrected", label=args.label)
    return _report_moves(entries, "corrected")


def _report_moves(entries: list[Entry], verb: str) -> int:
    failed = 0
    for e in entries:
        if e.state == "done":
            print(
                f"{verb} #{e.ref_id}: {os.fsdecode(e.source)} -> {os.fsdecode(e.destination or '')} (#{e.id})"
            )
        else:
            failed += 1
            print(f"cened: failed #{e.ref_id}: {e.reason}", file=sys.stderr)
    return ExitCode.REFUSED if failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

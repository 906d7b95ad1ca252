"""``cened undo``: move photos back to where they came from, by row, count, time or batch."""

from __future__ import annotations

import argparse

from cened.commands import _common

NAME = "undo"
HELP = "move files back to where they came from"
EXAMPLES = """
cened undo 42
cened undo --last 10 --dry-run
cened undo --since 2h
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", type=int, help="row ids from cened history")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, metavar="N", help="the last N moves")
    group.add_argument("--since", help="every move since a time: 30m, 2h, 7d or ISO date/time")
    group.add_argument("--batch", help="every move of one batch")
    parser.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")


def run(args: argparse.Namespace) -> int:
    from cened.journal import Action
    from cened.undoing import carry_out, plan_undo, select_undo

    settings = _common.settings_of(args)
    with _common.journal(settings) as journal:
        ids = select_undo(journal, ids=args.ids, last=args.last, since=args.since, batch_id=args.batch)
        if not ids:
            print("nothing to undo")
            return 0
        plans = plan_undo(journal, ids)
        if args.dry_run:
            for plan in plans:
                print(f"would move {_common.name(plan.source)} -> {_common.name(plan.destination)}")
            return 0
        entries = carry_out(journal, plans, Action.UNDONE, settings=settings)
    return _common.report_moves(entries, "undid")

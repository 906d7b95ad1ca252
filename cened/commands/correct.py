"""``cened correct``: move a misfiled photo to the right album, and record the label for learning."""

from __future__ import annotations

import argparse

from cened.commands import _common

NAME = "correct"
HELP = "move a misfiled photo to the right album and record the label"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int)
    parser.add_argument("label", help="the right class (or any album name)")


def run(args: argparse.Namespace) -> int:
    from cened.journal import Action
    from cened.undoing import carry_out, plan_correct

    settings = _common.settings_of(args)
    with _common.journal(settings) as journal:
        plans = plan_correct(journal, settings, args.id, args.label)
        entries = carry_out(journal, plans, Action.CORRECTED, label=args.label, settings=settings)
    return _common.report_moves(entries, "corrected")

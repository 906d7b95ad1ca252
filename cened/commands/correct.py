"""``cened correct``: move a misfiled photo to the right album, and record the label for learning."""

from __future__ import annotations

import argparse

from cened.commands import _common

NAME = "correct"
HELP = "move a misfiled photo to the right album and record the label"
EXAMPLES = """
cened correct 43 mountain
cened correct 44 cats --new-album   # an album that does not exist yet
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int)
    parser.add_argument("label", help="the right class or album")
    parser.add_argument(
        "--new-album", action="store_true", help="LABEL is a new album: create it (else a typo is refused)"
    )


def run(args: argparse.Namespace) -> int:
    from cened.journal import Action
    from cened.undoing import carry_out, plan_correct

    settings = _common.settings_of(args)
    with _common.journal(settings) as journal:
        plans = plan_correct(journal, settings, args.id, args.label, new_album=args.new_album)
        entries = carry_out(journal, plans, Action.CORRECTED, label=args.label, settings=settings)
    return _common.report_moves(entries, "corrected")

"""``cened album add|remove|list``: albums of your own, taught from example photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from cened.commands import _common

NAME = "album"
HELP = "albums of your own: teach the model a class from example photos"
EXAMPLES = """
cened album add cats ~/Pictures/my-cats
cened album list
cened album remove cats
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(metavar="ACTION", required=True)
    q = actions.add_parser("add", help="learn album NAME from the photos in DIR (at least 20)")
    q.add_argument("name")
    q.add_argument("folder", type=Path, metavar="DIR")
    q.set_defaults(action=add)
    q = actions.add_parser("remove", help="unlearn album NAME (the photos filed in it stay where they are)")
    q.add_argument("name")
    q.set_defaults(action=remove)
    q = actions.add_parser("list", help="your albums, and corrections that may become albums")
    q.set_defaults(action=list_albums)


def run(args: argparse.Namespace) -> int:
    return int(args.action(args))


def add(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _common.reading_photos(args)
    with learn.changing(settings):
        n = learn.add_album(settings, args.name, args.folder)
        print(f"album {args.name!r}: {n} example photos read from {args.folder}")
        _common.print_learned(learn.learn(settings, say=print))
    return 0


def remove(args: argparse.Namespace) -> int:
    from cened import learn

    settings = _common.reading_photos(args)
    with learn.changing(settings):
        outcome = learn.remove_album(settings, args.name)
    print(f"album {args.name!r} removed; the photos filed in it stay where they are")
    if outcome is None:
        print("nothing else to learn from: the shipped model is in use")
    else:
        _common.print_learned(outcome)
    return 0


def list_albums(args: argparse.Namespace) -> int:
    from cened import learn

    for row in learn.album_list(_common.settings_of(args)):
        print(row)
    return 0

"""``cened model list|use|rollback``: the learned versions of the model, and which one is in use."""

from __future__ import annotations

import argparse

from cened.commands import _common

NAME = "model"
HELP = "learned versions of the model: list, use one, roll back"
EXAMPLES = """
cened model list
cened model rollback
cened model use shipped
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(metavar="ACTION", required=True)
    q = actions.add_parser("list", help="the learned versions, and which is in use")
    q.set_defaults(action=list_versions)
    q = actions.add_parser("use", help="put VERSION in use (`shipped` for the model as shipped)")
    q.add_argument("version")
    q.set_defaults(action=use)
    q = actions.add_parser("rollback", help="go back to the version in use before this one")
    q.set_defaults(action=rollback)


def run(args: argparse.Namespace) -> int:
    return int(args.action(args))


def list_versions(args: argparse.Namespace) -> int:
    from cened import learn

    for row in learn.version_list(_common.settings_of(args)):
        print(row)
    return 0


def use(args: argparse.Namespace) -> int:
    from cened import learn
    from cened.ml.versions import VersionStore

    settings = _common.settings_of(args)
    with learn.changing(settings):
        VersionStore(settings.learned_dir).use(args.version)
    print(f"in use now: {args.version} (a running daemon switches within seconds)")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from cened import learn
    from cened.ml.versions import VersionStore

    settings = _common.settings_of(args)
    with learn.changing(settings):
        version = VersionStore(settings.learned_dir).rollback()
    print(f"in use now: {version} (a running daemon switches within seconds)")
    return 0

"""The ``cened`` command: the global options, and one sub-command per module of :mod:`cened.commands`.

Every command is declared the same way, in a module of its own (see
:mod:`cened.commands`).  A command's options are declared only when it is
the command being run, and its heavy imports (TensorFlow above all) happen
inside it, so ``cened history`` or ``cened undo`` answer instantly.

Exit codes are :class:`cened.errors.ExitCode`; every failure is a
:class:`cened.errors.CenedError` that carries its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cened import __version__
from cened.commands import COMMANDS
from cened.errors import CenedError, ExitCode


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.CONFIG
    try:
        return int(args.func(args))
    except CenedError as exc:
        from cened import logsetup

        logsetup.print_failure(exc.lines(), exc.exit_code)
        return exc.exit_code
    except PermissionError as exc:  # one line, as for every other refusal: never a traceback
        from cened import logsetup

        what = f"{exc.filename}: " if exc.filename else ""
        hint = "run it as a user who may (for the system service: one in group cened, or sudo -u cened)"
        logsetup.print_failure([f"permission denied: {what}{exc.strerror}; {hint}"], ExitCode.REFUSED)
        return ExitCode.REFUSED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cened", description="Sort photos from an inbox into albums.")
    parser.add_argument("--version", action="version", version=f"cened {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="TOML config file (default: $CENED_CONFIG)")
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=CommandParser)
    for command in commands():
        p = sub.add_parser(command.NAME, help=command.HELP, command=command)
        p.set_defaults(func=command.run)
    return parser


def commands() -> list[ModuleType]:
    """The command modules, in the order of ``cened --help``."""
    return [importlib.import_module(f"cened.commands.{name}") for name in COMMANDS]


class CommandParser(argparse.ArgumentParser):
    """A command's parser, which asks the command for its options only once the command is chosen.

    Some options take their defaults from heavy modules (``cened train``'s from
    the training code); declared for every command, they would cost each one
    those imports.
    """

    def __init__(self, *args: Any, command: ModuleType | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._command = command

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        command, self._command = self._command, None
        if command is not None:
            command.add_arguments(self)
        return super().parse_known_args(args, namespace)


if __name__ == "__main__":
    sys.exit(main())

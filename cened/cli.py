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
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """``cened history | head``: the reader has what it wanted; end quietly, without a traceback.

    stdout is pointed at /dev/null so that the interpreter's last flush of
    what is still buffered cannot fail again on the closed pipe (as Python's
    own documentation of SIGPIPE advises).
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return ExitCode.PIPE


def build_parser(*, whole: bool = False) -> argparse.ArgumentParser:
    """The parser of ``cened``; ``whole``: with every command's options declared up front.

    Normally a command's options are declared only once it is chosen (see
    :class:`CommandParser`); shell completion needs them all at once.
    """
    parser = argparse.ArgumentParser(prog="cened", description="Sort photos from an inbox into albums.")
    parser.add_argument("--version", action="version", version=f"cened {__version__}")
    parser.add_argument("-c", "--config", type=Path, help=CONFIG_HELP)
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=CommandParser)
    for command in commands():
        p = sub.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.HELP[:1].upper() + command.HELP[1:] + ".",
            epilog=_examples(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            command=command,
        )
        # After the command as well as before it: `cened run --config FILE` is what people type.
        # SUPPRESS: when not given here, the global option's value (or None) stands.
        p.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
        p.set_defaults(func=command.run)
        if whole:
            p.declare()
    return parser


CONFIG_HELP = "TOML config file (default: $CENED_CONFIG)"


def _examples(command: ModuleType) -> str:
    """A command's ``EXAMPLES``, as the end of its ``--help``."""
    lines = [line for line in getattr(command, "EXAMPLES", "").strip().splitlines() if line.strip()]
    return "examples:\n" + "\n".join(f"  {line.strip()}" for line in lines) if lines else ""


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
        self.declare()
        return super().parse_known_args(args, namespace)

    def declare(self) -> None:
        """Declare the command's options, once."""
        command, self._command = self._command, None
        if command is not None:
            command.add_arguments(self)


if __name__ == "__main__":
    sys.exit(main())

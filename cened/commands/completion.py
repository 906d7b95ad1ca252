"""``cened completion``: the bash or zsh completion script, generated from the parser by shtab."""

from __future__ import annotations

import argparse

NAME = "completion"
HELP = "print the shell completion script for bash or zsh"
EXAMPLES = """
cened completion bash > ~/.local/share/bash-completion/completions/cened
mkdir -p ~/.zfunc && cened completion zsh > ~/.zfunc/_cened   # with fpath+=(~/.zfunc) before compinit
"""

SHELLS = ("bash", "zsh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS)


def run(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def script(shell: str) -> str:
    """The completion script: every command and option, and file names where a path is asked for."""
    from pathlib import Path

    import shtab

    from cened.cli import build_parser

    parser = build_parser(whole=True)
    for action in _actions(parser):
        if action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option and argument of ``parser`` and of its sub-commands, at any depth."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _actions(sub)
    return found

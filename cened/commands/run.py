"""``cened run``: the daemon, in the foreground; systemd supervises it."""

from __future__ import annotations

import argparse

from cened.commands import _common

NAME = "run"
HELP = "run the daemon in the foreground (systemd supervises it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: the config says everything."""


def run(args: argparse.Namespace) -> int:
    from cened import logsetup
    from cened.daemon import Daemon

    config = _common.config_of(args)
    settings = _common.settings_of(args)
    logsetup.configure(settings.log_format, settings.log_level)
    return Daemon(settings, config).run()

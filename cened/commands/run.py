"""``cened run``: the daemon, in the foreground; systemd supervises it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cened.commands import _common
from cened.config import load_settings

if TYPE_CHECKING:
    from cened.config import Settings
    from cened.daemon import Daemon

NAME = "run"
HELP = "run the daemon in the foreground (systemd supervises it)"
EXAMPLES = """
cened run
cened run --config ~/photos/cened.toml
cened run --log-format json | jq 'select(.event == "filed")'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="override the config's log_format (auto: JSON lines unless stdout is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    import threading

    from cened import logsetup
    from cened.daemon import Daemon

    override = {"log_format": args.log_format} if args.log_format else {}
    config = _common.config_of(args)  # --config, $CENED_CONFIG or the installed service's
    settings = load_settings(config, **override)
    logsetup.configure(settings.log_format, settings.log_level)
    # A reload re-reads the file, and the format asked for here still stands.
    daemon = Daemon(settings, config, load=lambda path: load_settings(path, **override))
    if not logsetup.uses_json(settings.log_format):
        threading.Thread(target=_greet, args=(daemon, settings), name="greet", daemon=True).start()
    return daemon.run()


def _greet(daemon: Daemon, settings: Settings) -> None:
    """One line for a person at a terminal, once the daemon serves: what it does, and how to stop it."""
    while not daemon.serving.wait(0.5):
        if daemon.stopping.is_set():
            return
    print(f"cened: watching {settings.inbox}, filing into {settings.library}; Ctrl-C to stop", flush=True)

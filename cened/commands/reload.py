"""``cened reload``: the units' ExecReload=; SIGHUP, then wait for the daemon's answer (cened.reloading)."""

from __future__ import annotations

import argparse

from cened.errors import ConfigError, Refused

NAME = "reload"
HELP = "make the running service re-read its config and wait for the outcome"
EXAMPLES = """
cened reload --pid $MAINPID   # what the unit's ExecReload= runs; use systemctl reload cened
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send SIGHUP to the daemon and wait until it has reloaded its config; exit 1 when it refused "
        "the new config. Meant as a systemd unit's ExecReload= (it needs $RUNTIME_DIRECTORY)."
    )
    parser.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")


def run(args: argparse.Namespace) -> int:
    from cened import reloading

    path = reloading.answer_path()
    if path is None:
        raise ConfigError(
            "cened reload waits for the daemon's answer in $RUNTIME_DIRECTORY, which systemd sets from "
            f"the unit's RuntimeDirectory=; outside systemd, send the signal yourself: kill -HUP {args.pid}"
        )
    reply = reloading.request(args.pid, path, timeout=args.timeout)
    if reply.answer == reloading.Answer.REFUSED:
        raise Refused(f"the daemon refused the new config and keeps the old one: {reply.error}")
    return 0

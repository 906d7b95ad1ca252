"""``cened review``: a local web page of the photos in review and other, to file them in a click."""

from __future__ import annotations

import argparse
import contextlib

from cened.commands import _common

NAME = "review"
HELP = "a local web page to look at photos and file them in a click"
EXAMPLES = """
cened review                      # prints the page's address; Ctrl-C stops it
cened review --open               # and opens it in your browser
cened review --port 8765 --host 0.0.0.0   # from another machine: anyone with the URL may file photos
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")


def run(args: argparse.Namespace) -> int:
    import webbrowser

    from cened import logsetup
    from cened.review import ReviewServer

    settings = _common.settings_of(args)
    logsetup.configure("console", "warning")  # stdout is for the address; warnings only
    if not settings.database.exists():
        from cened.errors import JournalError

        raise JournalError(f"no database at {settings.database} yet (has cened run?)")
    server = ReviewServer(settings, args.host, args.port)
    print(f"cened review: {server.url}", flush=True)
    if args.host in ("0.0.0.0", "::"):
        print(f"  on every address: use this machine's name or address in place of {args.host}", flush=True)
    print("  the address holds a secret: anyone with it may file your photos; Ctrl-C stops", flush=True)
    if args.open:
        webbrowser.open(server.url)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how this page is closed: no error
        server.serve()
    return 0

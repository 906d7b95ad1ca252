"""The ``cened`` commands: one module each, all declared the same way.

A command module has:

* ``NAME``, the command's word on the command line, and ``HELP``, its line in
  ``cened --help``;
* ``add_arguments(parser)``, its options.  The parser calls it only for the
  command being run (or whose ``--help`` is asked), so it may import what its
  defaults come from, however heavy;
* ``run(args) -> int``, the exit code; a failure raises a
  :class:`cened.errors.CenedError`, which carries its own.

It parses, calls the core (``cened.undoing``, ``cened.learn``, ``cened.doctor``,
``cened.training``, ...) and prints.  At module level it imports only light
things (the standard library, ``cened.errors``, ``cened.config``, ``_common``):
:mod:`cened.cli` imports every command module to list them, so TensorFlow,
numpy, the classifier and rich are imported inside ``run``, and
``cened history`` answers instantly.
"""

from __future__ import annotations

#: The command modules, in the order ``cened --help`` lists them.
COMMANDS = (
    "run",
    "classify",
    "history",
    "undo",
    "correct",
    "review",
    "corrections",
    "stats",
    "album",
    "learn",
    "model",
    "train",
    "evaluate",
    "near_duplicates",
    "install_service",
    "doctor",
    "bench",
    "reload",
    "completion",
)

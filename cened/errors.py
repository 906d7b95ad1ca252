"""Errors that end a command, each carrying the exit code it ends with.

The CLI catches :class:`CenedError` once and exits with ``exit_code``, so a
command (or the core it calls) says what went wrong by raising, never by
printing "error:" and returning a number.  The codes are part of the
interface: systemd's ``RestartPreventExitStatus=`` and scripts rely on them.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1  # refused or failed; nothing was changed
    CONFIG = 2  # bad configuration or arguments
    MODEL = 3  # the model cannot be loaded or used
    DATABASE = 4  # the database cannot be used
    PIPE = 141  # the reader of stdout went away (`| head`): what a shell says of a process SIGPIPE ended


class CenedError(Exception):
    """A command cannot go on; the message is for the user, the code for the shell."""

    exit_code: ExitCode = ExitCode.REFUSED
    prefix = ""

    def __str__(self) -> str:
        return self.prefix + super().__str__()

    def lines(self) -> list[str]:
        """What the CLI prints, a line each."""
        return [str(self)]


class Refused(CenedError):
    """The request was refused or failed; nothing was changed."""


class ConfigError(CenedError):
    """The configuration or the arguments cannot be used; the message names the offending key."""

    exit_code = ExitCode.CONFIG


class ModelError(CenedError):
    """The model directory is missing, incomplete or does not match its metadata."""

    exit_code = ExitCode.MODEL
    prefix = "model problem: "


class JournalError(CenedError):
    """The database cannot be used (corrupt, foreign, or from a newer cened)."""

    exit_code = ExitCode.DATABASE
    prefix = "database problem: "


class MissingExtra(CenedError):
    """A command needs a package that only an optional extra installs (TensorFlow: ``[train]``).

    The light install leaves TensorFlow out (1.3 GB, used only to train and
    measure models), so these commands say how to get it rather than fail
    with an ImportError.  The requirement is read from cened's own metadata:
    the version pin lives in ``pyproject.toml`` only.
    """

    def __init__(self, what: str, module: str = "tensorflow", extra: str = "train") -> None:
        self.module, self.extra = module, extra
        super().__init__(f"{what} needs {module}, which comes with cened's [{extra}] extra")

    def lines(self) -> list[str]:
        import sys

        return [
            str(self),
            f"  from a checkout of cened: {sys.executable} -m pip install '.[{self.extra}]'",
            f"  or into this environment: {sys.executable} -m pip install '{self.requirement()}'",
        ]

    def requirement(self) -> str:
        """What the extra asks for the missing module (``tensorflow-cpu==2.21.0``)."""
        from importlib import metadata

        try:
            requires = metadata.requires("cened") or []
        except metadata.PackageNotFoundError:
            requires = []
        for req in requires:
            name, _, marker = req.partition(";")
            if self.extra in marker.replace('"', "'").split("'") and name.strip().startswith(self.module):
                return name.strip()
        return self.module


def require(module: str, what: str, extra: str = "train") -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported; imports nothing itself."""
    from importlib.util import find_spec

    try:
        found = find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or one that blocks the module: missing all the same
        found = False
    if not found:
        raise MissingExtra(what, module, extra)

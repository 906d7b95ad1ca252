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

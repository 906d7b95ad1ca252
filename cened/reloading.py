"""``cened reload``: ask the running daemon to re-read its config, and wait for its answer.

``ExecReload=/bin/kill -HUP $MAINPID`` returns as soon as the signal is sent,
so ``systemctl reload`` said "done" before the daemon had read anything, and
also when it refused the new config.  This command is the units'
``ExecReload=`` instead: it sends the same SIGHUP, waits until the daemon has
decided, and fails when the reload was refused, so ``systemctl reload`` does
too.  (``Type=notify-reload``, systemd 253 and later, would wait as well, but
has no way to report a refusal.)

The daemon leaves its answer in the unit's ``RuntimeDirectory=``, which
systemd gives both commands as ``$RUNTIME_DIRECTORY``.  An answer counts only
when it is from that process and about a reload that began after the signal
was sent (``CLOCK_MONOTONIC`` is one clock for every process), the way
systemd itself matches ``RELOADING=1`` to a reload request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cened.errors import Refused

ANSWER_FILE = "reload-answer.json"
#: How often the waiting command looks for the answer.
POLL_S = 0.05


class Answer(StrEnum):
    """What the daemon made of a reload."""

    RELOADED = "reloaded"
    REFUSED = "refused"


@dataclass(frozen=True)
class Reply:
    """The daemon's answer to one reload, and which process gave it when."""

    pid: int
    started_usec: int  # CLOCK_MONOTONIC when the daemon began this reload
    answer: Answer
    error: str | None = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def answer_path() -> Path | None:
    """Where the daemon leaves its answer; None outside a unit with ``RuntimeDirectory=``."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / ANSWER_FILE if runtime else None


def write_answer(answer: Answer, started_usec: int, error: str | None = None) -> None:
    """The daemon's side, after each reload; never raises, since nobody may be waiting."""
    path = answer_path()
    if path is None:
        return
    data = {"pid": os.getpid(), "started_usec": started_usec, "outcome": answer, "error": error}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".reload-", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)  # whole or not at all: the waiting side may read at any moment
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_answer(path: Path) -> Reply | None:
    try:
        data = json.loads(path.read_text())
        answer = Answer(data["outcome"])
        return Reply(int(data["pid"]), int(data["started_usec"]), answer, data.get("error"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def request(pid: int, path: Path, *, timeout: float) -> Reply:
    """Send SIGHUP to ``pid`` and return its answer to that very signal."""
    sent = monotonic_usec()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Refused(f"no process {pid} to reload") from None
    except PermissionError:
        raise Refused(f"not allowed to signal process {pid}") from None
    deadline = time.monotonic() + timeout
    while True:
        reply = read_answer(path)
        if reply is not None and reply.pid == pid and reply.started_usec >= sent:
            return reply
        if not _alive(pid):
            raise Refused(f"process {pid} ended before it answered the reload")
        if time.monotonic() > deadline:
            raise Refused(f"process {pid} did not answer the reload within {timeout:g} s")
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (ended, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")

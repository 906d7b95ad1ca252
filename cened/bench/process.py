"""A daemon in a subprocess: ``cened run``, its JSON log lines followed as they come.

Shared by the benchmark's end-to-end figures and the tests that run the real daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

READ_GAP_S = 0.01


def _stamped(event: dict[str, Any], now: float, wall: float) -> float:
    """When the daemon wrote ``event``, on the monotonic clock of ``now`` (read at wall time ``wall``)."""
    try:
        written = datetime.fromisoformat(event["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return now
    return now - max(0.0, wall - written)


def _event(raw: bytes) -> dict[str, Any]:
    """One log line as its JSON object, or as ``{"event": "raw", "line": ...}`` when it is not one."""
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return {"event": "raw", "line": raw.decode(errors="replace").rstrip()}
    return event


def _cpu_of(stat: str) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` line (of a process or of one thread)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DaemonProcess:
    """``cened run --config config`` in a subprocess, its progress read from its JSON log lines.

    The daemon gets this process's environment without its ``CENED_*``
    variables (the config file says what the daemon is to do), then ``env``.
    Every line is kept in :attr:`events`; photos filed or quarantined are
    noted in :attr:`done_at`, dated by the daemon's own timestamps.
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CENED_")}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cened", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []  # every line so far, in order
        self._first: dict[str, dict[str, Any]] = {}  # the first event of each name
        self.started: tuple[float, dict[str, Any]] | None = None
        self.done_at: dict[str, float] = {}  # inbox path -> when its filed/quarantined line was written
        self._awaited: set[str] = set()  # inbox paths a waiter wants; it is woken when none is left
        self.problems: list[dict[str, Any]] = []
        self._ended = False  # the reader has seen the end of the output
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Note the lines in the batches they come in, waking a waiter only when what it waits for has come.

        The benchmark shares the cores with the daemon it times, so reading
        must cost little: waking the waiter for every line, to check every
        photo of the burst again, grows with the square of the burst.  Lines
        are left to gather for ``READ_GAP_S`` instead, and each is dated by the
        daemon's own timestamp, so the gathering does not delay the figures.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        rest = b""
        while chunk := os.read(fd, 1 << 20):
            now, wall = time.monotonic(), time.time()
            *lines, rest = (rest + chunk).split(b"\n")
            wake = False
            with self._cond:
                for raw in lines:
                    event = _event(raw)
                    wake |= self._note(_stamped(event, now, wall), event)
                if wake:
                    self._cond.notify_all()
            time.sleep(READ_GAP_S)
        with self._cond:
            if rest.strip():  # a last line without its newline
                self._note(time.monotonic(), _event(rest))
            self._ended = True
            self._cond.notify_all()

    def _note(self, now: float, event: dict[str, Any]) -> bool:
        """Record one log event; True when a waiter may now have what it waits for."""
        self.events.append(event)
        name = event.get("event")
        wake = False
        if isinstance(name, str) and name not in self._first:
            self._first[name] = event
            wake = True
        if name == "started":
            self.started = (now, event)
        elif name in ("filed", "quarantined", "duplicate"):  # every way out of the inbox
            self.done_at[event["file"]] = now
            if name == "quarantined":
                self.problems.append(event)
            if event["file"] in self._awaited:
                self._awaited.discard(event["file"])
                wake |= not self._awaited
        elif name in ("not-moved", "batch-failed"):
            self.problems.append(event)
        return wake

    def said(self, lines: int = 40) -> list[str]:
        """The last ``lines`` lines, as event names (or the text of lines that were not JSON)."""
        return [str(e.get("line") or e.get("event")) for e in self.events[-lines:]]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``condition()`` holds, checked whenever the reader wakes the waiter.

        RuntimeError, with the daemon's last lines, after ``timeout`` seconds
        or once its output has ended without it.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise RuntimeError(
                        f"daemon: no {what} within {timeout:g}s; it said:\n" + "\n".join(self.said())
                    )
                self._cond.wait(min(left, 0.5))

    def wait_for(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event called ``name``, once it has come."""
        self.wait(lambda: name in self._first, timeout, f"{name!r} event")
        return self._first[name]

    def wait_done(self, keys: Sequence[str], timeout: float, what: str) -> list[float]:
        """When each of ``keys`` (inbox paths) was filed or quarantined, once all of them were."""
        with self._cond:
            self._awaited = {k for k in keys if k not in self.done_at}
        try:
            self.wait(lambda: not self._awaited, timeout, what)
        finally:
            with self._cond:
                self._awaited = set()
        return [self.done_at[k] for k in keys]

    def wait_started(self) -> float:
        """Seconds from process start to the ``started`` line (READY)."""
        self.wait(lambda: self.started is not None, 180, "start")
        assert self.started is not None
        return self.started[0] - self.spawned

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the daemon so far, all threads (Linux ``/proc``; None elsewhere)."""
        try:
            return _cpu_of(Path(f"/proc/{self.proc.pid}/stat").read_text())
        except OSError:
            return None

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far by kind of thread (the daemon names them: cened.threadnames); {} off Linux.

        The pools' numbered threads count together (``decode_0`` and
        ``decode_1`` as ``decode``), the main thread as ``main``, threads the
        daemon did not name (watchdog's observers) as ``other``.
        """
        kinds: dict[str, float] = {}
        try:
            tasks = list(Path(f"/proc/{self.proc.pid}/task").iterdir())
        except OSError:
            return {}
        for task in tasks:
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread has just ended
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            kind = "main" if task.name == str(self.proc.pid) else comm.rstrip("0123456789").rstrip("_")
            if kind.startswith("Thread-") or not kind:
                kind = "other"
            kinds[kind] = kinds.get(kind, 0.0) + _cpu_of(stat)
        return kinds

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout: float = 15.0, *, or_kill: bool = False) -> int:
        """SIGTERM, then the exit code once the daemon has ended.

        A daemon still running after ``timeout`` seconds raises
        :class:`subprocess.TimeoutExpired`, or with ``or_kill`` is killed.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if not or_kill:
                raise
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

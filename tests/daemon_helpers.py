"""Running the daemon for a test: as a real `cened run` subprocess, or in a thread of this process.

The subprocess is :class:`cened.bench.process.DaemonProcess`, shared with the benchmark.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cened.bench.process import DaemonProcess
from cened.config import Settings
from cened.daemon import Daemon

__all__ = ["DaemonProcess", "RunningDaemon", "files_under", "run_cli", "wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def run_cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cened"]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120)


class RunningDaemon:
    """The daemon in a background thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon(settings)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.daemon.run()

    def __enter__(self) -> Daemon:
        self.thread.start()
        assert self.daemon.serving.wait(timeout=60)
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive() and self.code == 0

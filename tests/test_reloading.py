"""`cened reload`, the units' ExecReload=: SIGHUP, then the daemon's answer to that very signal.

The daemon here is this test process: its SIGHUP handler answers the way
the daemon does, so the waiting side is tested without starting one (the
real daemon answers in tests/test_notify.py, and under systemd in
tests/test_systemd_boot.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from cened import reloading
from cened.cli import main
from cened.errors import ExitCode, Refused


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The unit's RuntimeDirectory=, as systemd hands it to ExecStart= and ExecReload=."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    return tmp_path


@pytest.fixture
def answers_sighup() -> Iterator[list[reloading.Answer]]:
    """This process answers each SIGHUP with the next answer of the list it is given."""
    answers: list[reloading.Answer] = []

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        answer = answers.pop(0)
        error = "batch_size: must be at least 1" if answer == reloading.Answer.REFUSED else None
        reloading.write_answer(answer, reloading.monotonic_usec(), error)

    saved = signal.signal(signal.SIGHUP, on_hup)
    try:
        yield answers
    finally:
        signal.signal(signal.SIGHUP, saved)


def test_a_reload_waits_for_the_answer(runtime: Path, answers_sighup: list[reloading.Answer]) -> None:
    answers_sighup += [reloading.Answer.RELOADED, reloading.Answer.REFUSED]
    assert main(["reload", "--pid", str(os.getpid())]) == 0
    assert main(["reload", "--pid", str(os.getpid())]) == ExitCode.REFUSED
    assert answers_sighup == []


def test_the_refusal_is_said(
    runtime: Path, answers_sighup: list[reloading.Answer], capsys: pytest.CaptureFixture[str]
) -> None:
    answers_sighup.append(reloading.Answer.REFUSED)
    assert main(["reload", "--pid", str(os.getpid())]) == ExitCode.REFUSED
    assert "refused the new config and keeps the old one: batch_size" in capsys.readouterr().err


def test_an_older_answer_is_not_taken_for_this_one(runtime: Path) -> None:
    """An answer from before the signal (or from another process) is someone else's reload."""
    reloading.write_answer(reloading.Answer.RELOADED, reloading.monotonic_usec())
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a daemon that never answers
    try:
        started = time.monotonic()
        with pytest.raises(Refused, match="did not answer"):
            reloading.request(os.getpid(), runtime / reloading.ANSWER_FILE, timeout=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        signal.signal(signal.SIGHUP, saved)


def test_a_daemon_that_ends_instead_of_answering(runtime: Path) -> None:
    # Dies of SIGHUP; its default action set anew, since a parent under nohup passes on SIG_IGN.
    code = "; ".join(
        [
            "import signal, time",
            "signal.signal(signal.SIGHUP, signal.SIG_DFL)",
            "print('ready', flush=True)",
            "time.sleep(60)",
        ]
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    try:
        with pytest.raises(Refused, match="ended before it answered"):
            reloading.request(child.pid, runtime / reloading.ANSWER_FILE, timeout=30)
    finally:
        child.kill()
        child.wait()


def test_no_such_process(runtime: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(Refused, match="no process"):
        reloading.request(child.pid, runtime / reloading.ANSWER_FILE, timeout=1)


def test_outside_systemd_it_says_how_to_reload(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert main(["reload", "--pid", "12345"]) == ExitCode.CONFIG
    assert "kill -HUP 12345" in capsys.readouterr().err


def test_the_daemon_side_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    reloading.write_answer(reloading.Answer.RELOADED, 1)  # nowhere to write: nothing happens
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "gone"))
    reloading.write_answer(reloading.Answer.RELOADED, 1)
    assert not (tmp_path / "gone").exists()

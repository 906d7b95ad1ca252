"""A database damaged, missing, unwritable or in use: one clear line and exit code 4, never a traceback.

Code 4 is in the units' ``RestartPreventExitStatus=``: none of these mends
itself, so systemd must not restart the daemon into it again and again.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config, write_photo
from daemon_helpers import DaemonProcess, files_under, run_cli, wait_until
from fs_helpers import immutable, read_only_mount

from cened.config import Settings
from cened.daemon import JOURNAL_FAILURES_MAX, Daemon
from cened.errors import ExitCode, JournalError
from cened.journal import Entry, Journal


def _run_daemon(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``cened run`` to its end: for a daemon that is expected to refuse to run."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "cened", "--config", str(config), "run"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.DATABASE, output
    assert "Traceback" not in output, output
    assert "cened: database problem:" in result.stderr, output
    for word in words:
        assert word in result.stderr, output


def _filled_database(path: Path) -> None:
    with Journal(path) as journal:
        journal.add(
            [
                Entry(action="moved", source=Path(f"/inbox/{i}.jpg"), destination=Path(f"/lib/{i}.jpg"))
                for i in range(400)
            ]
        )
        journal.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage-inside", "zeros-inside", "8-kib-inside", "replaced"])
def test_a_damaged_database_is_refused_with_code_4_by_every_command(
    tmp_path: Path, settings: Settings, damage: str
) -> None:
    """Overwritten in place (the header intact, rows not) or replaced whole, as by a stray copy."""
    _filled_database(settings.database)
    size = settings.database.stat().st_size
    if damage == "replaced":
        replacement = tmp_path / "garbage"
        replacement.write_bytes(os.urandom(size))
        os.replace(replacement, settings.database)
    elif damage == "8-kib-inside":  # two pages no query of a short history or of doctor may read
        with open(settings.database, "r+b") as fh:
            fh.seek(size // 2 // 4096 * 4096)
            fh.write(os.urandom(8192))
    else:  # the middle third: SQLite finds broken pages; zeros also make rows with a NULL action
        with open(settings.database, "r+b") as fh:
            fh.seek(size // 3)
            fh.write(os.urandom(size // 3) if damage == "garbage-inside" else bytes(size // 3))
    config = write_config(tmp_path / "cened.toml", settings)
    commands = (["stats"], ["history", "--limit", "0"], ["history"], ["doctor"], ["undo", "--last", "1"])
    for command in commands:
        _refused(run_cli(*command, config=config), str(settings.database))
    # The daemon refuses at start, or stops at its first write to the damaged rows.
    write_photo(settings.inbox / "waiting.jpg", "sea")
    _refused(_run_daemon(config), str(settings.database))
    assert files_under(settings.library) == []


def test_doctor_on_a_missing_database_says_so_and_creates_none(tmp_path: Path, settings: Settings) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    result = run_cli("doctor", config=config)
    _refused(result, "no database", str(settings.database))
    assert "all consistent" not in result.stdout
    assert not settings.database.exists()


@pytest.mark.parametrize("how", ["read-only-file", "read-only-folder"])
def test_a_database_that_cannot_be_written_stops_the_daemon_at_start(
    tmp_path: Path, settings: Settings, how: str
) -> None:
    """SQLite opens a database it cannot write without a word; the daemon must find out before READY."""
    _filled_database(settings.database)
    photo = write_photo(settings.inbox / "waiting.jpg", "sea")
    config = write_config(tmp_path / "cened.toml", settings)
    if how == "read-only-file":
        protect, says = immutable(settings.database), ["readonly database"]
    else:  # SQLite cannot even open it (no -shm can be made)
        protect, says = read_only_mount(settings.database.parent), []
    with protect:
        result = _run_daemon(config)
    _refused(result, str(settings.database), *says)
    assert photo.exists() and files_under(settings.library) == []


@pytest.mark.slow
def test_a_journal_that_fails_while_running_stops_the_daemon_with_code_4(
    tmp_path: Path, settings: Settings
) -> None:
    """The state disk fills up under a running daemon: every intent would fail, so it stops."""
    state = tmp_path / "small-state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {mounted.stderr.decode().strip()}")
    try:
        config = write_config(tmp_path / "cened.toml", settings, database=state / "cened.sqlite3")
        daemon = DaemonProcess(config)
        try:
            daemon.wait_for("started", timeout=90)
            fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError:
                pass
            finally:
                os.close(fd)
            photo = write_photo(settings.inbox / "late.jpg", "forest")
            failed = daemon.wait_for("journal-failed", timeout=30)
            assert "full" in failed["error"], failed
            assert wait_until(lambda: daemon.proc.poll() is not None, timeout=30)
        finally:
            code = daemon.stop(or_kill=True)
        assert code == ExitCode.DATABASE
        assert photo.exists() and files_under(settings.library) == []
        assert "stopped" not in {e.get("event") for e in daemon.events}
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.mark.slow
def test_a_database_deleted_under_the_daemon_stops_it_before_another_photo_is_filed(
    tmp_path: Path, settings: Settings
) -> None:
    """SQLite would go on writing into the deleted file, whose rows the next start would never see."""
    config = write_config(tmp_path / "cened.toml", settings)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("started", timeout=90)
        write_photo(settings.inbox / "first.jpg", "sea")
        daemon.wait_for("filed", timeout=30)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.database}{suffix}").unlink(missing_ok=True)
        photo = write_photo(settings.inbox / "late.jpg", "forest")
        failed = daemon.wait_for("journal-failed", timeout=30)
        assert "deleted or replaced" in failed["error"], failed
        assert wait_until(lambda: daemon.proc.poll() is not None, timeout=30)
    finally:
        code = daemon.stop(or_kill=True)
    assert code == ExitCode.DATABASE
    assert photo.exists() and not (settings.library / "forest").exists()
    assert [e.get("event") for e in daemon.events].count("filed") == 1


def _busy_error(path: Path) -> JournalError:
    """A real SQLITE_BUSY, as the journal raises it: another connection holds the write lock."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            waiter.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            error = JournalError(f"{path}: {exc}")
            error.__cause__ = exc
            return error
        finally:
            waiter.close()
    finally:
        holder.close()
    raise AssertionError("the database was not busy")


def test_a_busy_database_is_waited_out_a_little_anything_else_stops_at_once(settings: Settings) -> None:
    _filled_database(settings.database)
    busy = _busy_error(settings.database)
    assert busy.__cause__.sqlite_errorname == "SQLITE_BUSY"
    daemon = Daemon(settings)
    for _ in range(JOURNAL_FAILURES_MAX - 1):
        daemon._journal_failed(busy, files=1)
        assert not daemon.stopping.is_set()
    daemon._journal_failed(busy, files=1)
    assert daemon.stopping.is_set() and daemon._fatal is busy

    readonly = sqlite3.connect(f"file:{settings.database}?mode=ro", uri=True)
    try:
        readonly.execute("DELETE FROM decisions")
    except sqlite3.OperationalError as exc:
        error = JournalError(str(exc))
        error.__cause__ = exc
    readonly.close()
    daemon = Daemon(settings)
    daemon._journal_failed(error, files=1)
    assert daemon.stopping.is_set() and daemon._fatal is error


# -- 10: one daemon per database ----------------------------------------------------


@pytest.mark.slow
def test_a_second_daemon_on_the_same_database_exits_with_code_4(tmp_path: Path, settings: Settings) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    first = DaemonProcess(config)
    try:
        first.wait_for("started", timeout=90)
        second = _run_daemon(config)
        _refused(second, "in use by another cened daemon", f"pid {first.proc.pid}")
        assert "started" not in second.stdout
        photo = write_photo(settings.inbox / "after.jpg", "sea")  # the first one is unharmed
        assert wait_until(lambda: not photo.exists(), timeout=20)
    finally:
        assert first.stop() == 0
    # The lock goes with the daemon that held it: the next one starts.
    third = DaemonProcess(config)
    try:
        third.wait_for("started", timeout=90)
    finally:
        assert third.stop() == 0


@pytest.mark.slow
def test_a_second_daemon_on_the_same_inbox_with_another_database_exits_with_code_2(
    tmp_path: Path, settings: Settings
) -> None:
    """Two databases, one inbox: they would file the same photos twice over, each in its own log."""
    config = write_config(tmp_path / "cened.toml", settings)
    other = write_config(
        tmp_path / "other.toml",
        settings.model_copy(update={"database": tmp_path / "elsewhere" / "cened.sqlite3"}),
    )
    first = DaemonProcess(config)
    try:
        first.wait_for("started", timeout=90)
        second = _run_daemon(other)
        assert second.returncode == ExitCode.CONFIG, second.stdout + second.stderr
        assert "inbox" in second.stderr and "used by another cened daemon" in second.stderr
        assert "started" not in second.stdout
    finally:
        assert first.stop() == 0

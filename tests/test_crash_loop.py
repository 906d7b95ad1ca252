"""A photo that hangs the decoder is quarantined after two deaths of the daemon, and named.

The watchdog kills a daemon stuck on one photo; without a record of what was
in flight, the photo would be taken again after every restart, forever.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import DaemonProcess, RunningDaemon, files_under, wait_until

from cened import inflight
from cened.config import Settings

HANG = {"CENED_HANG_AT": "decode:poison.jpg"}


def test_deaths_by_a_fatal_signal_are_counted_for_the_photos_left_in_flight(tmp_path: Path) -> None:
    file = tmp_path / "db.sqlite3.in-flight"
    fault = inflight.fault_file_for(file)
    a, b, c = (tmp_path / n for n in ("a.jpg", "b.jpg", "c\nd.jpg"))
    record = inflight.InFlight(file)
    record.begin(catch_faults=False)
    for path in (a, b, c):
        record.start(path)
    record.end([b])  # b was scored; a and c were still in flight at the death
    # A SIGKILL (an operator, the OOM killer) leaves no stacks: nobody is blamed.
    assert inflight.InFlight(file).deaths == {}
    # The watchdog's SIGABRT does: faulthandler wrote them.
    fault.write_text("Fatal Python error: Aborted\n\nThread 0x01 (most recent call first):\n")
    again = inflight.InFlight(file)  # the restart
    assert again.deaths == {a: 1, c: 1} and again.fault.startswith("Fatal Python error")
    again.begin(catch_faults=False)
    again.start(a)  # a, retried alone, gets the daemon killed again
    with file.open("a") as fh:
        fh.write('{"end": "cut short by the de')  # the death may cut the last line
    assert inflight.deaths_recorded(file) == {a: 2, c: 1}


def test_a_second_death_names_only_what_it_caught_in_flight(tmp_path: Path) -> None:
    """Batch-mates retried alone and filed before the poison killed the daemon again are not named."""
    file = tmp_path / "db.sqlite3.in-flight"
    fault = inflight.fault_file_for(file)
    poison, mate = tmp_path / "poison.jpg", tmp_path / "mate.jpg"
    first = inflight.InFlight(file)
    first.begin(catch_faults=False)
    first.start(mate)
    first.start(poison)
    fault.write_text("Fatal Python error: Aborted\n")  # the first death, both in flight
    second = inflight.InFlight(file)
    assert second.at_death == {mate, poison} and second.deaths == {mate: 1, poison: 1}
    second.begin(catch_faults=False)
    second.start(mate)  # retried alone, and filed
    second.end([mate])
    second.forget(mate)
    second.start(poison)  # retried alone: the daemon dies again
    third = inflight.InFlight(file)
    assert third.at_death == {poison} and third.deaths == {poison: 2}


def test_a_clean_stop_leaves_no_suspects(settings: Settings) -> None:
    for i in range(6):
        write_photo(settings.inbox / f"{i}.jpg", CLASSES[i % 6], seed=i)
    with RunningDaemon(settings):
        assert wait_until(lambda: not files_under(settings.inbox), timeout=30)
    file = inflight.file_for(settings.database)
    assert file.exists() and inflight.deaths_recorded(file, count_in_flight=True) == {}


def _abort(daemon: DaemonProcess) -> None:
    """What systemd's watchdog does to a daemon that stopped pinging: SIGABRT (WatchdogSignal=)."""
    assert daemon.proc.poll() is None  # stuck, not ended
    daemon.proc.send_signal(signal.SIGABRT)
    assert daemon.proc.wait(timeout=10) == -signal.SIGABRT
    daemon.stop()


def _abort_when(daemon: DaemonProcess, event: str, file: Path) -> None:
    """Once the daemon says ``event`` about ``file`` and then stays stuck, abort it as the watchdog would."""
    daemon.wait(
        lambda: any(e.get("event") == event and e.get("file") == str(file) for e in daemon.events),
        timeout=60,
        what=f"{event} for {file.name}",
    )
    time.sleep(1.0)
    _abort(daemon)


@pytest.mark.slow
def test_a_photo_that_hangs_the_decoder_is_quarantined_after_two_deaths(
    tmp_path: Path, settings: Settings
) -> None:
    inbox = settings.inbox
    poison = write_photo(inbox / "poison.jpg", "sea")
    good = [write_photo(inbox / f"{name}.jpg", CLASSES[i % 6], seed=i) for i, name in enumerate("abcpqxyz")]
    config = write_config(tmp_path / "cened.toml", settings, batch_size=4, model_batch_size=4)

    # 1: the poison hangs its batch; the daemon is aborted as the watchdog would.
    daemon = DaemonProcess(config, env=HANG)
    daemon.wait_for("started", timeout=60)
    time.sleep(3.0)
    assert poison.exists()
    _abort(daemon)

    # 2: the photos of that batch are retried alone, before anything else; the poison hangs again.
    daemon = DaemonProcess(config, env=HANG)
    died = daemon.wait_for("died-of-a-fault", timeout=60)
    assert str(poison) in died["in_flight"] and "hang_point" in died["stacks"]  # where it was stuck
    _abort_when(daemon, "retrying-alone", poison)

    # 3: in flight at two deaths, it is quarantined unread, and named; the rest are filed.
    daemon = DaemonProcess(config, env=HANG)
    try:
        named = daemon.wait_for("crashed-the-daemon", timeout=60)
        assert named["file"] == str(poison) and named["level"] == "error" and named["deaths"] == 2
        daemon.wait_for("started", timeout=60)
        assert wait_until(lambda: not files_under(inbox), timeout=30), files_under(inbox)
    finally:
        assert daemon.stop() == 0
    assert (settings.quarantine_dir / "poison.jpg").exists()
    filed = [p for p in files_under(settings.library) if settings.quarantine_dir not in p.parents]
    assert sorted(p.name for p in filed) == sorted(p.name for p in good)
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT source, action, reason FROM decisions WHERE state = 'done'").fetchall()
    assert len(rows) == len(good) + 1
    ((reason,),) = [(r,) for source, action, r in rows if Path(source) == poison and action == "quarantined"]
    assert reason.startswith("crashed-the-daemon:"), reason

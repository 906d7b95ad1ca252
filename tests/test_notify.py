"""The daemon as systemd sees it: sd_notify datagrams on a real socket, SIGHUP reloads, SIGTERM.

Each daemon start costs a TensorFlow import, so two subprocesses carry all
the behaviour: one speaks the notify protocol end to end, one is reloaded
through good and bad configs.  The Notifier itself (path and abstract
sockets, the watchdog environment) is tested in-process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import COLOURS, write_config, write_photo
from daemon_helpers import DaemonProcess, RunningDaemon, files_under, wait_until
from PIL import Image

from cened import daemon as daemon_module
from cened.config import Settings
from cened.notify import Notifier, watchdog_interval
from cened.pipeline import Processor

Message = dict[str, str]


class NotifySocket:
    """What systemd's side of NOTIFY_SOCKET would receive, in order, with arrival times."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, Message]] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))
            self._new.put(None)

    def wait_for(self, match: Callable[[Message], bool], start: int = 0, timeout: float = 60.0) -> int:
        """Index of the first message from ``start`` on that matches; fails with what did arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.messages)):
                if match(self.messages[i][1]):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no such notify message; got {[m for _, m in self.messages][-30:]}")
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=0.2)

    def since(self, start: int) -> list[Message]:
        return [m for _, m in self.messages[start:]]

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp paths can be longer."""
    path = Path(tempfile.mkdtemp(prefix="cened-sd-", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def is_(key: str) -> Callable[[Message], bool]:
    return lambda m: m.get(key) == "1"


#: The daemon's STATUS: "N filed, B busy, Q queued, S settling" (or "S waiting for room" while
#: the queue is full), then "; a batch has been running for T s" while one is stuck.
STATUS = re.compile(r"(\d+) filed, (\d+) busy, (\d+) queued, (\d+) (settling|waiting for room)(; .*)?")


def filed_count(message: Message) -> int | None:
    found = STATUS.fullmatch(message.get("STATUS", ""))
    return int(found.group(1)) if found else None


def status_numbers(message: Message) -> dict[str, int]:
    found = STATUS.fullmatch(message["STATUS"])
    assert found, message
    filed, busy, queued, waiting = map(int, found.groups()[:4])
    return {"filed": filed, "busy": busy, "queued": queued, found.group(5): waiting}


def daemon_env(notify: NotifySocket, **extra: str) -> dict[str, str]:
    # WATCHDOG_PID empty, not inherited: a stale one would make the daemon ignore WATCHDOG_USEC.
    return {"NOTIFY_SOCKET": notify.address, "WATCHDOG_PID": "", **extra}


def nth_event(daemon: DaemonProcess, name: str, n: int, timeout: float = 60.0) -> dict[str, Any]:
    """The n-th (1-based) log event called ``name``; DaemonProcess.wait_for only finds the first."""

    def found() -> list[dict[str, Any]]:
        return [e for e in list(daemon.events) if e.get("event") == name]

    wait_until(lambda: len(found()) >= n or daemon.proc.poll() is not None, timeout=timeout)
    events = found()
    assert len(events) >= n, f"only {len(events)} {name!r} events; last lines: {daemon.events[-20:]}"
    return events[n - 1]


def drop(inbox: Path, name: str, cls: str, seed: int = 0, size: tuple[int, int] = (64, 48)) -> Path:
    """Arrive the way a finished copy does: written under a hidden name, then renamed in."""
    hidden = write_photo(inbox / f".{name}.part", cls, seed=seed, size=size)
    target = inbox / name
    hidden.rename(target)
    return target


# -- the protocol, end to end ----------------------------------------------------


@pytest.mark.slow
def test_daemon_speaks_the_notify_protocol(tmp_path: Path, settings: Settings, socket_dir: Path) -> None:
    """READY after the start-up scan and before any filing, STATUS per batch, WATCHDOG, STOPPING."""
    write_photo(settings.inbox / "waiting.jpg", "sea")  # there before start: the scan must find it
    config = write_config(tmp_path / "cened.toml", settings)
    notify = NotifySocket(str(socket_dir / "notify"))
    daemon = DaemonProcess(config, env=daemon_env(notify, WATCHDOG_USEC="1000000"))
    try:
        ready = notify.wait_for(is_("READY"), timeout=120)
        first = notify.since(0)
        assert ready == 0, f"messages before READY=1: {first[:ready]}"
        assert filed_count(first[0]) == 0, first[0]  # nothing filed before READY
        assert daemon.wait_for("scanned", timeout=10)["candidates"] == 1
        assert daemon.wait_for("started", timeout=10)

        one = notify.wait_for(lambda m: filed_count(m) == 1, start=ready, timeout=60)
        assert wait_until(lambda: (settings.library / "sea" / "waiting.jpg").exists(), timeout=10)
        write_photo(settings.inbox / "later.jpg", "forest", seed=1)
        two = notify.wait_for(lambda m: filed_count(m) == 2, start=one, timeout=60)
        assert (settings.library / "forest" / "later.jpg").exists()

        # WATCHDOG=1 every WATCHDOG_USEC/2, from the serving loop.
        def pings() -> list[float]:
            return [t for t, m in notify.messages[ready:] if m.get("WATCHDOG") == "1"]

        assert wait_until(lambda: len(pings()) >= 6, timeout=30), notify.since(ready)
        gaps = [b - a for a, b in itertools.pairwise(pings())]
        assert statistics.median(gaps) < 1.0, gaps

        # A reload is bracketed by RELOADING=1 (with its timestamp) and READY=1.
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(is_("RELOADING"), start=two, timeout=30)
        assert int(notify.messages[reloading][1]["MONOTONIC_USEC"]) > 0
        notify.wait_for(is_("READY"), start=reloading + 1, timeout=30)
        daemon.wait_for("reloaded", timeout=30)
        mark = len(notify.messages)
    finally:
        code = daemon.stop(timeout=60)
    try:
        stopping = notify.wait_for(is_("STOPPING"), start=mark, timeout=10)
        assert not any(m.get("READY") for m in notify.since(stopping))
    finally:
        notify.close()
    assert code == 0
    assert daemon.wait_for("stopped", timeout=5)["filed"] == 2


# -- reloading -------------------------------------------------------------------


def mixed_photo(path: Path) -> Path:
    """Half forest, half sea (40x30 pixels): a photo the test model cannot be sure of."""
    left, right = Image.new("RGB", (20, 30), COLOURS["forest"]), Image.new("RGB", (20, 30), COLOURS["sea"])
    img = Image.new("RGB", (40, 30))
    img.paste(left, (0, 0))
    img.paste(right, (20, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def write_reload_config(path: Path, settings: Settings, albums: dict[str, str], **keys: object) -> None:
    """Rewritten in place, the way an editor saves: the daemon rereads the same path."""
    write_config(path, settings, **keys)
    with path.open("a") as fh:
        fh.write("\n[albums]\n" + "".join(f'{k} = "{v}"\n' for k, v in albums.items()))


@pytest.mark.slow
def test_sighup_reloads_refuses_bad_configs_and_keeps_the_queue(
    tmp_path: Path, settings: Settings, socket_dir: Path
) -> None:
    inbox, library = settings.inbox, settings.library
    config = tmp_path / "cened.toml"
    # Files of 1 KB at most: a reload must put the limit back.
    write_reload_config(config, settings, {}, confidence_threshold=1.0, max_file_mb=0.001)
    notify = NotifySocket(str(socket_dir / "notify"))
    runtime = tmp_path / "runtime"  # the unit's RuntimeDirectory=, where the daemon answers `cened reload`
    runtime.mkdir()
    daemon = DaemonProcess(config, env=daemon_env(notify, RUNTIME_DIRECTORY=str(runtime)))

    def reload_command() -> subprocess.CompletedProcess[str]:
        """The units' ExecReload=: returns once the daemon has decided, 1 when it refused."""
        env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
        cmd = [sys.executable, "-m", "cened", "reload", "--pid", str(daemon.proc.pid)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    try:
        daemon.wait_for("started", timeout=120)

        # Threshold 1.0: even a photo the model likes goes to review.
        mixed_photo(inbox / "unsure.png")
        first = daemon.wait_for("filed", timeout=60)
        assert first["album"] == "review" and first["confidence"] < 1.0, first
        assert (library / "review" / "unsure.png").exists()
        drop(inbox, "big.jpg", "forest", size=(100, 60))
        assert daemon.wait_for("quarantined", timeout=60)["reason"].startswith("too-large")

        # A good config, applied by `cened reload` (SIGHUP, then the answer): threshold 0, a
        # mapping, the default file size limit.
        write_reload_config(config, settings, {"forest": "woods"}, confidence_threshold=0.0)
        done = reload_command()
        assert done.returncode == 0, done.stderr
        assert nth_event(daemon, "reloaded", 1)["config"]["albums"] == {"forest": "woods"}
        drop(inbox, "trees.jpg", "forest", seed=2, size=(100, 60))
        assert wait_until(lambda: (library / "woods" / "trees.jpg").exists(), timeout=60), files_under(
            library
        )

        # Bad configs are refused, one after the other, and the good one stays.
        bad_configs = [
            ("batch_size = = 4\n", {"forest": "woods"}, "not valid TOML"),
            ("batch_size = 0\n", {"forest": "woods"}, "batch_size"),
            ("", {"forest": "woods", "lava": "hot"}, "lava"),  # a class the model does not know
        ]
        for n, (bad_line, albums, why) in enumerate(bad_configs, start=1):
            write_reload_config(config, settings, albums, confidence_threshold=0.5)
            config.write_text(bad_line + config.read_text())
            if n == 1:  # `cened reload` fails, and says why
                done = reload_command()
                assert done.returncode == 1 and why in done.stderr, done.stderr
            else:
                daemon.proc.send_signal(signal.SIGHUP)
            refused = nth_event(daemon, "reload-refused", n)
            assert refused["level"] == "error" and why in refused["error"], refused
        assert len([e for e in daemon.events if e.get("event") == "reloaded"]) == 1
        drop(inbox, "more-trees.jpg", "forest", seed=3)
        assert wait_until(lambda: (library / "woods" / "more-trees.jpg").exists(), timeout=60), files_under(
            library
        )
        assert daemon.proc.poll() is None

        # Files still settling when SIGHUP arrives are not dropped: a long
        # stable_seconds keeps them waiting in the daemon, across the reload,
        # and they are filed under the *new* mapping.  queue_max only changes
        # at a restart: a reload that changes it is refused whole, and says so.
        write_reload_config(
            config, settings, {"forest": "woods"}, confidence_threshold=0.0, stable_seconds=6.0, queue_max=32
        )
        done = reload_command()
        assert done.returncode == 1 and "queue_max only change(s) on a restart" in done.stderr, done.stderr
        assert nth_event(daemon, "reload-needs-restart", 1)["keys"] == ["queue_max"]
        write_reload_config(
            config, settings, {"forest": "woods"}, confidence_threshold=0.0, stable_seconds=6.0
        )
        daemon.proc.send_signal(signal.SIGHUP)
        nth_event(daemon, "reloaded", 2)
        waiting = [drop(inbox, f"wait-{i}.jpg", "forest", seed=10 + i) for i in range(4)]
        time.sleep(1.0)  # let the watcher see them
        mark = len(notify.messages)
        write_reload_config(
            config, settings, {"forest": "trees"}, confidence_threshold=0.0, stable_seconds=6.0
        )
        daemon.proc.send_signal(signal.SIGHUP)
        nth_event(daemon, "reloaded", 3)
        ready = notify.wait_for(is_("READY"), start=mark, timeout=30)
        held = status_numbers(notify.messages[ready][1])
        assert held["filed"] == 4 and held["busy"] + held["queued"] + held["settling"] == 4, held
        assert wait_until(lambda: all(not p.exists() for p in waiting), timeout=60)
        assert sorted(p.name for p in (library / "trees").iterdir()) == [p.name for p in waiting]
    finally:
        code = daemon.stop(timeout=60)
        notify.close()
    assert code == 0


# -- the Notifier in-process -----------------------------------------------------


@pytest.mark.slow
def test_a_stuck_model_call_stops_the_watchdog_pings(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, socket_dir: Path
) -> None:
    """The model runs on scorer threads now; the main thread still pings only between batches.

    So a model call that never returns starves systemd's watchdog and gets the
    service restarted, and the pings come back once it does return.
    """
    notify = NotifySocket(str(socket_dir / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping due every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    entered, release = threading.Event(), threading.Event()
    score = Processor.score

    def stuck_on_one_photo(self: Processor, batch: Any) -> Any:
        if any(p.path.name == "stuck.jpg" for p in batch):
            entered.set()
            release.wait(60)
        return score(self, batch)

    monkeypatch.setattr(Processor, "score", stuck_on_one_photo)
    monkeypatch.setattr(daemon_module, "STATUS_EVERY_S", 0.1)
    monkeypatch.setattr(daemon_module, "STUCK_AFTER_S", 0.5)
    try:
        with RunningDaemon(settings):
            ready = notify.wait_for(is_("READY"))
            notify.wait_for(is_("WATCHDOG"), ready)  # idle, it pings
            photo = write_photo(settings.inbox / "stuck.jpg", "sea")
            assert entered.wait(30)
            time.sleep(0.3)  # the main thread may ping once more before it waits on this batch
            mark = len(notify.messages)
            time.sleep(1.0)  # ten ping periods
            assert not [m for m in notify.since(mark) if m.get("WATCHDOG")]
            # STATUS does not go stale meanwhile: it says a batch is stuck, and for how long.
            stuck = notify.wait_for(lambda m: "a batch has been running for" in m.get("STATUS", ""), ready)
            assert status_numbers(notify.messages[stuck][1])["busy"] == 1
            release.set()
            notify.wait_for(is_("WATCHDOG"), mark, timeout=10)
            assert wait_until(lambda: not photo.exists(), timeout=30)
    finally:
        release.set()
        notify.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_datagrams(abstract: bool, socket_dir: Path) -> None:
    address = f"@cened-test-{uuid.uuid4().hex}" if abstract else str(socket_dir / "notify")
    receiver = NotifySocket(address)
    notifier = Notifier(address)
    try:
        assert notifier.enabled
        notifier.ready("0 filed, 0 busy, 0 queued, 0 settling")
        notifier.watchdog()
        notifier.stopping()
        receiver.wait_for(is_("STOPPING"), timeout=10)
        assert receiver.since(0) == [
            {"READY": "1", "STATUS": "0 filed, 0 busy, 0 queued, 0 settling"},
            {"WATCHDOG": "1"},
            {"STOPPING": "1"},
        ]
    finally:
        notifier.close()
        receiver.close()


def test_notifier_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch, socket_dir: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # nothing to send to, nothing raised
    # A socket that went away must not hurt the daemon either.
    gone = Notifier(str(socket_dir / "nobody-listens"))
    gone.ready("x")
    gone.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("1000000", None, 0.5),
        ("1000000", "self", 0.5),
        ("1000000", "1", None),  # meant for another process
        ("", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    usec: str, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert watchdog_interval() == expected


def test_status_tells_settling_from_waiting_for_room(settings: Settings, tmp_path: Path) -> None:
    """With the queue full, the photos still in the inbox wait for room, settled or not."""
    from cened.daemon import Daemon

    daemon = Daemon(settings.model_copy(update={"queue_max": 2}))
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        daemon.tracker.touch(tmp_path / name)
    assert daemon._status() == "0 filed, 0 busy, 0 queued, 3 settling"
    daemon.paths.put(tmp_path / "x.jpg")
    daemon.paths.put(tmp_path / "y.jpg")
    assert daemon._status() == "0 filed, 0 busy, 2 queued, 3 waiting for room"
    assert status_numbers({"STATUS": daemon._status()})["waiting for room"] == 3

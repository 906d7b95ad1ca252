"""The units under a real, booted systemd: what `systemd-analyze verify` cannot tell.

systemd is booted with ``systemd-nspawn --boot`` on a throwaway overlay of
``/`` (its upper layer a tmpfs, in a private mount namespace), so the
container has this very venv and checkout and nothing it writes survives.
Inside, the system unit is written by ``cened install-service`` for a config
that uses the tiny test model, with a drop-in that only shortens the
watchdog and points Python at this checkout, and then driven with
``systemctl``:

* its exposure (``systemd-analyze security``) is 1.0 or less;
* ``systemctl start`` returns once READY=1 came, and the unit is active;
* a photo is filed, a poison one quarantined;
* a good ``systemctl reload`` succeeds, one with a broken config fails (and
  the daemon keeps running on the old config);
* a daemon hung with SIGSTOP is killed by the watchdog and restarted;
* ``systemctl stop`` ends it cleanly (exit 0, "stopped" logged);
* a library outside ``ReadWritePaths=`` stops the start with exit code 2, not
  restarted, and so does a database under ``/var/tmp`` (``PrivateTmp=``);
* every line of ``journalctl -t cened -o cat`` is JSON, and ``-p err`` has the
  refused reload.

Then the user unit, installed by and for a plain user and run by that
user's own manager with all its hardening: exposure, start, a photo filed,
a refused and a good reload, a stop.

It needs root, systemd-nspawn (Debian: systemd-container), unshare, nsenter
and overlayfs, and skips with the reason where any of them is missing or the
container does not boot.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import write_photo

from cened import service

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: Where the test's files live inside the container (outside /tmp, which the unit makes private).
MODEL = Path("/opt/cened-boot-test/model")
CONFIG = Path("/etc/cened/config.toml")
PHOTOS = Path("/srv/cened")
INBOX, LIBRARY = PHOTOS / "inbox", PHOTOS / "albums"
#: A folder the unit does not let the service write to.
OUTSIDE = Path("/opt/cened-boot-test/elsewhere")
WATCHDOG_S = 4
BOOT_TIMEOUT_S = 60


def _cannot_boot() -> str | None:
    """Why this machine cannot boot a container for the test, or None."""
    if sys.platform != "linux":
        return "systemd needs Linux"
    if os.geteuid() != 0:
        return "booting systemd-nspawn needs root"
    if any(ROOT.is_relative_to(tmp) for tmp in ("/tmp", "/var/tmp")):
        # nspawn gives the container a /tmp of its own, and the unit a private one (PrivateTmp=).
        return f"the checkout {ROOT} is under a temporary folder, which the container and the unit hide"
    for tool in ("systemd-nspawn", "unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            hint = " (Debian: apt-get install systemd-container; .ci/run does it)" if "nspawn" in tool else ""
            return f"{tool} is not installed{hint}"
    if not any(Path(p).exists() for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")):
        return "no systemd to boot"
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlayfs"
    except OSError:
        return "cannot read /proc/filesystems"
    if service.cened_executable() is None:
        return "no cened executable next to this Python"
    return None


def config_text(library: Path = LIBRARY, **extra: object) -> str:
    keys: dict[str, object] = {
        "inbox": str(INBOX),
        "library": str(library),
        "database": "/var/lib/cened/cened.sqlite3",
        "model": str(MODEL),
        "stable_seconds": 0.3,
        "batch_max_wait_ms": 50,
        **extra,
    }
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


class Container:
    """A booted systemd in an overlay of ``/``; commands run in it through nsenter."""

    def __init__(self, workdir: Path, model_dir: Path) -> None:
        self.log = workdir / "nspawn.log"
        self._log_file = self.log.open("wb")
        mnt = workdir / "mnt"
        mnt.mkdir()
        exe = service.cened_executable()
        assert exe is not None
        self.exe = exe
        # The service users must reach this Python and checkout, which may sit under
        # a closed /root (pyenv): the throwaway overlay opens the directories on the way.
        closed = {
            d
            for path in [ROOT, *(p for _, p in service.service_needs(exe))]
            for d in path.parents
            if d.is_dir() and not d.stat().st_mode & 0o001
        }
        opened = " ".join(f'"$R"{shlex.quote(str(d))}' for d in sorted(closed))
        script = textwrap.dedent(
            f"""\
            set -eu
            B={shlex.quote(str(mnt))}
            mount -t tmpfs -o mode=0755 cened-boot "$B"
            mkdir "$B/upper" "$B/work" "$B/root"
            mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
            R="$B/root"
            {f"chmod o+x {opened}" if opened else ":"}
            mkdir -p "$R{MODEL.parent}" "$R{CONFIG.parent}" "$R{OUTSIDE}"
            cp -R {shlex.quote(str(model_dir))} "$R{MODEL}"
            chmod -R a+rX "$R{MODEL}"
            printf '%s' {shlex.quote(config_text())} > "$R{CONFIG}"
            exec systemd-nspawn --quiet --register=no --keep-unit --console=passive -D "$R" \\
                --boot -- systemd.unit=basic.target
            """
        )
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.leader = self._find_leader()

    def _find_leader(self) -> int:
        """The container's PID 1: a systemd whose parent is nspawn (this process, after its exec)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    comm = (entry / "comm").read_text().strip()
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.proc.pid and comm == "systemd":
                    return int(entry.name)
            time.sleep(0.1)
        self.close()
        pytest.skip(f"the container did not start: {self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "--", *cmd],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def path(self, inside: Path) -> Path:
        """A path in the container, as this process reaches it."""
        return Path(f"/proc/{self.leader}/root") / inside.relative_to("/")

    def wait_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False, timeout=20).stdout.strip()
            if state in ("running", "degraded"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        output = self.output()
        self.close()
        pytest.skip(f"systemd did not boot in the container (state {state!r}): {output}")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def close(self) -> None:
        """Power the container off; its mount namespace, overlay and tmpfs go with it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log_file.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def container(model_dir: Path) -> Iterator[Container]:
    reason = _cannot_boot()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's tmp folder: the mount point must not be one pytest may clean meanwhile.
    workdir = Path(tempfile.mkdtemp(prefix="cened-boot-"))
    try:
        box = Container(workdir, model_dir)
        try:
            box.wait_booted()
            yield box
        finally:
            box.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def events(box: Container, *args: str) -> list[dict[str, object]]:
    """The daemon's log lines as journald keeps them; every one must be JSON."""
    out = box.run("journalctl", "-t", "cened", "-o", "cat", "--no-pager", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def exposure(box: Container, *user: str) -> float:
    """`systemd-analyze security`'s overall score for the unit as the running manager loaded it."""
    out = box.run(*user, "systemd-analyze", *(["--user"] if user else []), "security", "cened").stdout
    line = next(line for line in out.splitlines() if "Overall exposure level" in line)
    return float(line.split(":")[1].split()[0])


@contextlib.contextmanager
def journal_on_failure(box: Container) -> Iterator[None]:
    """A failed check shows what the daemon and systemd said meanwhile."""
    try:
        yield
    except AssertionError as exc:
        said = box.run("journalctl", "-o", "short-monotonic", "-n", "80", "--no-pager", check=False).stdout
        raise AssertionError(f"{exc}\n--- the container's journal ---\n{said}") from exc


def test_the_system_unit_under_systemd(container: Container) -> None:
    box = container
    with journal_on_failure(box):
        box.run("useradd", "--system", "--user-group", "--home-dir", "/var/lib/cened", "cened")
        box.run(
            "install", "-d", "-o", "cened", "-g", "cened", "-m", "2775", str(PHOTOS), str(INBOX), str(LIBRARY)
        )
        installed = box.run(
            "env", f"PYTHONPATH={ROOT}", str(box.exe), "--config", str(CONFIG), "install-service", timeout=120
        )
        assert "wrote /etc/systemd/system/cened.service" in installed.stdout, installed.stdout
        box.run("systemctl", "daemon-reload")
        assert exposure(box) <= 1.0
        # The test's own changes: this checkout's code, a short watchdog, quick restarts.
        dropin = box.path(Path("/etc/systemd/system/cened.service.d/test.conf"))
        dropin.parent.mkdir(parents=True)
        dropin.write_text(
            f"[Service]\nEnvironment=PYTHONPATH={ROOT}\nWatchdogSec={WATCHDOG_S}\nRestartSec=1\n"
            "TimeoutAbortSec=5\n"
        )
        box.run("systemctl", "daemon-reload")
        check_system_unit(box)


def check_system_unit(box: Container) -> None:
    # READY: `systemctl start` returns once the daemon has said so.
    box.run("systemctl", "start", "cened", timeout=180)
    assert box.run("systemctl", "is-active", "cened", check=False).stdout.strip() == "active"
    first_pid = box.show("cened", "MainPID")["MainPID"]
    assert " filed, " in box.show("cened", "StatusText")["StatusText"]

    # A photo is filed, a poison one quarantined.
    write_photo(box.path(INBOX / ".sea.jpg.part"), "sea").rename(box.path(INBOX / "sea.jpg"))
    box.path(INBOX / "poison.jpg").write_bytes(os.urandom(3000))
    old = time.time() - 3600  # long finished: quarantined at once, not waited for (unfinished_grace_s)
    os.utime(box.path(INBOX / "poison.jpg"), (old, old))
    wait_for(lambda: box.path(LIBRARY / "sea" / "sea.jpg").exists(), 60, "sea.jpg filed")
    quarantine = box.path(LIBRARY / "_quarantine")
    wait_for(lambda: any("poison" in p.name for p in quarantine.rglob("*")), 60, "poison.jpg quarantined")

    # The service's CLI as its user: `cened` on the PATH (install-service linked it), and the
    # service's config found without --config. Anyone else: one line, never a traceback.
    secure_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sudo's
    python = ["env", f"PYTHONPATH={ROOT}", f"PATH={secure_path}"]
    as_service = box.run("runuser", "-u", "cened", "--", *python, "cened", "history", check=False)
    assert as_service.returncode == 0 and "sea.jpg" in as_service.stdout, as_service
    outsider = box.run(
        "runuser", "-u", "nobody", "--", *python, "cened", "model", "use", "shipped", check=False
    )
    assert outsider.returncode == 1 and "permission denied" in outsider.stderr, outsider
    assert len(outsider.stderr.strip().splitlines()) == 1, outsider.stderr

    # A good reload succeeds; a broken config is refused, and so is `systemctl reload`.
    box.path(CONFIG).write_text(config_text(confidence_threshold=0.5))
    box.run("systemctl", "reload", "cened", timeout=120)
    assert "reloaded" in [e.get("event") for e in events(box)]
    box.path(CONFIG).write_text(config_text(batch_size=0))
    refused = box.run("systemctl", "reload", "cened", check=False, timeout=120)
    assert refused.returncode != 0, refused
    assert box.show("cened", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": first_pid}
    # A key only a restart changes: the reload fails naming it, and nothing of it is taken.
    box.path(CONFIG).write_text(config_text(queue_max=32, confidence_threshold=0.4))
    refused = box.run("systemctl", "reload", "cened", check=False, timeout=120)
    assert refused.returncode != 0, refused
    needs = [e for e in events(box) if e.get("event") == "reload-needs-restart"]
    assert needs and needs[-1]["keys"] == ["queue_max"], needs
    box.path(CONFIG).write_text(config_text())

    # A hung daemon: the watchdog kills it and systemd starts a new one.
    box.run("kill", "-STOP", first_pid)

    def restarted() -> bool:
        now = box.show("cened", "MainPID", "ActiveState", "NRestarts")
        return (
            now["ActiveState"] == "active"
            and now["MainPID"] not in (first_pid, "0")
            and now["NRestarts"] == "1"
        )

    wait_for(restarted, WATCHDOG_S + 90, "the watchdog restart", interval=0.5)
    assert "Watchdog timeout" in box.run("journalctl", "-u", "cened", "-o", "cat", "--no-pager").stdout
    write_photo(box.path(INBOX / ".woods.jpg.part"), "forest", seed=1).rename(box.path(INBOX / "woods.jpg"))
    wait_for(lambda: box.path(LIBRARY / "forest" / "woods.jpg").exists(), 60, "woods.jpg filed after restart")

    # A clean stop.
    box.run("systemctl", "stop", "cened", timeout=60)
    result = box.show("cened", "ActiveState", "Result", "ExecMainStatus")
    assert result == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, result

    # A library the unit does not let it write to: exit 2, and no restart loop.
    box.path(CONFIG).write_text(config_text(library=OUTSIDE / "albums"))
    assert box.run("systemctl", "start", "cened", check=False, timeout=120).returncode != 0
    time.sleep(2)  # RestartSec=1: a restart would have begun by now
    result = box.show("cened", "ActiveState", "ExecMainStatus", "NRestarts")
    assert result == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}, result

    # A database under /var/tmp, which PrivateTmp= makes the service's own and deletes at every
    # stop, with the log of every photo: refused at start (exit 2), never created.
    box.path(CONFIG).write_text(config_text(database="/var/tmp/cened/cened.sqlite3"))
    assert box.run("systemctl", "start", "cened", check=False, timeout=120).returncode != 0
    time.sleep(2)
    result = box.show("cened", "ActiveState", "ExecMainStatus", "NRestarts")
    assert result == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}, result
    assert not box.path(Path("/var/tmp/cened")).exists()

    # The journal: JSON only under -t cened, each line at its level's priority.
    seen = [e.get("event") for e in events(box)]
    for name in ("started", "filed", "quarantined", "reloaded", "reload-refused", "stopped"):
        assert name in seen, (name, seen)
    errors = events(box, "-p", "err")
    assert "reload-refused" in [e.get("event") for e in errors], errors
    assert all(e.get("level") in ("error", "critical") for e in errors), errors
    assert any("not writable" in str(e.get("error")) for e in errors), errors
    assert any("database /var/tmp/cened/cened.sqlite3" in str(e.get("error")) for e in errors), errors
    # watchdog's stop race (an emitter read after it was told to stop) is no error of ours.
    assert not any("thread is inactive" in json.dumps(e) for e in errors), errors
    # --all: without it journalctl shows a field over 4 KiB (the started line's config) as null.
    records = box.run("journalctl", "-t", "cened", "-o", "json", "--all", "--no-pager").stdout.splitlines()
    priority = {json.loads(r["MESSAGE"])["event"]: r["PRIORITY"] for r in map(json.loads, records)}
    assert (priority["reload-refused"], priority["started"], priority["stopped"]) == ("3", "6", "6"), priority


def test_the_user_unit_under_a_user_manager(container: Container) -> None:
    """`install-service --user` for a plain user, run by that user's own systemd."""
    box = container
    uid = "4242"
    home = Path("/home/cened-tester")
    user = ["runuser", "-u", "cened-tester", "--", "env", f"XDG_RUNTIME_DIR=/run/user/{uid}", f"HOME={home}"]
    inbox, library = home / "Pictures/cened/inbox", home / "Pictures/cened/albums"
    config = home / ".config/cened/config.toml"
    with journal_on_failure(box):
        box.run("useradd", "--create-home", "--home-dir", str(home), "--uid", uid, "cened-tester")
        box.run("systemctl", "start", f"user@{uid}.service", timeout=60)
        box.run(*user, "mkdir", "-p", str(config.parent))
        box.path(config).write_text(f'model = "{MODEL}"\nstable_seconds = 0.3\n')
        installed = box.run(
            *user, f"PYTHONPATH={ROOT}", str(box.exe), "install-service", "--user", timeout=120
        )
        assert "systemctl --user daemon-reload" in installed.stdout, installed.stdout
        box.run(*user, "systemctl", "--user", "daemon-reload")
        assert exposure(box, *user) <= 1.0
        # nspawn lays a FIFO over /proc/kmsg for the container's journald, which a user
        # manager fails to cover for ProtectKernelLogs= (226/NAMESPACE); it covers a
        # host's /proc/kmsg fine, so the shipped unit runs as it is on the real one.
        box.run("umount", "/proc/kmsg", check=False)
        dropin = home / ".config/systemd/user/cened.service.d/test.conf"
        box.run(*user, "mkdir", "-p", str(dropin.parent))
        box.path(dropin).write_text(f"[Service]\nEnvironment=PYTHONPATH={ROOT}\n")
        box.run(*user, "systemctl", "--user", "daemon-reload")

        box.run(*user, "systemctl", "--user", "start", "cened", timeout=180)
        write_photo(box.path(inbox / ".sea.jpg.part"), "sea").rename(box.path(inbox / "sea.jpg"))
        wait_for(lambda: box.path(library / "sea" / "sea.jpg").exists(), 60, "sea.jpg filed by the user unit")
        box.path(config).write_text(f'model = "{MODEL}"\nbatch_size = 0\n')
        refused = box.run(*user, "systemctl", "--user", "reload", "cened", check=False, timeout=120)
        assert refused.returncode != 0, refused
        box.path(config).write_text(f'model = "{MODEL}"\nconfidence_threshold = 0.5\n')
        box.run(*user, "systemctl", "--user", "reload", "cened", timeout=120)
        box.run(*user, "systemctl", "--user", "stop", "cened", timeout=60)
        out = box.run("journalctl", f"_UID={uid}", "-t", "cened", "-o", "cat", "--no-pager").stdout
        seen = [json.loads(line).get("event") for line in out.splitlines()]
        for name in ("started", "filed", "reload-refused", "reloaded", "stopped"):
            assert name in seen, (name, seen)

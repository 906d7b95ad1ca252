"""The systemd units and ``cened install-service``, checked by systemd's own verifier.

``systemd-analyze verify`` needs no running systemd, but it does check that
ExecStart='s program exists, so the shipped units are verified as rendered
for this venv's cened.  It exits 0 on unknown keys (it only warns), so any
output at all counts as a failure here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cened import config, service
from cened.cli import main
from cened.errors import ConfigError, ExitCode

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd; .ci/run does it), "
    "so the unit files cannot be verified",
)
CENED = service.cened_executable()


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (units repeat keys such as Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def verify(unit: Path, *, user: bool, tmp_path: Path) -> None:
    """Run systemd-analyze verify as this container allows; fail on any complaint."""
    assert SYSTEMD_ANALYZE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSTEMD_", "XDG_"))}
    cmd = [SYSTEMD_ANALYZE]
    if user:
        # The user manager needs a runtime directory, even to only load files.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.append("--user")
    cmd += ["verify", "--man=no", str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    complaints = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not complaints, f"{' '.join(cmd)}:\n{complaints}"


def render_shipped(user: bool, tmp_path: Path) -> Path:
    """A shipped unit with only its program swapped for this venv's cened."""
    assert CENED is not None
    text = service.template(user)
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    program = exec_line.removeprefix("ExecStart=").split()[0]
    out = tmp_path / ("user" if user else "system") / "cened.service"
    out.parent.mkdir(parents=True, exist_ok=True)
    for key in ("ExecStart", "ExecReload"):
        text = text.replace(f"{key}={program} ", f"{key}={CENED} ")
    out.write_text(text)
    return out


def exposure(unit: Path, *, user: bool, tmp_path: Path) -> float:
    """`systemd-analyze security --offline=yes`'s overall score for a unit file (0 safe, 10 exposed)."""
    assert SYSTEMD_ANALYZE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSTEMD_", "XDG_"))}
    cmd = [SYSTEMD_ANALYZE]
    if user:
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.append("--user")
    cmd += ["security", "--offline=yes", "--no-pager", str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if "--offline" in done.stderr and done.returncode != 0:
        pytest.skip(
            f"this systemd-analyze cannot rate unit files offline (systemd 250 or later can): {done.stderr}"
        )
    line = next((line for line in done.stdout.splitlines() if "Overall exposure level" in line), None)
    assert line is not None, done.stdout + done.stderr
    return float(line.split(":")[1].split()[0])


# -- the shipped files ---------------------------------------------------------


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_shipped_units_say_what_the_daemon_needs(user: bool) -> None:
    unit = parse_unit(service.template(user))
    svc = unit["Service"]
    assert svc["Type"] == ["notify"]
    program = svc["ExecStart"][0].split()[0]
    # A reload that waits for the daemon's answer, left in the runtime directory.
    assert svc["ExecReload"] == [f"{program} reload --pid $MAINPID"]
    assert svc["RuntimeDirectory"] == ["cened"]
    assert svc["ExecStart"][0].endswith(" run") and " --config " in svc["ExecStart"][0]
    # Journald reads each line's <N> priority; -t cened selects the daemon's own lines.
    assert svc["SyslogIdentifier"] == ["cened"] and svc["SyslogLevelPrefix"] == ["yes"]
    assert svc["Restart"] == ["on-failure"]
    # The exit codes a restart cannot fix are the CLI's, not a copy that may drift.
    assert sorted(map(int, svc["RestartPreventExitStatus"][0].split())) == [
        ExitCode.CONFIG,
        ExitCode.MODEL,
        ExitCode.DATABASE,
    ]
    assert "CENED_LOG_FORMAT=json" in svc["Environment"]
    for key in ("WatchdogSec", "TimeoutStopSec", "MemoryMax", "ReadWritePaths"):
        assert svc.get(key), f"{key}= missing"
    assert svc["NoNewPrivileges"] == ["yes"] and svc["PrivateTmp"] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"]
    # The hardening both units share, the user unit inside its user namespace.
    for key, value in {
        "PrivateUsers": "yes",
        "PrivateNetwork": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
        "ProtectProc": "invisible",
        "ProtectKernelTunables": "yes",
        "ProtectClock": "yes",
        "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert svc.get(key) == [value], (key, svc.get(key))
    assert "@system-service" in svc["SystemCallFilter"]
    # LiteRT picks its fast CPU kernels from /proc/cpuinfo, which ProcSubset=pid hides.
    assert "ProcSubset" not in svc
    if user:
        # Mount sandboxing from an unprivileged manager needs a user namespace.
        assert svc["PrivateUsers"] == ["yes"] and svc["ProtectHome"] == ["read-only"]
        assert "User" not in svc
        assert unit["Install"]["WantedBy"] == ["default.target"]
    else:
        assert svc["User"] == ["cened"] and svc["ProtectHome"] == ["yes"]
        assert "/etc/cened/config.toml" in svc["ExecStart"][0]
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_shipped_units_pass_systemd_analyze(user: bool, tmp_path: Path) -> None:
    verify(render_shipped(user, tmp_path), user=user, tmp_path=tmp_path)


@needs_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_shipped_units_expose_little(user: bool, tmp_path: Path) -> None:
    """Both units at 1.0 or less on systemd-analyze's scale (0 safe ... 10 exposed).

    Offline, systemd-analyze counts a user unit as running as root (+0.4); the
    boot test rates both on a running manager.
    """
    assert exposure(render_shipped(user, tmp_path), user=user, tmp_path=tmp_path) <= 1.0


@needs_analyze
def test_verification_catches_a_typo(tmp_path: Path) -> None:
    """The check itself: a misspelt key only warns in systemd, and must fail here."""
    unit = render_shipped(False, tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    with pytest.raises(AssertionError, match="WatchdogSecs"):
        verify(unit, user=False, tmp_path=tmp_path)


# -- install-service -------------------------------------------------------------


@pytest.fixture(autouse=True)
def tmp_is_not_private(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest's folders are under /tmp, which install-service refuses (PrivateTmp=); that has its own test."""
    monkeypatch.setattr(config, "PRIVATE_TMP", ())


@pytest.fixture
def home_outside_tmp() -> Iterator[Path]:
    """A home for a subprocess of install-service, which refuses folders under /tmp."""
    home = Path(tempfile.mkdtemp(prefix="cened-test-home-", dir=Path.home()))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend user cened can reach everything: this venv's Python may sit under a closed /root
    (pyenv), which the system unit refuses; that refusal has its own test."""
    monkeypatch.setattr(service, "_blocked_at", lambda *_: None)


def _user_env(home: Path, fake_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CENED_", "XDG_"))}
    return {**env, "HOME": str(home), "PATH": f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"}


def _fake_systemctl(tmp_path: Path) -> tuple[Path, Path]:
    """A systemctl that only records being called: install-service must never call it."""
    fake_bin, called = tmp_path / "bin", tmp_path / "systemctl-was-called"
    fake_bin.mkdir()
    for name in ("systemctl", "sudo"):
        script = fake_bin / name
        script.write_text(f'#!/bin/sh\necho "$0 $*" >> {called}\n')
        script.chmod(0o755)
    return fake_bin, called


@pytest.mark.slow
@needs_analyze
def test_install_service_user_writes_a_unit_that_verifies(tmp_path: Path, home_outside_tmp: Path) -> None:
    home = home_outside_tmp
    fake_bin, called = _fake_systemctl(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "cened", "install-service", "--user"],
        capture_output=True,
        text=True,
        env=_user_env(home, fake_bin),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    unit_path = home / ".config" / "systemd" / "user" / "cened.service"
    config = home / ".config" / "cened" / "config.toml"
    assert unit_path.is_file() and config.is_file()
    svc = parse_unit(unit_path.read_text())["Service"]
    assert svc["ExecStart"] == [f"{CENED} --config {config} run"]
    photos, state = home / "Pictures" / "cened", home / ".local" / "state" / "cened"
    assert svc["ReadWritePaths"] == [f"{photos} {state}"]
    # They must exist, or the sandbox cannot be built at start.
    assert (photos / "inbox").is_dir() and (photos / "albums").is_dir() and state.is_dir()
    assert "systemctl --user daemon-reload && systemctl --user enable --now cened" in done.stdout
    assert not called.exists(), called.read_text()
    verify(unit_path, user=True, tmp_path=tmp_path)

    # Installing again keeps the user's config and replaces the unit.
    config.write_text("confidence_threshold = 0.7\n")
    again = subprocess.run(
        [sys.executable, "-m", "cened", "install-service", "--user"],
        capture_output=True,
        text=True,
        env=_user_env(home, fake_bin),
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "replaced" in again.stdout and config.read_text() == "confidence_threshold = 0.7\n"


@needs_analyze
def test_install_service_follows_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders from the config, awkward names quoted, the installer's CENED_* ignored."""
    home = tmp_path / "home"
    photos = tmp_path / "My Photos 100%"
    config = tmp_path / "conf dir" / "cened.toml"
    config.parent.mkdir()
    config.write_text(
        f'inbox = "{photos}/in"\nlibrary = "{photos}/sorted"\ndatabase = "{tmp_path}/db/cened.sqlite3"\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("CENED_INBOX", str(tmp_path / "not-this"))
    assert main([f"--config={config}", "install-service", "--user"]) == 0
    capsys.readouterr()
    unit_path = home / ".config" / "systemd" / "user" / "cened.service"
    svc = parse_unit(unit_path.read_text())["Service"]
    quoted_photos = f'"{str(photos).replace("%", "%%")}"'
    assert svc["ReadWritePaths"] == [f"{quoted_photos} {tmp_path}/db"]
    assert svc["ExecStart"] == [f'{CENED} --config "{config}" run']
    assert (photos / "in").is_dir() and not (tmp_path / "not-this").exists()
    assert os.environ["CENED_INBOX"] == str(tmp_path / "not-this")
    verify(unit_path, user=True, tmp_path=tmp_path)


def test_install_service_user_links_cened_onto_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cened` outside the venv: ~/.local/bin/cened, a link to this one, unless it is on PATH already."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["install-service", "--user"]) == 0
    link = home / ".local" / "bin" / "cened"
    assert link.is_symlink() and link.resolve() == Path(CENED).resolve()
    out = capsys.readouterr().out
    assert f"linked {link} -> {CENED}" in out and "is not on your PATH" in out
    # Again, with it on PATH now: nothing to do.
    monkeypatch.setenv("PATH", f"{link.parent}:/usr/bin:/bin")
    assert main(["install-service", "--user"]) == 0
    assert "linked" not in capsys.readouterr().out and link.is_symlink()
    # A file of someone else's is left alone.
    link.unlink()
    link.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["install-service", "--user"]) == 0
    assert "left" in capsys.readouterr().out and link.read_text() == "#!/bin/sh\n"


def test_install_service_print_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert main(["install-service", "--user", "--print"]) == 0
    out = capsys.readouterr().out
    assert parse_unit(out)["Service"]["Type"] == ["notify"]
    assert list(tmp_path.iterdir()) == []


def test_install_service_system_as_non_root_only_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without root, the system unit is shown with the sudo commands, never written."""
    reachable(monkeypatch)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(service, "SYSTEM_UNIT", tmp_path / "etc" / "cened.service")
    monkeypatch.setattr(service, "SYSTEM_CONFIG", tmp_path / "etc" / "cened" / "config.toml")
    assert main(["install-service"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "etc").exists()
    assert parse_unit(out)["Service"]["ExecStart"] == [f"{CENED} --config {service.SYSTEM_CONFIG} run"]
    assert f"{CENED} install-service --print | sudo tee {service.SYSTEM_UNIT} >/dev/null" in out
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now cened" in out
    assert 'inbox = "/srv/cened/inbox"' in out  # the config to create


@needs_analyze
def test_install_service_system_to_output_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reachable(monkeypatch)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(service, "SYSTEM_CONFIG", tmp_path / "missing.toml")
    out_path = tmp_path / "cened.service"
    assert main(["install-service", "--output", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert f"sudo install -m 0644 {out_path} /etc/systemd/system/cened.service" in out
    svc = parse_unit(out_path.read_text())["Service"]
    # The database is in StateDirectory=, which systemd makes writable itself.
    assert svc["ReadWritePaths"] == ["/srv/cened"] and svc["StateDirectory"] == ["cened"]
    verify(out_path, user=False, tmp_path=tmp_path)


def test_missing_named_config_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"--config={tmp_path / 'nope.toml'}", "install-service", "--user", "--print"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_render_refuses_a_template_without_the_lines_it_replaces() -> None:
    with pytest.raises(ValueError, match="ReadWritePaths"):
        service.render("[Service]\nExecStart=/bin/true\n", exe=Path("/x"), config=Path("/c"), writable=[])


def test_writable_paths_keep_inbox_and_library_on_one_mount(tmp_path: Path) -> None:
    from cened.config import load_settings

    siblings = load_settings(
        None,
        inbox=tmp_path / "p" / "in",
        library=tmp_path / "p" / "out",
        database=tmp_path / "s" / "db.sqlite3",
    )
    assert service.writable_paths(siblings) == [tmp_path / "p", tmp_path / "s"]
    apart = load_settings(
        None,
        inbox=tmp_path / "a" / "in",
        library=tmp_path / "b" / "out",
        database=tmp_path / "b" / "out" / "db.sqlite3",
    )
    assert service.writable_paths(apart) == [tmp_path / "a" / "in", tmp_path / "b" / "out"]


def test_wheel_ships_the_units() -> None:
    """The wheel maps systemd/ to cened/_systemd, which shipped_unit_dir looks in first."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    includes = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert includes.get("systemd") == "cened/_systemd"
    assert (service.shipped_unit_dir() / "cened-user.service").is_file()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder anyone may enter (pytest's own tmp folders are closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="cened-reach-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fake_install(base: Path) -> Path:
    """A venv's cened whose Python is a link to an interpreter under ``base/home`` (pyenv's layout)."""
    real = base / "home" / "alice" / ".pyenv" / "versions" / "3.12.0" / "bin" / "python3.12"
    real.parent.mkdir(parents=True)
    real.write_text("")
    real.chmod(0o755)
    venv_bin = base / "opt" / "cened" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python3").symlink_to(real)
    exe = venv_bin / "cened"
    exe.write_text(f"#!{venv_bin / 'python3'}\nimport cened\n")
    exe.chmod(0o755)
    return exe


def test_install_service_refuses_a_python_its_user_cannot_reach(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyenv under a closed home: the unit would fail with 203/EXEC, so none is written."""
    exe = fake_install(open_dir)
    home = open_dir / "home"
    (home / "alice").chmod(0o700)
    monkeypatch.setattr(service, "HOME_ROOTS", (home,))
    monkeypatch.setattr(service, "SERVICE_USER", "cened-no-such-user")  # judged as any other user
    monkeypatch.setattr(service, "SYSTEM_CONFIG", open_dir / "etc" / "config.toml")
    with pytest.raises(ConfigError) as refused:
        service.make_plan(user=False, exe=exe, config=None)
    message = str(refused.value)
    assert refused.value.exit_code == ExitCode.CONFIG
    assert f"{home / 'alice' / '.pyenv' / 'versions' / '3.12.0' / 'bin' / 'python3.12'}" in message
    assert f"{home / 'alice'} is closed to it (mode 0700)" in message
    assert "203/EXEC" in message and "/opt/cened" in message and "install-service --user" in message

    # An open home works, but only with ProtectHome=read-only (=yes would hide the Python).
    (home / "alice").chmod(0o755)
    plan = service.make_plan(user=False, exe=exe, config=None)
    assert parse_unit(plan.text)["Service"]["ProtectHome"] == ["read-only"]
    assert [role for role, _ in plan.under_home] == [f"the Python behind {exe.parent / 'python3'}"]
    # The user unit runs as that user, who can reach their own home.
    (home / "alice").chmod(0o700)
    assert service.make_plan(user=True, exe=exe, config=None).under_home == []


def test_the_keras_backend_gets_writable_executable_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    config = tmp_path / "cened.toml"
    for backend, allowed in (("keras", ["no"]), ("tflite", ["yes"]), ("auto", ["yes"])):
        config.write_text(f'backend = "{backend}"\n')
        plan = service.make_plan(user=True, exe=Path("/opt/cened/bin/cened"), config=config)
        assert parse_unit(plan.text)["Service"]["MemoryDenyWriteExecute"] == allowed, backend


@pytest.mark.parametrize("key", ["library", "database", "quarantine"])
def test_install_service_refuses_folders_under_tmp(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The units' PrivateTmp= gives the service a /tmp of its own, deleted at every stop."""
    monkeypatch.setattr(config, "PRIVATE_TMP", (Path("/tmp"), Path("/var/tmp")))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "cened.toml"
    where = {"library": "/var/tmp/albums", "database": "/tmp/state/cened.sqlite3", "quarantine": "/tmp/q"}
    keys = {"inbox": "/srv/p/in", "library": "/srv/p/out", key: where[key]}
    cfg.write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    assert main([f"--config={cfg}", "install-service", "--user", "--print"]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert f"{key} {where[key]}" in err and "PrivateTmp=" in err

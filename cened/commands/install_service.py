"""``cened install-service``: write the systemd unit cened.service plans, and say how to enable it.

Nothing privileged happens by surprise: the command writes a user unit into
the user's own ``~/.config/systemd/user``, writes the system unit only when
it runs as root (or to an ``--output`` path), and otherwise prints the unit
with the exact ``sudo`` commands.  It never runs ``systemctl`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cened.service import Plan

NAME = "install-service"
HELP = "write a systemd unit for cened and print how to enable it"
EXAMPLES = """
cened install-service --user
cened install-service --print
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cened import service

    parser.description = (
        "Write a systemd unit for this cened (use the global --config to name the config file "
        "the service should read: cened --config FILE install-service)."
    )
    parser.add_argument("--user", action="store_true", help="a `systemctl --user` unit for your own photos")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the unit (default: ~/.config/systemd/user/cened.service with --user, "
        f"else {service.SYSTEM_UNIT}, which needs root)",
    )
    parser.add_argument(
        "--print",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the unit and write nothing",
    )


def run(args: argparse.Namespace) -> int:
    from cened import service

    exe = service.cened_executable()
    if exe is None:
        print("cened: cannot find the cened executable next to this Python", file=sys.stderr)
        return 1
    plan = service.make_plan(user=args.user, exe=exe, config=_config_arg(args))
    if args.dry_run:
        print(plan.text, end="")
        return 0
    if plan.user:
        return _install_user(plan, args.output)
    return _install_system(plan, args.output)


def _config_arg(args: argparse.Namespace) -> Path | None:
    named = args.config or (Path(os.environ["CENED_CONFIG"]) if os.environ.get("CENED_CONFIG") else None)
    return Path(os.path.abspath(named.expanduser())) if named is not None else None


def _install_user(plan: Plan, output: Path | None) -> int:
    from cened import service

    dest = output or service.user_unit_path()
    if not plan.config_exists:
        plan.config.parent.mkdir(parents=True, exist_ok=True)
        plan.config.write_text(service.USER_CONFIG_TEXT)
        print(f"created {plan.config} (defaults; edit it, then reload the service)")
    # The daemon would create these itself, but inside the sandbox a
    # ReadWritePaths= entry that does not exist stops the start (226/NAMESPACE).
    for folder in (*plan.writable, plan.settings.inbox, plan.settings.library):
        folder.mkdir(parents=True, exist_ok=True)
    replaced = dest.exists()
    _write(dest, plan.text)
    print(f"{'replaced' if replaced else 'wrote'} {dest}")
    print(f"  runs:   {plan.exe} --config {plan.config} run")
    print(f"  writes: {', '.join(map(str, plan.writable))}")
    _link_on_path(plan.exe)
    print()
    print("Enable and start it:")
    print("  systemctl --user daemon-reload && systemctl --user enable --now cened")
    print("Keep it running while you are logged out (optional):")
    print('  loginctl enable-linger "$USER"')
    print("Then:")
    print("  systemctl --user status cened")
    print("  systemctl --user reload cened     # after editing the config")
    print("  journalctl --user -t cened -f -o cat")
    return 0


def _link_on_path(exe: Path) -> None:
    """``~/.local/bin/cened``, a link to this cened, so that ``cened`` works outside its venv.

    The folder is the one pip, pipx and most distributions' ``~/.profile``
    use for a user's commands.  A ``cened`` already found on PATH is left
    alone, and so is a file there that is not a link (someone else's).
    """
    import shutil

    found = shutil.which("cened")
    if found is not None and Path(found).resolve() == exe.resolve():
        return
    folder = Path.home() / ".local" / "bin"
    link = folder / "cened"
    if link.exists() and not link.is_symlink():
        print(f"  left {link} as it is (not a link); {exe} is this cened")
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".cened-link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(exe)
    os.replace(tmp, link)  # atomically, over a link to an older install
    print(f"  linked {link} -> {exe}, so that `cened` runs outside the venv")
    if str(folder) not in os.environ.get("PATH", "").split(os.pathsep):
        print(f"  {folder} is not on your PATH: add it (most ~/.profile files do once it exists)")


def _install_system(plan: Plan, output: Path | None) -> int:
    from cened import service

    unit = service.SYSTEM_UNIT
    root = os.geteuid() == 0
    sudo = "" if root else "sudo "
    if output is None and not root:
        print(plan.text)
        print("# Not root, so nothing was written.  To install it:")
        install = f"{_reinvoke(plan)} | sudo tee {unit} >/dev/null"
    else:
        dest = output or unit
        _write(dest, plan.text)
        print(f"wrote {dest}")
        install = ""
        if dest != unit:
            install = f"{sudo}install -m 0644 {shlex.quote(str(dest))} {unit}"
    commands = [*_system_setup(plan, sudo), install]
    if _on_path() is None:
        if root and output is None and not os.path.lexists(service.PATH_LINK):
            service.PATH_LINK.symlink_to(plan.exe)
            who = service.SERVICE_USER
            print(f"linked {service.PATH_LINK} -> {plan.exe}, so that `sudo -u {who} cened ...` works")
        else:
            commands.append(f"{sudo}ln -s {shlex.quote(str(plan.exe))} {service.PATH_LINK}")
    for command in commands:
        if command:
            print(command)
    print(f"{sudo}systemctl daemon-reload && {sudo}systemctl enable --now cened")
    print(f"systemctl status cened; {sudo}systemctl reload cened  # after editing {plan.config}")
    print("journalctl -t cened -f -o cat")
    if plan.protect_home:
        under = ", ".join(f"{p} ({role})" for role, p in plan.under_home)
        print(
            f"# note: under a home directory: {under}; so the unit uses ProtectHome=read-only; "
            "install cened on a Python outside /home and /root (e.g. /opt/cened) for ProtectHome=yes",
            file=sys.stderr,
        )
    return 0


def _on_path() -> str | None:
    """The cened that the service user, or sudo's secure_path, finds without a path: a command."""
    from cened import service

    return shutil.which("cened", path=os.pathsep.join(service.SYSTEM_PATH))


def _system_setup(plan: Plan, sudo: str) -> list[str]:
    """The one-time commands before the first start, only those still needed."""
    import pwd

    from cened.service import SERVICE_USER, STATE_DIRECTORY, SYSTEM_DEFAULTS

    commands = []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        commands.append(
            f"{sudo}useradd --system --user-group --home-dir {STATE_DIRECTORY} "
            f"--shell /usr/sbin/nologin {SERVICE_USER}"
        )
    # ReadWritePaths= entries must exist before the start (226/NAMESPACE otherwise).
    wanted = dict.fromkeys((*plan.writable, plan.settings.inbox.absolute(), plan.settings.library.absolute()))
    missing = [p for p in wanted if not p.exists()]
    if missing:
        names = " ".join(shlex.quote(str(p)) for p in missing)
        commands.append(f"{sudo}install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 2775 {names}")
    if not plan.config_exists:
        body = "".join(f"{k} = {_toml_string(str(v))}\n" for k, v in SYSTEM_DEFAULTS.items())
        commands.append(f"{sudo}install -d -m 0755 {shlex.quote(str(plan.config.parent))}")
        commands.append(f"{sudo}tee {shlex.quote(str(plan.config))} >/dev/null <<'EOF'\n{body}EOF")
    return commands


def _reinvoke(plan: Plan) -> str:
    """This same command with --print, for piping into ``sudo tee``."""
    config = ["--config", str(plan.config)] if plan.config_exists else []
    return shlex.join([str(plan.exe), *config, NAME, "--print"])


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write(dest: Path, text: str) -> None:
    """Atomically, so a half-written unit is never what systemd reads."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cened-unit-", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

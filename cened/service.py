"""The systemd unit ``cened install-service`` writes: the shipped one, made for *this* installation.

The shipped units in ``systemd/`` are complete, commented files; installing
one only rewrites the lines that depend on the machine: ``ExecStart=`` and
``ExecReload=`` (the cened of the running interpreter, the absolute config
path), ``ReadWritePaths=`` (the folders the config names, because the sandbox
makes everything else read-only), ``MemoryDenyWriteExecute=`` (off for the
Keras backend, whose JIT needs it) and, for the system unit, ``ProtectHome=``
when cened or its Python lives under a home directory.

A system unit that could not even start -- its user ``cened`` cannot reach
the Python that runs cened, as with pyenv's interpreters under ``/root`` or a
private ``/home/NAME`` -- is refused with what to do instead, rather than
written to fail with ``status=203/EXEC``.

Everything here plans the unit (:func:`make_plan`) and writes nothing;
writing it, and saying how to enable it, is :mod:`cened.commands.install_service`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cened import __version__
from cened.config import SYSTEM_CONFIG, Settings, load_settings, refuse_temporary
from cened.errors import ConfigError, ModelError
from cened.ml import modelpack

SYSTEM_UNIT = Path("/etc/systemd/system/cened.service")
#: Where the system install puts a link to its cened, when no cened is on the system's PATH:
#: `sudo -u cened cened history` then works, and finds SYSTEM_CONFIG by itself.
PATH_LINK = Path("/usr/local/bin/cened")
#: The PATH of sudo's secure_path and of systemd's services.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: The system unit's StateDirectory=; systemd makes it writable itself.
STATE_DIRECTORY = Path("/var/lib/cened")
SERVICE_USER = "cened"
#: What a fresh system config says: the layout the shipped system unit assumes.
SYSTEM_DEFAULTS = {
    "inbox": Path("/srv/cened/inbox"),
    "library": Path("/srv/cened/albums"),
    "database": STATE_DIRECTORY / "cened.sqlite3",
}
USER_CONFIG_TEXT = """\
# cened settings for the `systemctl --user` service; every key, with its
# default, is documented in config.example.toml.  After editing:
#     systemctl --user reload cened
# If you move the inbox, library or database, run `cened install-service
# --user` again: the service may only write to the folders its unit names.
"""
#: Under these, ProtectHome=yes would hide the program from the system service.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))


# -- finding things ------------------------------------------------------------


def shipped_unit_dir() -> Path:
    """The unit templates: ``cened/_systemd`` inside the wheel, ``systemd/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_systemd", here.parent / "systemd"):
        if (candidate / "cened.service").is_file():
            return candidate
    raise FileNotFoundError("the shipped systemd units are missing from this installation")


def template(user: bool) -> str:
    return (shipped_unit_dir() / ("cened-user.service" if user else "cened.service")).read_text()


def cened_executable() -> Path | None:
    """The cened entry point of the running interpreter's environment (a venv, pipx, /usr/local).

    ``sys.executable`` is deliberately not resolved: in a venv it is a symlink
    to the base interpreter, whose directory holds no cened.
    """
    beside = Path(sys.executable).absolute().parent / "cened"
    if os.access(beside, os.X_OK):
        return beside
    argv0 = Path(sys.argv[0]).absolute() if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "cened" and os.access(argv0, os.X_OK):
        return argv0
    return None


def user_unit_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(config_home) / "systemd" / "user" / "cened.service"


def default_config(user: bool) -> Path:
    if not user:
        return SYSTEM_CONFIG
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(config_home) / "cened" / "config.toml"


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


# -- planning ------------------------------------------------------------------


@dataclass
class Plan:
    user: bool
    exe: Path
    config: Path
    config_exists: bool
    settings: Settings
    writable: list[Path]
    protect_home: str | None
    text: str
    under_home: list[tuple[str, Path]]  # what the system service must read from a home directory


def make_plan(*, user: bool, exe: Path, config: Path | None) -> Plan:
    """Everything install-service decides, before anything is written.

    A named config must exist (as for ``cened run``); the default one may be
    missing, and is then planned from the defaults the installer will write.
    """
    path = config or default_config(user)
    exists = path.is_file()
    if config is not None and not exists:
        raise ConfigError(f"config file {path} does not exist")
    defaults = {} if user else SYSTEM_DEFAULTS
    with _without_cened_env():
        settings = load_settings(path) if exists else load_settings(None, **defaults)
    refuse_temporary(settings)  # both units have PrivateTmp=yes
    covered = [] if user else [STATE_DIRECTORY]
    writable = writable_paths(settings, covered)
    protect_home = None
    under_home: list[tuple[str, Path]] = []
    if not user:
        needed = [*service_needs(exe), ("the model", settings.model), ("the config", path)]
        under_home = [(role, p) for role, p in needed if any(_under(p, root) for root in HOME_ROOTS)]
        if under_home:
            protect_home = "read-only"  # "yes" would hide them: status=203/EXEC
        _check_reachable(needed)
    text = render(
        template(user),
        exe=exe,
        config=path,
        writable=writable,
        protect_home=protect_home,
        write_execute=_needs_write_execute(settings),
    )
    return Plan(user, exe, path, exists, settings, writable, protect_home, text, under_home)


def service_needs(exe: Path) -> list[tuple[str, Path]]:
    """What the service must reach to start ``exe``, each with what it is, for messages.

    The cened script, the Python its ``#!`` line names and what that resolves
    to: in a venv, a link to the base interpreter, which pyenv keeps under
    ``~/.pyenv``.  When that is this very Python, its prefixes too (the venv's
    packages, the standard library), which live elsewhere again.
    """
    needed = [("the cened program", exe.absolute())]
    interpreter = _shebang(exe)
    if interpreter is not None:
        real = interpreter.resolve()
        needed.append(("the Python it runs on", interpreter))
        if real != interpreter:
            needed.append((f"the Python behind {interpreter}", real))
        if real == Path(sys.executable).resolve():
            needed.append(("Python's packages", Path(sys.prefix)))
            needed.append(("Python's standard library", Path(sys.base_prefix)))
    return list({p: (role, p) for role, p in needed}.values())


def _shebang(exe: Path) -> Path | None:
    """The absolute interpreter path on the script's ``#!`` line, if it has one."""
    try:
        with exe.open("rb") as fh:
            first = fh.readline(4096)
    except OSError:
        return None
    words = first[2:].split() if first.startswith(b"#!") else []
    return Path(os.fsdecode(words[0])) if words and words[0].startswith(b"/") else None


def _check_reachable(needed: Sequence[tuple[str, Path]]) -> None:
    """Refuse a system unit whose user could not reach what it needs; systemd would fail to start it.

    Checked from the permission bits on the way (search permission on every
    directory), as the user ``cened`` -- or as anybody, before that user exists.
    """
    try:
        user = pwd.getpwnam(SERVICE_USER)
        uid: int | None = user.pw_uid
        gids = set(os.getgrouplist(SERVICE_USER, user.pw_gid))
    except KeyError:
        uid, gids = None, set()
    problems = []
    for role, path in needed:
        blocked = _blocked_at(path, uid, gids)
        if blocked is not None:
            mode = stat.S_IMODE(blocked.stat().st_mode)
            problems.append(f"{path} ({role}): {blocked} is closed to it (mode {mode:04o})")
    if problems:
        raise ConfigError(
            f"the system service runs as user {SERVICE_USER}, which cannot reach:\n  "
            + "\n  ".join(problems)
            + "\nso the service could not start (systemd says status=203/EXEC when it is the program or "
            "its Python).\nInstall cened on a Python outside home directories, e.g. the system's: "
            "sudo /usr/bin/python3 -m venv /opt/cened && sudo /opt/cened/bin/pip install cened, "
            "then /opt/cened/bin/cened install-service;\nor run this installation for yourself: "
            "cened install-service --user"
        )


def _blocked_at(path: Path, uid: int | None, gids: set[int]) -> Path | None:
    """The first directory on the way to ``path`` that ``uid`` may not search, or None."""
    current = Path("/")
    for part in path.absolute().parts[1:]:
        try:
            st = current.stat()
        except OSError:
            return None  # not there (yet): nothing to say about it here
        if not _may(st, uid, gids, 0o1):
            return current
        current = current / part
    return None


def _may(st: os.stat_result, uid: int | None, gids: set[int], bit: int) -> bool:
    """Whether ``uid`` gets permission ``bit`` (1 search, 4 read) from these mode bits."""
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _needs_write_execute(settings: Settings) -> bool:
    """Whether the model runs on Keras, whose oneDNN JIT needs writable+executable memory."""
    if settings.backend != "auto":
        return settings.backend == "keras"
    try:
        return modelpack.TFLITE_FILE not in modelpack.read_meta(settings.model).files
    except ModelError:
        return False  # the daemon will say what is wrong with it; the unit stays strict


@contextlib.contextmanager
def _without_cened_env() -> Iterator[None]:
    """Read the config as the service will: the installer's own CENED_* variables do not reach it."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CENED_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def writable_paths(settings: Settings, covered: Sequence[Path] = ()) -> list[Path]:
    """The folders the service must write to, as few and as narrow as possible.

    Inbox and library are granted through their common parent when they are
    siblings (the default layout): each ``ReadWritePaths=`` entry is a separate
    bind mount, and ``link(2)`` across mounts fails with EXDEV, which would
    turn every move into a copy.  A parent as broad as a home directory is not
    worth that, and the two are then listed apart.
    """
    inbox, library = settings.inbox.absolute(), settings.library.absolute()
    parent = inbox.parent
    if parent == library.parent and len(parent.parts) > 2 and parent != _home().absolute():
        out = [parent]
    else:
        out = [inbox, library]
    for extra in (settings.quarantine_dir.absolute(), settings.database.absolute().parent):
        if not any(_under(extra, p) for p in (*out, *covered)):
            out.append(extra)
    return out


def _under(path: Path, root: Path) -> bool:
    return path.absolute().is_relative_to(root)


def render(
    text: str,
    *,
    exe: Path,
    config: Path,
    writable: Sequence[Path],
    protect_home: str | None = None,
    write_execute: bool = False,
) -> str:
    """The template with its machine-specific lines replaced; each must be there exactly once."""
    replacements = {
        "ExecStart": f"{exec_quote(str(exe))} --config {exec_quote(str(config))} run",
        "ReadWritePaths": " ".join(unit_quote(str(p)) for p in writable),
        # $MAINPID stays a variable: systemd puts the daemon's pid there.
        "ExecReload": f"{exec_quote(str(exe))} reload --pid $MAINPID",
    }
    if protect_home is not None:
        replacements["ProtectHome"] = protect_home
    if write_execute:
        replacements["MemoryDenyWriteExecute"] = "no"
    lines = text.splitlines(keepends=True)
    for key, value in replacements.items():
        found = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
        if len(found) != 1:
            raise ValueError(f"unit template: expected one {key}= line, found {len(found)}")
        lines[found[0]] = f"{key}={value}\n"
    header = f"# Written by `cened install-service` (cened {__version__}).\n"
    return header + "".join(lines)


def unit_quote(value: str) -> str:
    """A path as one word of a unit file: ``%`` is a specifier, whitespace splits words."""
    value = value.replace("%", "%%")
    if re.search(r"[\s\"'\\;]", value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def exec_quote(value: str) -> str:
    """Like :func:`unit_quote`, and ``$`` too, which ExecStart= expands as a variable."""
    return unit_quote(value.replace("$", "$$"))

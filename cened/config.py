"""Settings: defaults, then a TOML file, then ``CENED_*`` environment variables.

The precedence follows the usual service convention: the packaged defaults
work on their own, ``/etc/cened/config.toml`` (or ``--config``) adapts them to
a machine, and the environment adapts them to one run.  Unknown keys are an
error rather than silently ignored, because a misspelt ``confidence_treshold``
that does nothing is the kind of mistake users never find.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cened import layout as layouts
from cened.errors import ConfigError, JournalError

# Photos as phones and cameras write them.  HEIF/HEIC (iPhones) and AVIF are decoded like
# any photo; camera RAW files are classified from their embedded preview and moved whole.
RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")
HEIF_AVIF_EXTENSIONS = (".heic", ".heif", ".hif", ".avif")
DEFAULT_EXTENSIONS = (
    *(".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    *HEIF_AVIF_EXTENSIONS,
    *RAW_EXTENSIONS,
)
# Files that travel with a photo of the same name (cened.companions): sidecars (Lightroom's
# and darktable's XMP, Apple's AAE edits, Google Takeout's JSON) and a Live Photo's video.
SIDECAR_EXTENSIONS = (".xmp", ".aae", ".json")
VIDEO_EXTENSIONS = (".mov", ".mp4", ".m4v")


#: The folder in the library that photos already there go to (duplicates = "separate").
DUPLICATES_FOLDER = "_duplicates"
#: Folders that the units' PrivateTmp= replaces with the service's own, deleted at every stop:
#: photos or a database kept there would be lost without a word.
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


class Duplicates(StrEnum):
    """What becomes of a photo whose content is already in the library."""

    SEPARATE = "separate"  # moved to <library>/_duplicates, never deleted
    KEEP = "keep"  # filed like any photo
    SKIP = "skip"  # left in the inbox, noted once


class NearDuplicates(StrEnum):
    """What becomes of a photo that is the same picture as one in the library, or a frame of its burst."""

    GROUP = "group"  # filed beside it, in its album, as one group that undo and correct move together
    SEPARATE = "separate"  # the same picture goes to <library>/_duplicates; a burst frame is grouped
    KEEP = "keep"  # filed like any photo


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else _home() / ".local" / "state") / "cened"


def shipped_model_dir() -> Path:
    """The model that ships with cened: inside the wheel, or ``models/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_models" / "landscapes", here.parent / "models" / "landscapes"):
        if candidate.is_dir():
            return candidate
    return here.parent / "models" / "landscapes"


class Settings(BaseSettings):
    """Every key here is documented, with its default, in ``config.example.toml``."""

    # allow_inf_nan: `max_file_mb = inf` would pass every bound and then fail every photo.
    model_config = SettingsConfigDict(
        env_prefix="CENED_", extra="forbid", validate_default=True, allow_inf_nan=False
    )

    inbox: Path = Field(default_factory=lambda: _home() / "Pictures" / "cened" / "inbox")
    library: Path = Field(default_factory=lambda: _home() / "Pictures" / "cened" / "albums")
    quarantine: Path | None = None
    database: Path = Field(default_factory=lambda: _state_dir() / "cened.sqlite3")
    model: Path = Field(default_factory=shipped_model_dir)
    backend: Literal["auto", "tflite", "keras"] = "auto"

    batch_size: int = Field(32, ge=1, le=256)
    model_batch_size: int = Field(8, ge=1, le=256)
    batch_max_wait_ms: int = Field(50, ge=0, le=60_000)
    decode_threads: int = Field(2, ge=1, le=64)
    model_threads: int = Field(0, ge=0, le=64)
    model_workers: int = Field(0, ge=0, le=16)
    thumbnail_min_side: int = Field(160, ge=0, le=10_000)

    confidence_threshold: float = Field(0.6, ge=0.0, le=1.0)
    review_album: str = "review"
    # Photos that are none of the model's classes; "" sends them to review_album instead.
    other_album: str = "other"
    albums: dict[str, str] = Field(default_factory=dict)
    duplicates: Duplicates = Duplicates.SEPARATE
    near_duplicates: NearDuplicates = NearDuplicates.GROUP
    # A video with no photo of its name goes here, unclassified; "" leaves it in the inbox.
    videos_album: str = ""
    # How long a sidecar or video with no photo of its name waits for one to arrive.
    companion_wait_s: float = Field(30.0, ge=0.0, le=86_400)
    # Folders below the library; see cened.layout for the fields.
    layout: str = layouts.DEFAULT
    # Record photos moved or removed by hand in the library (cened.library); one inotify
    # watch per folder of it, which a library of very many folders may not have to spare.
    watch_library: bool = True
    # Learn by itself (cened learn) once this many labelled photos (corrections, album
    # examples) are new since the last version was learned, with the inbox quiet; 0: never.
    learn_after: int = Field(20, ge=0, le=1_000_000)

    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    ignore_suffixes: list[str] = Field(
        default_factory=lambda: [".part", ".partial", ".crdownload", ".download", ".tmp", ".swp", "~"]
    )
    stable_seconds: float = Field(1.0, ge=0.0, le=3600)
    # Long enough for a writer that pauses two minutes (a phone's upload on a poor link).
    unfinished_grace_s: float = Field(180.0, ge=0.0, le=86_400)
    rescan_interval_s: float = Field(300.0, ge=0.0)
    queue_max: int = Field(256, ge=1, le=100_000)
    max_file_mb: float = Field(200.0, gt=0)
    decode_memory_mb: float = Field(512.0, ge=16)
    retry_max_s: float = Field(300.0, ge=1.0)

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("extensions", "ignore_suffixes")
    @classmethod
    def _lower_suffixes(cls, value: list[str]) -> list[str]:
        return [v.lower() if v.startswith(".") or v == "~" else "." + v.lower() for v in value]

    @field_validator("extensions")
    @classmethod
    def _real_extensions(cls, value: list[str]) -> list[str]:
        # [], [""] or ["*"] would file nothing, ever, without a word.
        if not value:
            raise ValueError("at least one extension is needed, or nothing is ever filed")
        for ext in value:
            if len(ext) < 2 or not ext[1:].replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"{ext!r} is not an extension (such as .jpg); patterns are not taken")
        doubled = sorted({ext for ext in value if value.count(ext) > 1})
        if doubled:
            raise ValueError(f"{', '.join(doubled)} listed twice")
        return value

    @field_validator("review_album")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _album_name(value)

    @field_validator("other_album", "videos_album")
    @classmethod
    def _plain_name_or_none(cls, value: str) -> str:
        return _album_name(value) if value else value

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        return layouts.check(value)

    @field_validator("albums")
    @classmethod
    def _known_classes(cls, value: dict[str, str]) -> dict[str, str]:
        return {cls_name: _album_name(album) for cls_name, album in value.items()}

    @model_validator(mode="after")
    def _albums_apart(self) -> Settings:
        """review, other and videos are albums of their own: a class's, or each other's, would mix them."""
        named = {"review_album": self.review_album, "other_album": self.other_album}
        if self.videos_album:
            named["videos_album"] = self.videos_album
        seen: dict[str, str] = {}
        for key, album in named.items():
            if album in seen:
                raise ValueError(f"{key} and {seen[album]} are both {album!r}: each needs its own album")
            if album in (DUPLICATES_FOLDER, "_quarantine") or (album and album.startswith(".")):
                raise ValueError(f"{key}: {album!r} is a folder cened uses for something else")
            if album:
                seen[album] = key
        return self

    @model_validator(mode="after")
    def _paths_apart(self) -> Settings:
        # Absolute, so the log records paths that mean the same from any working directory.
        for name in ("inbox", "library", "database", "model"):
            setattr(self, name, Path(getattr(self, name)).expanduser().absolute())
        if self.quarantine is not None:
            self.quarantine = self.quarantine.expanduser().absolute()
        inbox, library = self.inbox.resolve(), self.library.resolve()
        if inbox == library or library.is_relative_to(inbox) or inbox.is_relative_to(library):
            raise ValueError("inbox and library must be separate folders, neither inside the other")
        if self.quarantine_dir.resolve().is_relative_to(inbox):
            raise ValueError("quarantine must not be inside the inbox")
        return self

    @property
    def quarantine_dir(self) -> Path:
        return self.quarantine if self.quarantine is not None else self.library / "_quarantine"

    @property
    def roots(self) -> list[Path]:
        """The folders cened moves files below, never through a symbolic link (cened.moving).

        The quarantine only where it is outside the library: ``_quarantine`` is the library's.
        """
        apart = not self.quarantine_dir.is_relative_to(self.library)
        return [self.library, self.inbox, *([self.quarantine_dir] if apart else [])]

    @property
    def watched_extensions(self) -> list[str]:
        """What the inbox watcher passes on: photos, and the files that travel with them."""
        return [*self.extensions, *SIDECAR_EXTENSIONS, *VIDEO_EXTENSIONS]

    @property
    def learned_dir(self) -> Path:
        """Learned versions of the model (``cened learn``): state, so beside the database."""
        return self.database.parent / "learned"

    @property
    def duplicates_dir(self) -> Path:
        return self.library / DUPLICATES_FOLDER

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def decode_memory_bytes(self) -> int:
        return int(self.decode_memory_mb * 1024 * 1024)

    def album_folder(self, album: str, taken: datetime | None = None) -> Path:
        """Where a photo of ``album`` goes, by ``layout``; ``taken`` is needed when the layout has dates."""
        return self.library / layouts.folder(self.layout, album, taken)

    def album_for(self, label: str) -> str:
        """The album a class is filed in; grouping look-alikes is just a shared name."""
        return self.albums.get(label, label)

    def summary(self) -> dict[str, Any]:
        """The settings as plain values, for the start-up log line."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.model_dump().items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


#: The longest album name, in bytes of UTF-8: a folder name on ext4, XFS, btrfs and tmpfs.
ALBUM_NAME_MAX = 255


def _album_name(value: str) -> str:
    if not value or value in (".", "..") or "/" in value or not value.isprintable():
        raise ValueError(f"{value!r} is not a usable folder name")
    if len(value.encode("utf-8", "surrogateescape")) > ALBUM_NAME_MAX:
        raise ValueError(f"an album name is at most {ALBUM_NAME_MAX} bytes; {value[:40]!r}… is longer")
    return value


def album_name_for_people(value: str, reserved: Collection[str] = ()) -> str:
    """An album name a person gave (``album add``, ``correct``); ``ValueError`` saying why not.

    Not a folder cened keeps for itself (``_quarantine``, ``_duplicates``,
    hidden ones), nor one of ``reserved`` in another case (``Review``).
    """
    _album_name(value)
    if value.startswith((".", "_")):
        raise ValueError(f"{value!r}: names starting with . or _ are folders cened uses itself")
    taken = {r.casefold(): r for r in reserved}
    if value.casefold() in taken and value != taken[value.casefold()]:
        raise ValueError(f"{value!r} is too like album {taken[value.casefold()]!r}; choose another name")
    return value


#: The system service's config (install-service writes the unit to read it).
SYSTEM_CONFIG = Path("/etc/cened/config.toml")


def user_config() -> Path:
    """The user service's config, ``~/.config/cened/config.toml`` (``$XDG_CONFIG_HOME`` honoured)."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(config_home) / "cened" / "config.toml"


def installed_config() -> Path | None:
    """The config a command reads when none is named: ``$CENED_CONFIG``, else an installed service's.

    The user's own service's first, then the system service's, so that
    ``cened history`` run by anyone who may read it shows the service's log,
    not the defaults' (docs/service.md).  None: the defaults.
    """
    if os.environ.get("CENED_CONFIG"):
        return Path(os.environ["CENED_CONFIG"])
    return next((p for p in (user_config(), SYSTEM_CONFIG) if p.is_file()), None)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings, turning every failure into one :class:`ConfigError`.

    ``config`` defaults to ``$CENED_CONFIG``; a named file that does not exist
    is an error (a typo in a unit file must not silently mean "defaults").
    """
    if config is None and os.environ.get("CENED_CONFIG"):
        config = Path(os.environ["CENED_CONFIG"])
    in_file: dict[str, Any] = {}
    if config is not None:
        config = config.expanduser()
        if not config.is_file():
            raise ConfigError(f"config file {config} does not exist")
        try:
            in_file = tomllib.loads(config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {config} cannot be read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config} is not valid TOML: {exc}") from exc

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config})

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(err, config, in_file, overrides) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _problem(err: Any, config: Path | None, in_file: dict[str, Any], overrides: dict[str, Any]) -> str:
    """One validation error as a person can act on it: where the key was set, and for a
    misspelt key the nearest one that exists."""
    key = ".".join(str(p) for p in err["loc"])
    top = str(err["loc"][0]) if err["loc"] else ""
    env = f"{Settings.model_config['env_prefix']}{top.upper()}"
    if top in overrides:
        where = ""
    elif top in in_file and config is not None:
        where = f"{config}: "
    elif top and env in os.environ:
        where = f"${env}: "
    else:
        where = f"{config}: " if config is not None and top else ""
    if err["type"] == "extra_forbidden":
        near = difflib.get_close_matches(top, list(Settings.model_fields), n=1, cutoff=0.6)
        guess = f" (did you mean {near[0]!r}?)" if near else " (config.example.toml lists every key)"
        return f"{where}unknown key {key!r}{guess}"
    return f"{where}{key or 'config'}: {err['msg']}"


def temporary_folders(settings: Settings) -> list[str]:
    """The folders of ``settings`` that PrivateTmp= would make the service's own, each as ``key path``."""
    folders = {
        "inbox": settings.inbox,
        "library": settings.library,
        "quarantine": settings.quarantine_dir,
        "database": settings.database,
    }
    return [
        f"{key} {folder}"
        for key, folder in folders.items()
        if any(folder.resolve().is_relative_to(tmp) for tmp in PRIVATE_TMP)
    ]


def refuse_temporary(settings: Settings) -> None:
    """Refuse (exit 2) folders under /tmp or /var/tmp, which a unit's PrivateTmp= deletes at every stop."""
    found = temporary_folders(settings)
    if found:
        raise ConfigError(
            f"{'; '.join(found)}: under /tmp or /var/tmp, which the service gets a private copy of "
            "(PrivateTmp=) that is deleted whenever it stops, photos and log with it; "
            "choose folders elsewhere in the config"
        )


def check_folders(settings: Settings) -> None:
    """Create the folders the daemon writes to, and prove each writable by making and removing a file.

    Run once at start: a folder the daemon cannot write (a read-only mount, a
    wrong owner, or under systemd a folder outside the unit's
    ``ReadWritePaths=`` after the config moved it) would otherwise fail every
    batch while the service looks healthy, or crash it into a restart loop.  A
    :class:`ConfigError` (exit 2; :class:`JournalError`, 4, for the database's
    folder) instead stops it, and the units' ``RestartPreventExitStatus=`` does
    not restart it.  Under systemd, folders under /tmp are refused as well
    (:func:`refuse_temporary`).
    """
    if os.environ.get("INVOCATION_ID"):  # set by systemd for every unit it starts
        refuse_temporary(settings)
    folders = {
        "inbox": settings.inbox,
        "library": settings.library,
        "quarantine": settings.quarantine_dir,
        "database": settings.database.parent,
    }
    for key, folder in folders.items():
        probe = folder / f".cened-probe-{os.getpid()}"
        try:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                # Named, since a missing inbox is as often a typo in the config as a first start.
                structlog.get_logger("cened.config").info("created-folder", folder=key, path=str(folder))
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as exc:
            what = (
                f"database folder {folder} of {settings.database}" if key == "database" else f"{key} {folder}"
            )
            hint = (
                "the service may only write inside its unit's ReadWritePaths=: after moving a folder in the "
                "config, run `cened install-service` again, then daemon-reload and restart"
                if os.environ.get("INVOCATION_ID")  # set by systemd for every unit it starts
                else "check that it exists on a writable disk and that this user may write to it"
            )
            # The database's folder is the database's problem (exit 4), the others the config's (2).
            error = JournalError if key == "database" else ConfigError
            raise error(f"{what} is not writable ({exc.strerror or exc}); {hint}") from exc

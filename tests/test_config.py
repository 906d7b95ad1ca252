"""Configuration: defaults, TOML, environment, and one clear error for anything wrong."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import write_config
from daemon_helpers import run_cli

from cened import config
from cened.config import Settings, check_folders, load_settings
from cened.errors import ConfigError, JournalError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("CENED_CONFIG", raising=False)
    s = load_settings()
    assert s.inbox == tmp_path / "Pictures" / "cened" / "inbox"
    assert s.database == tmp_path / ".local" / "state" / "cened" / "cened.sqlite3"
    assert s.quarantine_dir == s.library / "_quarantine"
    assert s.model.name == "landscapes"


def test_example_config_documents_every_key_with_its_default(monkeypatch, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.M)) | set(
        re.findall(r"^\[([a-z_]+)\]", text, flags=re.M)
    )
    assert set(Settings.model_fields) <= documented, set(Settings.model_fields) - documented
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    from_file, defaults = load_settings(EXAMPLE), load_settings()
    assert from_file.model_dump() == defaults.model_dump()
    assert tomllib.loads(text)["albums"] == {}


def test_environment_wins_over_the_file(monkeypatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('batch_size = 8\nconfidence_threshold = 0.7\n[albums]\nglacier = "mountains"\n')
    monkeypatch.setenv("CENED_BATCH_SIZE", "4")
    monkeypatch.setenv("CENED_ALBUMS", '{"mountain": "mountains"}')
    s = load_settings(cfg)
    assert (s.batch_size, s.confidence_threshold) == (4, 0.7)
    assert s.album_for("glacier") == s.album_for("mountain") == "mountains"
    monkeypatch.setenv("CENED_CONFIG", str(cfg))
    monkeypatch.delenv("CENED_BATCH_SIZE")
    assert load_settings().batch_size == 8


@pytest.mark.parametrize(
    "body,key",
    [
        ("confidence_treshold = 0.5", "confidence_treshold"),
        ("confidence_threshold = 1.5", "confidence_threshold"),
        ("batch_size = 0", "batch_size"),
        ('log_format = "xml"', "log_format"),
        ('review_album = "a/b"', "review_album"),
        ('inbox = "/tmp/x"\nlibrary = "/tmp/x/albums"', "inbox and library"),
        ("batch_size = ", "not valid TOML"),
        # Accepted once, then every photo failed forever, or a traceback (exit 1).
        ("max_file_mb = inf", "max_file_mb"),
        ("max_file_mb = nan", "max_file_mb"),
        ("decode_memory_mb = inf", "decode_memory_mb"),
        ("confidence_threshold = nan", "confidence_threshold"),
        # Accepted once, and then nothing was ever filed.
        ("extensions = []", "extensions"),
        ('extensions = ["*"]', "extensions"),
        ('extensions = [""]', "extensions"),
        ('extensions = [".jpg", ".JPG"]', ".jpg listed twice"),
        ('review_album = "other"', "other_album and review_album"),
        ('other_album = "_duplicates"', "other_album"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, body: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body + "\n")
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(cfg)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_config_exits_2_and_touches_nothing(tmp_path: Path, settings: Settings) -> None:
    cfg = write_config(tmp_path / "c.toml", settings, batch_size=-1)
    result = run_cli("run", config=cfg)
    assert result.returncode == 2
    assert "batch_size" in result.stderr and result.stderr.count("\n") == 1
    assert not settings.database.exists() and list(settings.library.iterdir()) == []


def test_missing_model_fails_fast_with_exit_3(tmp_path: Path, settings: Settings) -> None:
    cfg = write_config(tmp_path / "c.toml", settings, model=str(tmp_path / "no-model"))
    result = run_cli("run", config=cfg)
    assert result.returncode == 3
    assert "no-model" in result.stderr and "does not exist" in result.stderr


def test_a_model_that_is_a_file_says_so(tmp_path: Path, settings: Settings) -> None:
    cfg = write_config(tmp_path / "c.toml", settings, model="/etc/passwd")
    result = run_cli("run", config=cfg)
    assert result.returncode == 3 and "/etc/passwd is a file, not a model directory" in result.stderr


def test_model_not_matching_its_metadata_is_refused(
    tmp_path: Path, settings: Settings, model_dir: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")
    cfg = write_config(tmp_path / "c.toml", settings, model=str(broken))
    result = run_cli("run", config=cfg)
    assert result.returncode == 3 and "sha256" in result.stderr


@pytest.mark.parametrize("key", ["max_file_mb", "decode_memory_mb"])
def test_an_infinite_limit_exits_2_with_one_line(tmp_path: Path, settings: Settings, key: str) -> None:
    cfg = write_config(tmp_path / "c.toml", settings, **{key: "inf"})
    cfg.write_text(cfg.read_text().replace('"inf"', "inf"))
    result = run_cli("run", config=cfg)
    assert result.returncode == 2 and key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not settings.database.exists()


def test_a_review_album_that_is_a_class_album_is_refused(tmp_path: Path, settings: Settings) -> None:
    """Unsure photos filed among the sure ones of `sea` could never be told apart again."""
    cfg = write_config(tmp_path / "c.toml", settings, review_album="sea")
    result = run_cli("run", config=cfg)
    assert result.returncode == 2 and "review_album: 'sea' is the album of class 'sea'" in result.stderr


def test_unknown_class_in_album_mapping_is_refused(tmp_path: Path, settings: Settings) -> None:
    cfg = tmp_path / "c.toml"
    write_config(cfg, settings)
    cfg.write_text(cfg.read_text() + '[albums]\nvolcano = "fire"\n')
    result = run_cli("run", config=cfg)
    assert result.returncode == 2 and "volcano" in result.stderr


def test_a_folder_it_cannot_write_stops_the_start_with_exit_2(tmp_path: Path, settings: Settings) -> None:
    """Not a traceback and a restart loop: exit code 2, which the units do not restart."""
    (tmp_path / "a-file").write_text("")
    cfg = write_config(tmp_path / "c.toml", settings, library=str(tmp_path / "a-file" / "albums"))
    result = run_cli("run", config=cfg)
    assert result.returncode == 2, result.stderr
    assert f"library {tmp_path / 'a-file' / 'albums'} is not writable" in result.stderr
    assert "Traceback" not in result.stderr and not settings.database.exists()


def test_every_folder_is_probed_and_systemd_gets_a_hint(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only mount (as ProtectSystem=strict makes one outside ReadWritePaths=) is found at once."""
    real_open = os.open

    def read_only_state(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if Path(path).parent == settings.database.parent:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", read_only_state)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    with pytest.raises(
        JournalError, match=r"database folder .* is not writable \(Read-only file system\); check"
    ):
        check_folders(settings)
    monkeypatch.setenv("INVOCATION_ID", "0123")
    monkeypatch.setattr(config, "PRIVATE_TMP", ())  # pytest's folders are under /tmp
    with pytest.raises(JournalError, match=r"ReadWritePaths=.*cened install-service"):
        check_folders(settings)
    # The probes leave nothing behind.
    assert [p for folder in (settings.inbox, settings.library) for p in folder.iterdir()] == [
        settings.library / "_quarantine"
    ]


def test_under_systemd_folders_under_tmp_are_refused(settings: Settings, tmp_path: Path) -> None:
    """The units' PrivateTmp= makes /tmp the service's own, deleted at stop: photos there would be lost."""
    never = Path(f"/var/tmp/cened-test-{os.getpid()}-{tmp_path.name}")
    cfg = write_config(tmp_path / "c.toml", settings, database=never / "cened.sqlite3")
    env = {**os.environ, "INVOCATION_ID": "0123456789abcdef", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "cened", "--config", str(cfg), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"database {never / 'cened.sqlite3'}" in result.stderr, result.stderr
    assert f"library {settings.library}" in result.stderr and "PrivateTmp=" in result.stderr
    assert not never.exists()

"""Folders of the library replaced by symbolic links: nothing is ever written through one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import write_config, write_photo
from daemon_helpers import DaemonProcess, files_under, wait_until

from cened import moving
from cened.config import Settings


def test_a_move_never_goes_through_a_linked_folder(tmp_path: Path) -> None:
    library, outside = tmp_path / "library", tmp_path / "outside"
    outside.mkdir()
    library.mkdir()
    (library / "sea").symlink_to(outside)
    src = tmp_path / "p.jpg"
    src.write_bytes(b"photo")
    with pytest.raises(moving.LinkedFolder, match="sea is a symbolic link"):
        moving.move(src, library / "sea" / "2019" / "p.jpg", library)
    assert src.read_bytes() == b"photo" and list(outside.iterdir()) == []
    # A folder that is missing is made; the root itself may be a link (the config names it).
    linked_root = tmp_path / "albums"
    linked_root.symlink_to(library)
    moving.move(src, linked_root / "forest" / "2019" / "p.jpg", linked_root)
    assert (library / "forest" / "2019" / "p.jpg").read_bytes() == b"photo"


@pytest.mark.slow
def test_the_daemon_never_files_into_a_linked_album_or_quarantine(tmp_path: Path, settings: Settings) -> None:
    """An album folder and ``_quarantine`` replaced by links: the files wait in the inbox, said once."""
    outside = tmp_path / "outside"
    (outside / "sea").mkdir(parents=True)
    (outside / "q").mkdir()
    (settings.library / "sea").symlink_to(outside / "sea")
    (settings.library / "_quarantine").symlink_to(outside / "q")
    config = write_config(tmp_path / "cened.toml", settings, retry_max_s=1.0)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("started", timeout=90)
        for i in range(3):
            write_photo(settings.inbox / f"beach{i}.jpg", "sea", seed=i)
        junk = settings.inbox / "junk.jpg"
        junk.write_bytes(os.urandom(2000))
        os.utime(junk, (time.time() - 3600,) * 2)  # long finished: quarantined at once
        daemon.wait(
            lambda: sum(e.get("event") == "not-moved" for e in daemon.events) >= 4, 60, "four not moved"
        )
        time.sleep(3)  # retried meanwhile (retry_max_s = 1), and said once per folder only
        assert files_under(outside) == []
        assert sorted(p.name for p in files_under(settings.inbox)) == [
            "beach0.jpg",
            "beach1.jpg",
            "beach2.jpg",
            "junk.jpg",
        ]
        said = [e for e in daemon.events if e.get("event") == "folder-is-a-link"]
        assert sorted(e["folder"] for e in said) == [
            str(settings.library / "_quarantine"),
            str(settings.library / "sea"),
        ], said
        # Made a folder again, the album takes the photos waiting for it.
        (settings.library / "sea").unlink()
        (settings.library / "sea").mkdir()
        assert wait_until(lambda: len(files_under(settings.library / "sea")) == 3, timeout=30)
    finally:
        assert daemon.stop() == 0
    assert files_under(outside) == []

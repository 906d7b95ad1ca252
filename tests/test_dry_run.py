"""``cened classify`` without ``--apply`` says exactly what ``--apply`` then does.

The dry run is the real filing code, simulating, reading the log: photos
already in the library, copies within the run, companions, names taken in
earlier batches and dated folders come out the same.  On a terminal it
wears a DRY RUN banner, says "would move" and ends with a summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config, write_photo

from cened.cli import main
from cened.config import Settings
from cened.errors import ExitCode


def _classify(config: Path, folder: Path, capsys: pytest.CaptureFixture[str], *more: str) -> list[dict]:
    main(["--config", str(config), "classify", str(folder), "--json", *more])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _what(rows: list[dict]) -> list[tuple[str, str, str | None]]:
    return sorted((r["file"], r["action"], r.get("destination")) for r in rows)


def test_the_dry_run_says_what_apply_then_does(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two photos a batch, so names, copies and companions cross batches; folders by year.
    config = write_config(tmp_path / "cened.toml", settings, batch_size=2, layout="{album}/{year}")
    filed = write_photo(tmp_path / "earlier" / "a.jpg", "sea", seed=1)
    kept = filed.read_bytes()
    assert main(["--config", str(config), "classify", str(filed), "--apply", "--json"]) == 0
    capsys.readouterr()

    old = tmp_path / "old"
    (old / "0-copy-of-a.jpg").parent.mkdir(parents=True)
    (old / "0-copy-of-a.jpg").write_bytes(kept)  # in the library already
    write_photo(old / "1" / "p.jpg", "forest", seed=2)
    write_photo(old / "2" / "p.jpg", "forest", seed=3)  # the same name, in a later batch
    write_photo(old / "3" / "f.jpg", "street", seed=4)
    (old / "3" / "f.xmp").write_text("<x:xmpmeta/>")  # travels with f.jpg
    twin = write_photo(old / "4" / "g.jpg", "mountain", seed=5)
    (old / "5").mkdir()
    shutil.copy(twin, old / "5" / "h.jpg")  # the same content, in a later batch
    (old / "6-bad.jpg").write_text("not an image")
    for path in old.rglob("*.*"):  # old photos: settled long ago, as a companion must be to go along
        os.utime(path, (1.7e9, 1.7e9))

    dry = _classify(config, old, capsys)
    assert all(r["dry_run"] for r in dry)
    assert not any("id" in r for r in dry) and len(list(settings.library.rglob("*.*"))) == 1
    applied = _classify(config, old, capsys, "--apply")
    assert _what(dry) == _what(applied)

    where = {Path(r["file"]).relative_to(old).as_posix(): r.get("destination") for r in applied}
    lib = settings.library
    assert where["0-copy-of-a.jpg"] == str(lib / "_duplicates" / "0-copy-of-a.jpg")
    assert {where["1/p.jpg"], where["2/p.jpg"]} == {
        str(lib / "forest" / "2023" / n) for n in ("p.jpg", "p-1.jpg")
    }
    assert where["3/f.xmp"] == str(lib / "street" / "2023" / "f.xmp")
    assert where["5/h.jpg"] == str(lib / "_duplicates" / "h.jpg")
    assert where["6-bad.jpg"] == str(settings.quarantine_dir / "6-bad.jpg")
    assert all(os.path.isfile(d) for d in where.values())


@pytest.mark.slow
def test_at_a_terminal_a_dry_run_says_would_and_sums_up(settings: Settings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    folder = tmp_path / "old"
    for i, cls in enumerate(("sea", "sea", "forest")):
        write_photo(folder / f"{i}.jpg", cls, seed=i)
    # `script` gives the command a terminal, as a person's shell would.
    done = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m cened --config {config} classify {folder}", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stdout)  # colours and the bar's redraws
    assert "DRY RUN: nothing is moved; add --apply to file 3 photos as shown" in out
    assert f"{folder / '0.jpg'}  would move → sea/0.jpg" in out and "  moved →" not in out
    assert "ETA" in out  # the progress bar, on a terminal only
    summary = out[out.index("DRY RUN: 3 photos") :]
    rows = [re.split(r"\s*│\s*", line.strip("│ \r")) for line in summary.splitlines() if "│" in line]
    assert ["would move", "sea", "2"] in rows and ["would move", "forest", "1"] in rows
    assert "DRY RUN: nothing was moved; run again with --apply to file them" in summary
    assert not any(settings.library.rglob("*.jpg"))

    piped = subprocess.run(
        [sys.executable, "-m", "cened", "--config", str(config), "classify", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and "would move" in piped.stdout and "ETA" not in piped.stdout
    assert "\x1b[" not in piped.stdout  # no colour or cursor codes for a program


def test_a_missing_path_and_a_folder_without_photos_are_clear_errors(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "cened.toml", settings)
    assert main(["--config", str(config), "classify", str(tmp_path / "nowhere")]) == ExitCode.CONFIG
    assert capsys.readouterr().err == f"cened: {tmp_path / 'nowhere'} does not exist\n"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photo")
    assert main(["--config", str(config), "classify", str(tmp_path / "empty")]) == ExitCode.REFUSED
    assert f"cened: no photos in {tmp_path / 'empty'} (looked for" in capsys.readouterr().err

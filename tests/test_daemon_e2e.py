"""The whole service as a user runs it: a subprocess, a real inbox, real photos, then undo."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import DaemonProcess, files_under, run_cli, wait_until

from cened.config import Settings


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files_under(root)}


def _copy_slowly(src: Path, dst: Path, chunks: int = 4, pause: float = 0.35) -> None:
    """Write a file the way a slow network copy does: in pieces, with gaps longer than a tick."""
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(pause)


@pytest.mark.slow
def test_twenty_photos_are_filed_logged_and_undone(tmp_path: Path, settings: Settings) -> None:
    staging = tmp_path / "staging"
    originals: dict[str, str] = {}
    for i in range(20):
        cls = CLASSES[i % len(CLASSES)]
        fmt, ext = ("PNG", "png") if i % 5 == 0 else ("JPEG", "jpg")
        src = write_photo(staging / f"{cls}_{i:02d}.{ext}", cls, fmt=fmt, size=(96 + i, 64), seed=i)
        originals[src.name] = cls
    before = {}
    config = write_config(tmp_path / "cened.toml", settings, stable_seconds=0.5)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_for("started", timeout=90)
        inbox = settings.inbox
        (inbox / "trip").mkdir()
        for i, src in enumerate(sorted(staging.iterdir())):
            dst = (inbox / "trip" / src.name) if i % 4 == 0 else inbox / src.name
            if i % 3 == 0:
                _copy_slowly(src, dst)  # longer than stable_seconds from first byte to last
            else:
                shutil.copy2(src, dst)
            before[str(dst.relative_to(inbox))] = hashlib.sha256(src.read_bytes()).hexdigest()

        def all_filed() -> bool:
            return len(files_under(settings.library)) == 20 and not files_under(inbox)

        assert wait_until(all_filed, timeout=60), files_under(settings.library)

        # Every photo is in exactly one album, the one its colour says, intact.
        filed = files_under(settings.library)
        assert sorted(p.name for p in filed) == sorted(originals)
        for path in filed:
            assert path.parent.name == originals[path.name], f"{path} misfiled"
        assert sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in filed) == sorted(before.values())

        # ... with one matching, complete log row each.
        with sqlite3.connect(settings.database) as db:
            rows = db.execute(
                "SELECT source, destination, sha256, label, confidence, probabilities, model_version, "
                "state, action FROM decisions"
            ).fetchall()
        assert len(rows) == 20
        by_dest = {Path(r[1]).name: r for r in rows}
        for path in filed:
            source, destination, sha, label, confidence, probs, version, state, action = by_dest[path.name]
            assert (Path(destination), state, action) == (path, "done", "moved")
            assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
            assert label == originals[path.name] and 0 < confidence <= 1
            assert set(json.loads(probs)) == set(CLASSES) and version == "tiny-test-1"
            assert str(Path(source).relative_to(inbox)) in before

        # The history command reads the log while the daemon holds it open.
        history = run_cli("history", "--json", "--limit", "0", config=config)
        assert history.returncode == 0, history.stderr
        assert len(history.stdout.splitlines()) == 20

        # Undo everything while the daemon is still watching: the inbox is back,
        # byte for byte, and the daemon does not file the restored photos again.
        undo = run_cli("undo", "--last", "20", config=config)
        assert undo.returncode == 0, undo.stderr
        assert _digest(inbox) == before
        time.sleep(settings.stable_seconds + 1.5)
        assert _digest(inbox) == before
        assert files_under(settings.library) == []
    finally:
        code = daemon.stop()
    assert code == 0
    stopped = daemon.wait_for("stopped", timeout=1)
    assert stopped["filed"] == 20
    # stdout and stderr together are JSON lines only (LiteRT's own stderr line included),
    # so `journalctl -o cat | jq` never meets a line it cannot parse.
    assert [e["line"] for e in daemon.events if e["event"] == "raw"] == []
    with sqlite3.connect(settings.database) as db:
        actions = db.execute("SELECT action, count(*) FROM decisions GROUP BY action").fetchall()
    assert dict(actions) == {"moved": 20, "undone": 20}


@pytest.mark.slow
def test_sigterm_mid_backlog_finishes_the_batch_and_exits_quickly(tmp_path: Path, settings: Settings) -> None:
    for i in range(120):
        write_photo(settings.inbox / f"{i:03d}.png", CLASSES[i % 6], fmt="PNG", size=(400, 300), seed=i)
    config = write_config(tmp_path / "cened.toml", settings, batch_size=8)
    daemon = DaemonProcess(config)
    daemon.wait_for("filed", timeout=90)
    started = time.monotonic()
    code = daemon.stop(timeout=10)
    assert code == 0 and time.monotonic() - started < 5
    with sqlite3.connect(settings.database) as db:
        states = dict(db.execute("SELECT state, count(*) FROM decisions GROUP BY state").fetchall())
    assert "pending" not in states and states["done"] == len(files_under(settings.library))
    left = files_under(settings.inbox)
    assert left, "the stop came too late to test anything"
    assert len(left) + len(files_under(settings.library)) == 120

"""What reaches stdout and stderr: one structured stream, even when native code prints."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import picture, write_config
from daemon_helpers import DaemonProcess

from cened import logsetup
from cened.config import Settings


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every event at every level (another test may have configured a higher level), restored after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


def test_native_stderr_becomes_log_events_and_stderr_comes_back(
    events: list[dict[str, Any]], capfd: pytest.CaptureFixture[str]
) -> None:
    with logsetup.native_stderr_logged("cened.test"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something broke\n\nno prefix at all\n")
        os.write(2, b"I0000 00:00:1795641546.155105   27014 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # captured only inside the block
    said = [(e["log_level"], e["message"]) for e in events if e["event"] == "runtime-said"]
    assert said == [
        ("info", "Created TensorFlow Lite XNNPACK delegate for CPU."),
        ("error", "something broke"),
        ("warning", "no prefix at all"),
        ("info", "I0000 00:00:1795641546.155105   27014 port.cc:153] oneDNN custom operations are on."),
    ]


def test_native_stderr_is_logged_even_when_the_block_fails(
    events: list[dict[str, Any]], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError), logsetup.native_stderr_logged("cened.test"):
        os.write(2, b"WARNING: about to fail\n")
        raise RuntimeError("load failed")
    assert [e["message"] for e in events] == ["about to fail"]
    assert capfd.readouterr().err == ""


def test_loading_a_litert_model_prints_json_only(model_dir: Path) -> None:
    # A fresh process: LiteRT prints its delegate line once per process.
    code = (
        "import sys; from pathlib import Path; from cened import logsetup;"
        "from cened.ml.classifying import Classifier;"
        "logsetup.configure('json', 'info'); Classifier(Path(sys.argv[1]), backend='tflite', warm_batch=4)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    said = [json.loads(line) for line in done.stdout.splitlines()]
    assert any(e["event"] == "runtime-said" and "XNNPACK" in e["message"] for e in said), said


def test_nowhere_to_capture_leaves_stderr_alone(
    events: list[dict[str, Any]], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_file() -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(logsetup, "_anonymous_file", no_file)
    with logsetup.native_stderr_logged("cened.test"):
        os.write(2, b"INFO: still printed\n")
    assert capfd.readouterr().err == "INFO: still printed\n" and events == []


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() replaces the root handler and structlog's setup; put both back."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level


def journal_env(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make ``path`` look like systemd's journal stream: $JOURNAL_STREAM names its device and inode."""
    st = os.stat(path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def test_only_the_stream_named_by_journal_stream_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not logsetup.is_journal(journal)
        journal_env(monkeypatch, tmp_path / "journal")
        # A child that inherited the variable but writes elsewhere (a pipe, a file) gets no prefixes.
        assert logsetup.is_journal(journal) and not logsetup.is_journal(other)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logsetup.is_journal(journal)


def test_lines_to_the_journal_carry_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """`<N>` before each JSON line: journald keeps N as PRIORITY and `-o cat` shows pure JSON."""
    path = tmp_path / "journal"
    with path.open("w") as journal:
        journal_env(monkeypatch, path)
        logsetup.configure("json", "debug", stream=journal)
        log = structlog.get_logger("cened.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        logging.getLogger("watchdog").critical("from the standard library")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert [json.loads(line[3:])["event"] for line in lines] == [
        "d",
        "i",
        "w",
        "e",
        "from the standard library",
    ]


def test_lines_elsewhere_have_no_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    path = tmp_path / "log"
    with path.open("w") as out:
        journal_env(monkeypatch, tmp_path)  # some other file
        logsetup.configure("json", "info", stream=out)
        structlog.get_logger("cened.test").error("e")
    assert json.loads(path.read_text())["event"] == "e"


def test_a_failing_command_says_why_as_json_in_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    with path.open("w") as journal:
        logsetup.print_failure(["plain"], 2, stream=journal)
        journal_env(monkeypatch, path)
        logsetup.print_failure(["library /x is not writable"], 2, stream=journal)
    plain, line = path.read_text().splitlines()
    assert plain == "cened: plain"
    assert line.startswith("<3>{")
    event = json.loads(line[3:])
    assert event["event"] == "failed" and event["level"] == "error" and event["exit_code"] == 2
    assert event["error"] == "library /x is not writable"


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_a_json_event_not_a_bare_traceback(where: str) -> None:
    """Under systemd (JSON logs) a crash is read with `journalctl -o cat | jq` like any event."""
    boom = "raise RuntimeError('boom')"
    body = boom if where == "main" else f"t = threading.Thread(target=lambda: exec({boom!r}), name='worker')"
    code = "\n".join(
        [
            "import sys, threading",
            "from cened import logsetup",
            "logsetup.configure('json', 'info', stream=sys.stdout)",
            body,
            *(["t.start()", "t.join()"] if where == "thread" else []),
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    (event,) = [e for e in lines if e["event"] == "uncaught-exception"]
    assert event["level"] == "critical" and "RuntimeError: boom" in event["exception"]
    assert "Traceback" not in done.stderr
    assert event.get("thread") == ("worker" if where == "thread" else None)


@pytest.mark.slow
def test_decoder_warnings_are_log_events_not_raw_lines(tmp_path: Path, settings: Settings) -> None:
    """Pillow warns on stderr (Corrupt EXIF data): under systemd, each would be a line that is not JSON."""
    buf = io.BytesIO()
    picture("street").save(buf, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff garbage")
    config = write_config(tmp_path / "cened.toml", settings)
    daemon = DaemonProcess(config)  # its stderr is read with its stdout
    try:
        daemon.wait_for("started", timeout=90)
        (settings.inbox / "exif.jpg").write_bytes(buf.getvalue())
        daemon.wait_for("filed", timeout=30)
    finally:
        assert daemon.stop() == 0
    raw = [e["line"] for e in daemon.events if e.get("event") == "raw"]
    assert raw == [], raw
    warned = [e for e in daemon.events if "Corrupt EXIF" in str(e.get("event"))]
    assert warned and warned[0]["level"] == "warning", daemon.events

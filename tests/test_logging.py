"""What reaches stdout and stderr: one structured stream, even when native code prints."""

from __future__ import annotations

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

from cened import logsetup


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

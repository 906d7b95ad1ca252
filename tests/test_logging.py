"""What reaches stdout and stderr: one structured stream, even when native code prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from cened import logsetup
from cened.classifying import Classifier


def test_native_stderr_becomes_log_events_and_stderr_comes_back(capfd: pytest.CaptureFixture[str]) -> None:
    with structlog.testing.capture_logs() as events, logsetup.native_stderr_logged("cened.test"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something broke\n\nno prefix at all\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # captured only inside the block
    said = [(e["log_level"], e["message"]) for e in events if e["event"] == "runtime-said"]
    assert said == [
        ("info", "Created TensorFlow Lite XNNPACK delegate for CPU."),
        ("error", "something broke"),
        ("warning", "no prefix at all"),
    ]


def test_native_stderr_is_logged_even_when_the_block_fails(capfd: pytest.CaptureFixture[str]) -> None:
    with (
        structlog.testing.capture_logs() as events,
        pytest.raises(RuntimeError),
        logsetup.native_stderr_logged("cened.test"),
    ):
        os.write(2, b"WARNING: about to fail\n")
        raise RuntimeError("load failed")
    assert [e["message"] for e in events] == ["about to fail"]
    assert capfd.readouterr().err == ""


def test_loading_a_litert_model_prints_nothing_outside_the_log(
    model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with structlog.testing.capture_logs() as events:
        Classifier(model_dir, backend="tflite", warm_batch=4)
    assert capfd.readouterr().err == ""
    assert any("XNNPACK" in e.get("message", "") for e in events)

"""The light install: what the daemon, classify, learn, review and bench need comes without TensorFlow.

TensorFlow is in the ``[train]`` extra only.  Each code path runs in a fresh
process in which importing TensorFlow or Keras fails (tests/without_tensorflow.py);
the commands that do need it say how to get it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLASSES, write_config, write_photo
from test_learning import magenta

from cened.config import Settings
from cened.errors import ExitCode, MissingExtra

SCRIPT = Path(__file__).with_name("without_tensorflow.py")


def _without_tensorflow(config: Path, work: Path, *steps: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(config), str(work), *steps],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def work(settings: Settings, other_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    for cls in CLASSES:
        write_photo(tmp_path / "photos" / f"{cls}.jpg", cls, seed=5)
    for i in range(21):
        magenta(tmp_path / "magenta" / f"m{i}.jpg", i)
    config = write_config(tmp_path / "cened.toml", settings, model=other_model_dir)
    return config, tmp_path


@pytest.mark.slow
def test_the_daemon_classify_learn_and_review_never_import_tensorflow(work: tuple[Path, Path]) -> None:
    result = _without_tensorflow(*work, "classify", "apply", "learn", "daemon", "review")
    for step, run in result["steps"].items():
        assert run["code"] == 0, (step, run["err"][-2000:])
    assert "would move" in result["steps"]["classify"]["out"]
    assert result["loaded"] == []


def test_train_and_evaluate_say_how_to_get_tensorflow(work: tuple[Path, Path]) -> None:
    result = _without_tensorflow(*work, "train", "evaluate")
    for step in ("train", "evaluate"):
        run = result["steps"][step]
        assert run["code"] == ExitCode.REFUSED, run
        assert f"cened {step} needs tensorflow, which comes with cened's [train] extra" in run["err"]
        assert "pip install '.[train]'" in run["err"] and "tensorflow-cpu==" in run["err"]
    assert result["loaded"] == []


@pytest.mark.slow
def test_bench_runs_without_tensorflow_and_leaves_out_only_the_keras_figure(
    work: tuple[Path, Path],
) -> None:
    result = _without_tensorflow(*work, "bench")
    run = result["steps"]["bench"]
    assert run["code"] == 0, run["err"][-2000:]
    report = json.loads(run["out"])
    assert all(n["ips"] is None and "[train] extra" in n["note"] for n in report["naive"].values())
    assert report["raw"]["limit_ips"] > 0 and "keras" not in report["raw"]["by_backend"]
    assert result["loaded"] == []


def test_the_hint_names_the_pinned_requirement_of_the_extra() -> None:
    assert MissingExtra("cened train").requirement().startswith("tensorflow-cpu==")

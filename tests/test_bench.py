"""``cened bench --quick``: every figure is there, positive, and the ratios follow from them.

Timings are machine- and load-dependent, so nothing here asserts a speed;
this only proves the benchmark runs the real daemon end to end and reports
consistently.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cened.config import Settings


def _run_quick(model_dir: Path, cache: Path) -> dict:
    """``cened bench --quick --json`` as a user runs it: a fresh process, whose stdout is one JSON object.

    A fresh process matters: the model runtimes print to stderr once per process,
    and none of that (nor any log line) may end up in the report.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CENED_", "TF_CPP"))}
    command = ["bench", "--quick", "--json", "--model", str(model_dir), "--cache", str(cache)]
    done = subprocess.run(
        [sys.executable, "-m", "cened", *command], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_quick_bench_reports_every_figure(model_dir: Path, tmp_path: Path) -> None:
    result = _run_quick(model_dir, tmp_path / "cache")

    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"]
    assert "ai-edge-litert" in machine["versions"] or "tensorflow-cpu" in machine["versions"]

    raw = result["raw"]
    assert result["model"]["backend"] == "tflite"  # "auto" picks model.tflite
    # The daemon runs two model copies wherever there are two cores, so the limit
    # is measured both ways and is the better of the two.
    litert = ["tflite", "tflite×2"] if (os.cpu_count() or 1) >= 2 else ["tflite"]
    assert set(raw["by_backend"]) == {*litert, "keras"}
    for rates in raw["by_backend"].values():
        assert set(rates) == {"1", "4"} and all(r > 0 for r in rates.values())
    assert raw["backend"] in litert
    best = raw["by_backend"][raw["backend"]][str(raw["best_batch"])]
    assert raw["limit_ips"] == best == max(r for b in litert for r in raw["by_backend"][b].values())

    sets = list(result["sets"])
    large = sets[1]
    assert sets == [
        "150px",
        large,
        f"{large}-no-preview",
        f"{large}-camera-mpf",
        f"{large}-heic",
        f"{large}-heic-small-thumbnail",
        f"{large}-heic-no-thumbnail",
    ]
    for name in sets:
        e2e_set = result["e2e"][name]
        assert e2e_set["ips"] > 0 and len(e2e_set["runs"]) == 1 and e2e_set["first_filed_s"] > 0
        assert result["naive"][name]["ips"] > 0
        assert all(v >= 0 for v in result["stages_ms"][name].values())
    lookup = result["near_duplicate_lookup_ms"]
    assert list(lookup) == ["1000"] and lookup["1000"] > 0

    latency = result["latency"]
    assert latency["drops"] == 3 and 0 < latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]
    assert 0 < result["memory"]["peak_rss_mib"] < 64 * 1024
    assert result["startup"]["cold_start_s"] > 0

    e2e = {k: v["ips"] for k, v in result["e2e"].items()}
    ratios = result["ratios"]
    assert math.isclose(ratios["e2e_150px_vs_limit"], e2e["150px"] / raw["limit_ips"], abs_tol=1e-3)
    assert math.isclose(
        ratios["e2e_150px_vs_naive"], e2e["150px"] / result["naive"]["150px"]["ips"], abs_tol=1e-3
    )
    assert math.isclose(ratios["e2e_12mp_vs_150px"], e2e[sets[1]] / e2e["150px"], abs_tol=1e-3)
    for heic, ratio in (
        ("heic", "e2e_12mp_heic_vs_150px"),
        ("heic-no-thumbnail", "e2e_12mp_heic_no_thumbnail_vs_150px"),
        ("camera-mpf", "e2e_12mp_camera_mpf_vs_150px"),
        ("heic-small-thumbnail", "e2e_12mp_heic_small_thumbnail_vs_150px"),
    ):
        assert math.isclose(ratios[ratio], e2e[f"{large}-{heic}"] / e2e["150px"], abs_tol=1e-3)
    # CPU accounting: the model alone in this process, the daemon from /proc (Linux), whose
    # clock ticks (10 ms) can round a dozen photos of a tiny model down to nothing.
    assert raw["cpu_ms_per_image"] > 0
    daemon_cpu = result["e2e"]["150px"]["cpu_ms_per_photo"]
    stages = result["stages_ms"]["150px"]
    floor = raw["cpu_ms_per_image"] + stages["read"] + stages["sha256"] + stages["decode"]
    if Path("/proc/self/stat").exists():
        assert daemon_cpu is not None and daemon_cpu >= 0
    if daemon_cpu:
        share = raw["cpu_ms_per_image"] / daemon_cpu
        assert math.isclose(ratios["model_cpu_share_150px"], share, abs_tol=1e-3)
        assert math.isclose(ratios["e2e_cpu_vs_floor_150px"], daemon_cpu / floor, abs_tol=1e-3)
    # The daemon's prepare does the floor's three steps and more, on the same idle thread.
    assert stages["prepare"] > stages["decode"]
    idle = (raw["cpu_ms_per_image"] + stages["prepare"]) / floor
    assert math.isclose(ratios["idle_prepare_vs_floor_150px"], idle, abs_tol=1e-3)
    for name in sets:
        e2e_set = result["e2e"][name]
        assert e2e_set["spread"] == 0 and len(e2e_set["cores_busy_runs"]) == 1
        assert len(e2e_set["threads_ms_per_photo_runs"]) == 1
        if e2e_set["cpu_ms_per_photo"]:  # cores busy = CPU per photo x photos per second
            busy = e2e_set["cpu_ms_per_photo"] * e2e_set["ips"] / 1000
            assert math.isclose(e2e_set["cores_busy"], busy, rel_tol=0.02, abs_tol=2e-3), name
    assert result["warnings"] == []  # one run has no spread to warn of
    if Path("/proc/self/task").is_dir():  # CPU by thread, as the daemon names them
        assert {"score", "decode", "filer", "collect", "main"} <= set(
            result["e2e"]["150px"]["threads_ms_per_photo"]
        )
    for name, target in result["targets"].items():
        goal = float(target["target"].split()[1])
        value = target["value"]
        if value is None:  # a ratio of a CPU figure that clock ticks rounded down to nothing
            assert not target["met"], name
            continue
        assert target["met"] == (value >= goal if target["target"].startswith(">=") else value <= goal), name


def test_runs_that_disagree_by_more_than_a_tenth_are_warned_of() -> None:
    from cened.bench.e2e import spread, spread_warnings

    agree, disagree = [300.0, 310.0, 305.0, 298.0, 302.0], [307.0, 275.0, 496.0, 300.0, 310.0]
    assert spread(agree) == round(12 / 302, 3)
    assert spread(disagree) == round(221 / 307, 3)
    e2e = {name: {"runs": runs, "spread": spread(runs)} for name, runs in (("a", agree), ("b", disagree))}
    (warning,) = spread_warnings(e2e)
    assert warning.startswith("b: runs differ by 72% (307, 275, 496, 300, 310 images/s)")


def test_cached_photos_are_reused_and_realistic(tmp_path: Path) -> None:
    from PIL import Image

    from cened.bench.photos import image_set

    first = image_set(tmp_path, (400, 300), 2)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = image_set(tmp_path, (400, 300), 2)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    with Image.open(first[0]) as im:
        assert im.format == "JPEG" and im.size == (400, 300)
    # Noise and texture, not flat colour: about 3 bits per pixel at quality 90.
    assert first[0].stat().st_size > 400 * 300 * 0.2


def test_large_photos_carry_a_phone_like_preview_unless_asked_not_to(tmp_path: Path) -> None:
    import numpy as np
    from PIL import ExifTags, Image

    from cened.bench.photos import image_set
    from cened.ml.imaging import decode

    (with_preview,) = image_set(tmp_path, (1600, 1200), 1, (320, 240))
    (without,) = image_set(tmp_path, (1600, 1200), 1)
    assert with_preview.parent != without.parent
    with Image.open(with_preview) as im:
        ifd1 = im.getexif().get_ifd(ExifTags.IFD.IFD1)
        assert ifd1[ExifTags.Base.JpegIFByteCount] > 1000
    with Image.open(without) as im:
        assert not im.getexif().get_ifd(ExifTags.IFD.IFD1)
    # The same scene either way: the preview is the photo, made small.
    data = with_preview.read_bytes()
    full = decode(data, (64, 64)).astype(int)
    preview = decode(data, (64, 64), thumbnail_min_side=240).astype(int)
    assert (full != preview).any() and np.abs(full - preview).mean() < 12


def test_heic_photos_are_made_with_and_without_their_thumbnail(tmp_path: Path) -> None:
    from PIL import Image

    from cened.bench.photos import PREVIEW, image_set
    from cened.ml.imaging import FROM_HEIF_THUMBNAIL, FROM_PHOTO, decode_with_source

    (with_thumbnail,) = image_set(tmp_path, (1200, 900), 1, PREVIEW, heic=True)
    (without,) = image_set(tmp_path, (1200, 900), 1, heic=True)
    assert with_thumbnail.suffix == without.suffix == ".heic" and with_thumbnail.parent != without.parent
    for path, thumbnails, source in ((with_thumbnail, 1, FROM_HEIF_THUMBNAIL), (without, 0, FROM_PHOTO)):
        with Image.open(path) as im:
            assert im.format == "HEIF" and im.size == (1200, 900)
            assert len(im.info["thumbnails"]) == thumbnails
        assert decode_with_source(path.read_bytes(), (64, 64), thumbnail_min_side=240)[1] == source


@pytest.mark.slow
def test_quick_compare_times_each_setting_in_paired_rounds(model_dir: Path, tmp_path: Path) -> None:
    """``--compare``: the baseline and each variant run once per round; ratios are paired per round."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CENED_", "TF_CPP"))}
    command = [
        *("bench", "--quick", "--json", "--model", str(model_dir), "--cache", str(tmp_path / "cache")),
        *("--repeats", "2", "--compare", "decode_threads=1,model_batch_size=4"),
        *("--compare", "model_workers=1"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "cened", *command], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["rounds"] == 2 and result["photos_per_burst"] == 12
    rows = result["results"]
    variants = [{"decode_threads": 1, "model_batch_size": 4}, {"model_workers": 1}]
    assert [r["settings"] for r in rows] == [{}, *variants]
    assert rows[0]["vs_baseline"] == 1.0
    for row in rows:
        assert len(row["runs"]) == 2 and all(r > 0 for r in row["runs"])
        assert math.isclose(row["ips"], statistics.median(row["runs"]), abs_tol=0.11)
    paired = statistics.median(a / b for a, b in zip(rows[2]["runs"], rows[0]["runs"], strict=True))
    assert math.isclose(rows[2]["vs_baseline"], paired, abs_tol=2e-3)


def test_compare_refuses_a_key_that_is_not_a_setting() -> None:
    from cened.bench.compare import parse_variant

    assert parse_variant("model_workers=1, backend=tflite") == {"model_workers": 1, "backend": "tflite"}
    try:
        parse_variant("model_wrokers=1")
    except SystemExit as exc:
        assert "model_wrokers" in str(exc)
    else:
        raise AssertionError("a misspelt key must be refused, not silently ignored")


def test_quick_against_times_both_models_in_paired_rounds(
    model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    """``--against``: the detector model and the tiny model without it, each timed through ``score``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CENED_", "TF_CPP"))}
    command = [
        *("bench", "--quick", "--json", "--model", str(other_model_dir), "--cache", str(tmp_path / "cache")),
        *("--repeats", "2", "--against", str(model_dir)),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "cened", *command], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    this, that = result["model"], result["against"]
    assert (this["path"], that["path"]) == (str(other_model_dir), str(model_dir))
    assert this["novelty"] and not that["novelty"]
    call = result["settings"]["model_batch_size"]
    assert result["plan"]["batch_sizes"] == sorted({1, 4, call}) and result["plan"]["rounds"] == 2
    for entry in (this, that):
        assert entry["call"]["batch"] == call and entry["call"]["ips"] == entry["ips_by_batch"][str(call)]
        assert entry["best"]["ips"] == max(entry["ips_by_batch"].values()) > 0
        assert all(ms > 0 for ms in entry["cpu_ms_by_batch"].values())
    assert len(result["cpu_ratio_runs"]) == 2 and all(r > 0 for r in result["cpu_ratio_runs"])
    assert math.isclose(result["cpu_ratio"], statistics.median(result["cpu_ratio_runs"]), abs_tol=2e-3)


@pytest.mark.slow
def test_against_the_shipped_model_times_yours_with_its_learned_version(
    settings: Settings, other_model_dir: Path, tmp_path: Path
) -> None:
    """What learning costs: your model as the daemon runs it (with its learned version) against itself."""
    import numpy as np
    from conftest import write_config
    from PIL import Image

    from cened import learn
    from cened.ml.versions import VersionStore

    taught = settings.model_copy(update={"model": other_model_dir})
    rng = np.random.default_rng(0)
    for i in range(20):
        pixels = np.clip(np.array((220, 40, 200)) + rng.normal(0, 12, (48, 64, 3)), 0, 255).astype(np.uint8)
        (tmp_path / "examples").mkdir(exist_ok=True)
        Image.fromarray(pixels, "RGB").save(tmp_path / "examples" / f"m{i}.jpg")
    learn.add_album(taught, "magenta", tmp_path / "examples")
    assert learn.learn(taught).accepted
    version = VersionStore(taught.learned_dir).active()
    config = write_config(tmp_path / "cened.toml", taught)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CENED_", "TF_CPP"))}
    command = ["--config", str(config), "bench", "--quick", "--json", "--cache", str(tmp_path / "cache")]
    command += ["--repeats", "2", "--against", str(other_model_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "cened", *command], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["model"]["version"] == version and result["against"]["version"] != version
    assert result["cpu_ratio"] > 0


@pytest.mark.slow
def test_a_running_daemon_names_its_threads_for_the_system(tmp_path: Path, settings: Settings) -> None:
    """`top -H` and the benchmark's CPU by thread see the daemon's threads by what they do."""
    from conftest import write_config
    from daemon_helpers import wait_until

    from cened.bench.process import DaemonProcess

    if not Path("/proc/self/task").is_dir():
        pytest.skip("thread names are read from /proc (Linux)")
    named = {"main", "pump", "collect", "filer", "library", "learner"}
    daemon = DaemonProcess(write_config(tmp_path / "cened.toml", settings))
    try:
        daemon.wait_started()  # logged just before the threads start and are named
        assert wait_until(lambda: named <= set(daemon.thread_cpu()), timeout=30), daemon.thread_cpu()
    finally:
        daemon.stop(30, or_kill=True)

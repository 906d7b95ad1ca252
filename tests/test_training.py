"""Split, augmentation, metrics, and a tiny end-to-end train + evaluate run.

The end-to-end run uses random initial weights (``--weights none``) on a dozen
Pillow-made images, so it needs neither torch nor the dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from conftest import noisy_colours
from PIL import Image

from cened.commands import evaluate as evaluate_command
from cened.commands import train as train_command
from cened.ml import modelpack
from cened.training import dataset, evaluate, train

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "intel" / "train"


def test_split_is_stratified_disjoint_and_deterministic() -> None:
    labels = np.repeat(np.arange(3), [100, 40, 7])
    tr, va = dataset.split_indices(labels, 0.15, seed=7)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [15, 6, 1]
    tr2, va2 = dataset.split_indices(labels, 0.15, seed=7)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = dataset.split_indices(labels, 0.15, seed=8)
    assert not np.array_equal(va, va3)


def test_listing_is_sorted_and_pins_class_order(tmp_path: Path) -> None:
    for c in ("b", "a"):
        (tmp_path / c).mkdir()
        for name in ("2.jpg", "10.jpg", "notes.txt"):
            (tmp_path / c / name).write_bytes(b"x")
    listing = dataset.list_images(tmp_path)
    assert listing.classes == ("a", "b")
    assert [p.name for p in listing.paths] == ["10.jpg", "2.jpg", "10.jpg", "2.jpg"]
    assert dataset.list_images(tmp_path, ["b", "a", "c"]).labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not model classes"):
        dataset.list_images(tmp_path, ["a"])


def test_views_are_deterministic_and_keep_shape() -> None:
    px = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert np.array_equal(train.make_view(px, 1, train.view_rng(1, 0, 1)), px[:, ::-1])
    a = train.make_view(px, 2, train.view_rng(1, 5, 2))
    b = train.make_view(px, 2, train.view_rng(1, 5, 2))
    assert a.shape == px.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, train.make_view(px, 2, train.view_rng(1, 6, 2)))


def test_confusion_matrix_and_f1_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    cm = evaluate.confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pc = evaluate.per_class(cm)
    np.testing.assert_allclose(pc["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(pc["recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(pc["f1"], [0.8, 0.5, 2 / 3])
    assert evaluate.per_class(np.array([[1, 0], [1, 0]]))["f1"].tolist() == [2 / 3, 0.0]


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin 0.9: confidence 0.9, accuracy 0.5; bin 0.6: confidence 0.6, accuracy 1.0
    assert evaluate.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert evaluate.expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_threshold_table() -> None:
    probs = np.array([[0.95, 0.05], [0.7, 0.3], [0.55, 0.45], [0.2, 0.8]])
    rows = evaluate.threshold_table(probs, np.array([0, 1, 0, 1]), (0.5, 0.75))
    assert rows[0] == {"threshold": 0.5, "review_share": 0.0, "filed": 4, "filed_accuracy": 0.75}
    assert rows[1]["review_share"] == 0.5 and rows[1]["filed_accuracy"] == 1.0


def test_temperature_fit_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 4))
    true_t = 2.5
    p = evaluate.softmax(logits, true_t)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert evaluate.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


@pytest.mark.slow
def test_tiny_training_run_writes_a_loadable_model_and_evaluates(tmp_path: Path) -> None:
    import keras

    data = noisy_colours(tmp_path / "data", per_class=7)
    out = tmp_path / "models" / "tiny"
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--weights",
            "none",
            "--input-size",
            "32",
            "--views",
            "2",
            "--head-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--full-epochs",
            "1",
            "--batch-size",
            "8",
            "--val-fraction",
            "0.3",
            "--no-tflite",
        ]
    )
    assert train_command.run(args) == 0
    meta = modelpack.read_meta(out)
    assert meta.classes == ("blue", "green", "red") and meta.input_size == (32, 32)
    assert meta.training["val_fraction"] == 0.3 and len(meta.training["data_sha256"]) == 64
    assert meta.version.startswith("tiny-") and meta.temperature > 0
    weights, _, detector = meta.version.partition("+other-")
    assert weights.endswith(train.weights_digest(keras.models.load_model(out / modelpack.KERAS_FILE))[:8])
    # The last phase fitted the other detector: its prototypes are part of the pack and of the version.
    assert len(detector) == 8 and modelpack.NOVELTY_FILE in meta.files
    assert meta.novelty["k"] == 1 and 0 < meta.novelty["validation_other_share"] < 0.2
    with zipfile.ZipFile(out / modelpack.KERAS_FILE) as saved:  # the weights, not the optimizer's state
        assert b"optimizer" not in saved.read("model.weights.h5")
    log = json.loads((out / "training_log.json").read_text())
    assert len(log["full_history"]["loss"]) == 1 and "full_s" in log["timings_s"]
    model = keras.models.load_model(out / modelpack.KERAS_FILE, compile=False)
    assert model.output_shape == (None, 3)

    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    # --previous: the model a new one replaces, on the same photos (here itself: the same figure).
    args = ["--data", str(data), "--model", str(out), "--previous", str(out)]
    assert evaluate_command.run(parser.parse_args(args)) == 0
    card = (out / "MODEL_CARD.md").read_text()
    previous = json.loads((out / "evaluation.json").read_text())["previous"]
    assert previous["accuracy"] == previous["this"] and f"`{meta.version}` (32 px" in card
    assert previous["unseen_only"] and previous["photos"] == meta.training["num_val"]
    assert f"the {meta.training['num_val']} validation photos that neither model trained on" in card
    assert "Accuracy" in card and "review threshold" in card and "## Other" in card
    assert "whole network (batch-norm frozen) for 1 epoch on photos" in card
    assert "Keras through EXIF-style previews" in card and "240 / 160 / 120 px" in card
    previews = json.loads((out / "evaluation.json").read_text())["previews"]
    assert list(previews["accuracy"]) == ["240", "160", "120"]
    assert all(0 <= a <= 1 for a in previews["accuracy"].values())
    assert Image.open(out / "confusion_matrix.png").size[0] > 100
    # Over every photo, the previous model is still measured only on those it never trained on.
    report_dir = tmp_path / "all"
    args = ["--data", str(data), "--model", str(out), "--previous", str(out), "--split", "all"]
    assert evaluate_command.run(parser.parse_args([*args, "--report-dir", str(report_dir)])) == 0
    previous = json.loads((report_dir / "evaluation.json").read_text())["previous"]
    assert previous["photos"] == meta.training["num_val"] < meta.training["num_images"]


def test_bad_arguments_data_and_models_end_with_their_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cened.cli import main
    from cened.errors import ExitCode

    missing, out = tmp_path / "nowhere", tmp_path / "models" / "m"
    assert main(["train", "--data", str(missing), "--out", str(out), "--views", "0"]) == ExitCode.CONFIG
    assert "--views must be >= 1" in capsys.readouterr().err
    assert main(["train", "--data", str(missing), "--out", str(out), "--weights", "none"]) == ExitCode.CONFIG
    assert f"data directory {missing} does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(missing), "--model", str(missing)]) == ExitCode.MODEL
    assert "model problem" in capsys.readouterr().err
    model = evaluate.DEFAULT_MODEL
    assert main(["evaluate", "--data", str(missing), "--model", str(model)]) == ExitCode.CONFIG
    assert f"data directory {missing} does not exist" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.data
def test_real_dataset_split_sizes() -> None:
    if not DATA.is_dir():
        pytest.skip(f"training data not present at {DATA}")
    listing = dataset.list_images(DATA)
    _, va = dataset.split_indices(listing.labels, 0.15, train.TrainConfig().seed)
    assert len(listing.paths) == 8741 and len(va) == 1311


def test_whole_network_batches_are_reproducible_and_new_each_epoch() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (10, 24, 24, 3), dtype=np.uint8)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)]
    first, again = (train._augmented_batches(pixels, y, np.arange(10), 4, seed=5) for _ in range(2))
    assert len(first) == 3 and first[2][0].shape == (2, 24, 24, 3)
    x0, y0 = first[0]
    np.testing.assert_array_equal(x0, again[0][0])
    np.testing.assert_array_equal(y0, y[first.order[:4]])
    assert not np.array_equal(x0, pixels[first.order[:4]].astype(np.float32))  # augmented, not the photos
    first.on_epoch_end()
    assert not np.array_equal(first[0][0], x0)
    assert sum(len(first[i][1]) for i in range(len(first))) == 10


def test_each_epoch_sees_every_image_once_through_some_view() -> None:
    rows = train.epoch_order(50, 4, seed=3, epoch=0)
    assert sorted(rows % 50) == list(range(50)) and rows.max() < 200
    assert not np.array_equal(rows, train.epoch_order(50, 4, seed=3, epoch=1))
    assert np.array_equal(rows, train.epoch_order(50, 4, seed=3, epoch=0))


def test_a_preview_keeps_the_upright_shape_at_the_asked_short_side() -> None:
    import io

    from cened.bench.photos import exif_with_preview

    # 60x40 stored sideways (EXIF orientation 6): a person sees it 40 wide, 60 tall.
    photo = io.BytesIO()
    Image.new("RGB", (60, 40), (200, 30, 30)).save(photo, "JPEG", exif=exif_with_preview(b"", orientation=6))
    preview = evaluate.as_preview(photo.getvalue(), 20)
    with Image.open(io.BytesIO(preview)) as im:
        assert im.format == "JPEG" and im.size == (20, 30)
        assert abs(int(np.asarray(im)[..., 0].mean()) - 200) < 10


def test_crossfit_ece_is_small_for_a_calibratable_model() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 3))
    labels = np.array([rng.choice(3, p=row) for row in evaluate.softmax(logits, 2.0)])
    assert evaluate.crossfit_ece(logits, labels) < 0.03
    assert evaluate.expected_calibration_error(evaluate.softmax(logits), labels) > 0.05


def test_an_int8_export_classifies_like_keras(model_dir: Path, tmp_path: Path) -> None:
    """Full int8 with float input and output, calibrated on training photos: same top-1 as Keras."""
    import keras
    from conftest import CLASSES, INPUT, picture

    from cened.ml._tflite import Interpreter
    from cened.ml.classifying import keras_function, tflite_function

    model = keras.models.load_model(model_dir / modelpack.KERAS_FILE, compile=False)
    photos = np.stack(
        [np.asarray(picture(c, INPUT, seed=s + 1000 * i)) for i, c in enumerate(CLASSES) for s in range(5)]
    )
    (tmp_path / "int8.tflite").write_bytes(modelpack.export_tflite(model, int8=photos[::2]))
    kinds = {d["dtype"] for d in Interpreter(model_path=str(tmp_path / "int8.tflite")).get_tensor_details()}
    assert np.int8 in kinds and np.float32 in kinds  # int8 inside, float at the edges
    fresh = np.stack(
        [
            np.asarray(picture(c, INPUT, seed=500 + s + 1000 * i))
            for i, c in enumerate(CLASSES)
            for s in range(5)
        ]
    )
    lite = tflite_function(tmp_path / "int8.tflite", INPUT)(list(fresh))
    exact = keras_function(model, INPUT)(list(fresh))
    assert (lite.argmax(1) == exact.argmax(1)).mean() >= 0.95


def test_an_int8_export_keeps_its_noisiest_layers_float(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers whose int8 error is over the limit stay float: with no limit none, with a low one more."""
    import keras
    from conftest import CLASSES, INPUT, picture

    from cened.ml._tflite import Interpreter

    model = keras.models.load_model(model_dir / modelpack.KERAS_FILE, compile=False)
    photos = np.stack([np.asarray(picture(c, INPUT, seed=s)) for c in CLASSES for s in range(3)])

    def float_tensors(data: bytes) -> int:
        details = Interpreter(model_content=data).get_tensor_details()
        return sum(d["dtype"] == np.float32 for d in details)

    errors = modelpack.int8_errors(model, photos)
    worst = max(errors.values())
    assert len(errors) >= 2 and all(e > 0 for e in errors.values())
    monkeypatch.setattr(modelpack, "INT8_MAX_ERROR", math.inf)
    plain, none_kept = modelpack.export_int8(model, photos)
    monkeypatch.setattr(modelpack, "INT8_MAX_ERROR", worst * 0.999)  # the worst layer alone
    careful, kept = modelpack.export_int8(model, photos)
    assert none_kept == () and kept == tuple(name for name, e in errors.items() if e == worst)
    assert float_tensors(careful) > float_tensors(plain)

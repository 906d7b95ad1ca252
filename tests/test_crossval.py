"""Cross-validation: near-duplicate groups, grouped folds, and `cened evaluate --folds` on a tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import noisy_colours
from PIL import Image, ImageDraw

from cened.commands import evaluate as evaluate_command
from cened.commands import train as train_command
from cened.training import groups


def _scene(seed: int, size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A picture with corners and edges for keypoints, different for every seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        w, h = int(rng.integers(8, 50)), int(rng.integers(8, 50))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
    return image


def test_near_duplicates_are_grouped_and_distinct_photos_are_not(tmp_path: Path) -> None:
    paths = []
    for seed in range(8):
        path = tmp_path / f"{seed}.jpg"
        _scene(seed).save(path, quality=90)
        paths.append(path)
    original = _scene(3)
    edits = {
        "crop": original.crop((12, 9, 240, 180)),  # 5% off two sides
        "small": original.resize((120, 90)),  # half the size
        "q40": original,  # re-encoded below at quality 40
    }
    for name, image in edits.items():
        path = tmp_path / f"3-{name}.jpg"
        image.save(path, quality=40 if name == "q40" else 85)
        paths.append(path)
    found, links = groups.near_duplicate_groups(paths)
    assert len(set(found[[3, 8, 9, 10]])) == 1, "each edit is in the original's group"
    assert len(set(found[:8])) == 8, "distinct pictures are never grouped"
    assert links >= 3


def test_grouped_folds_keep_groups_together_and_stratify() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 60)
    near = np.arange(180)
    for _ in range(20):  # pairs and triples of one class share a group
        i = int(rng.integers(0, 178))
        near[i + 1] = near[i]
    folds = groups.grouped_folds(labels, near, 5, seed=7)
    for g in np.unique(near):
        assert len(set(folds[near == g])) == 1
    counts = np.array([np.bincount(labels[folds == f], minlength=3) for f in range(5)])
    assert counts.min() >= 10 and counts.max() <= 14  # 12 of each class per fold, give or take a group
    train_idx, val_idx = groups.grouped_split(labels, near, 0.2, seed=7)
    assert not set(near[train_idx]) & set(near[val_idx]) and len(val_idx) == pytest.approx(36, abs=4)


@pytest.mark.slow
def test_evaluate_cross_validates_the_recipe_and_resumes(tmp_path: Path) -> None:
    data = noisy_colours(tmp_path / "data", per_class=8)
    out = tmp_path / "models" / "tiny"
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    tiny = ["--weights", "none", "--input-size", "32", "--views", "2", "--batch-size", "8"]
    epochs = ["--head-epochs", "1", "--finetune-epochs", "1", "--full-epochs", "1"]
    args = ["--data", str(data), "--out", str(out), *tiny, *epochs, "--val-fraction", "0.25", "--no-tflite"]
    assert train_command.run(parser.parse_args(args)) == 0

    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    args = ["--data", str(data), "--model", str(out), "--no-tflite", "--preview-sides", ""]
    args += ["--folds", "2", "--folds-full-epochs", "0", "--cache", str(tmp_path / "cache")]
    assert evaluate_command.run(parser.parse_args(args)) == 0
    cv = json.loads((out / "evaluation.json").read_text())["crossval"]
    assert [f["fold"] for f in cv["folds"]] == [0, 1] and sum(f["photos"] for f in cv["folds"]) == 24
    assert cv["recipe"]["full_epochs"] == 0 and 0.0 <= cv["mean"] <= 1.0
    assert cv["mean"] == pytest.approx(np.mean([f["accuracy"] for f in cv["folds"]]))
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Cross-validation (`cened evaluate --folds 2`)" in card and "all 24 photos" in card
    (saved,) = (tmp_path / "cache").iterdir()
    assert len(list(saved.glob("folds-2-*/fold-*.npz"))) == 2
    # A second run finds both folds done: the same figures, no training.
    assert evaluate_command.run(parser.parse_args(args)) == 0
    again = json.loads((out / "evaluation.json").read_text())["crossval"]
    assert again["folds"] == cv["folds"]
    # Another input size is another recipe: its own folds, beside the first.
    assert evaluate_command.run(parser.parse_args([*args, "--folds-input-size", "40"])) == 0
    bigger = json.loads((out / "evaluation.json").read_text())["crossval"]
    assert bigger["recipe"]["input_size"] == 40 and cv["recipe"]["input_size"] == 32
    assert "(Keras, 40 px; 0 epochs of the" in (out / "MODEL_CARD.md").read_text()
    assert len(list(saved.glob("folds-2-*/fold-*.npz"))) == 4

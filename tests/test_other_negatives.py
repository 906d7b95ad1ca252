"""The linear "other" detector: its score, how it meets the user's albums, and the model pack that carries it.

Fitting it with negatives and measuring it leave-one-kind-out are further
down. The test model's world (``conftest``) is six colours.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_photo
from PIL import Image

from cened import learn
from cened.config import Settings
from cened.errors import ModelError
from cened.ml import modelpack, novelty
from cened.ml.classifying import AlbumKind, Classifier, decide_all
from cened.ml.imaging import decode
from cened.pipeline import Processor, prepare


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _linear(width: int, weights: np.ndarray, bias: float, threshold: float) -> novelty.Linear:
    return novelty.Linear(
        np.zeros(width, np.float32), np.ones(width, np.float32), weights.astype(np.float32), bias, threshold
    )


def test_the_linear_score_is_a_dot_product_with_the_standardised_embedding() -> None:
    rng = np.random.default_rng(0)
    mean, scale, weights = rng.normal(size=5), rng.uniform(0.5, 2, 5), rng.normal(size=5)
    linear = novelty.Linear(mean, scale, weights, 0.3, 1.0)
    e = rng.normal(size=(7, 5))
    assert np.allclose(linear.scores(e), ((e - mean) / scale) @ weights + 0.3, atol=1e-4)


def test_with_a_linear_detector_only_the_users_albums_take_photos_in() -> None:
    """Near a shipped prototype is not enough; near an example of the user's album is."""
    axis = np.eye(4, dtype=np.float32)
    linear = _linear(4, np.array([2.0, 0, 0, 0]), 0.0, 1.0)  # other: more than half along the first axis
    detector = novelty.Detector(axis[:2], 1, 0.2, linear=linear)
    assert detector.threshold == 1.0 and detector.reach == 0.2
    photos = _unit(np.array([[1.0, 0.05, 0, 0], [0.1, 1, 0, 0], [0.9, 0, 0.1, 0], [0.6, 0, 0, 0.8]]))
    assert list(detector.scores(photos) > detector.threshold) == [True, False, True, True]
    # A user's album of photos along the first axis, the third one its example.
    album = detector.extended(_unit(np.array([[0.9, 0, 0.1, 0]])), np.zeros(1, np.float32))
    assert album.learned == 1 and album.threshold == 1.0
    novel = album.scores(photos) > album.threshold
    assert list(novel) == [False, False, False, True]  # the last one is beyond the album's reach
    assert np.allclose(album.scores(photos)[[1, 3]], detector.scores(photos)[[1, 3]])
    # Without a linear detector, distance decides, as it always did.
    plain = novelty.Detector(axis[:2], 1, 0.2)
    assert plain.threshold == 0.2 and np.allclose(plain.scores(photos), plain.distances(photos))


def _with_linear(pack: Path, linear: novelty.Linear) -> modelpack.ModelMeta:
    """The model pack at ``pack`` with ``linear`` as its linear detector, as fit_novelty stores one."""
    linear.save(pack)
    meta = modelpack.read_meta(pack)
    info = {**meta.novelty, "linear": {"file": modelpack.OTHER_FILE, "threshold": linear.threshold}}
    return modelpack.write_meta(pack, dataclasses.replace(meta, novelty=info))


def test_a_pack_carries_its_linear_detector_and_one_without_decides_as_before(
    other_model_dir: Path, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(other_model_dir, pack)
    before = Classifier(pack)
    assert before.detector is not None and before.detector.linear is None
    pixels = [decode(write_photo(tmp_path / f"{c}.jpg", c, seed=3).read_bytes(), (32, 32)) for c in CLASSES]
    distances = before.score(pixels).novelty

    rng = np.random.default_rng(1)
    linear = _linear(8, rng.normal(size=8), -0.5, 0.25)
    meta = _with_linear(pack, linear)
    assert modelpack.OTHER_FILE in meta.files  # hashed like every file of the pack
    after = Classifier(pack)
    assert after.detector is not None and after.detector.linear is not None
    scores = after.score(pixels)
    assert scores.novelty_threshold == 0.25
    embeddings = after.outputs(pixels)[:, len(CLASSES) :]
    assert np.allclose(scores.novelty, linear.scores(embeddings), atol=1e-5)
    assert not np.allclose(scores.novelty, distances)

    np.savez(pack / modelpack.OTHER_FILE, mean=np.zeros(8))  # changed behind the metadata's back
    with pytest.raises(ModelError, match="does not match the sha256"):
        Classifier(pack)
    (pack / modelpack.OTHER_FILE).unlink()
    modelpack.write_meta(pack, meta)  # the metadata still names a linear detector
    with pytest.raises(ModelError, match="cannot be read"):
        Classifier(pack)
    _with_linear(pack, _linear(5, np.ones(5), 0.0, 0.0))
    with pytest.raises(ModelError, match="does not fit"):
        Classifier(pack)


def _magenta(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array((220, 40, 200), float) + rng.normal(0, 12, (48, 64, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, quality=92)
    return path


def test_a_learned_album_keeps_its_photos_out_of_other_under_a_linear_detector(
    settings: Settings, other_model_dir: Path, tmp_path: Path
) -> None:
    """A linear detector that calls every photo novel: only the album's own photos escape it."""
    pack = tmp_path / "pack"
    shutil.copytree(other_model_dir, pack)
    _with_linear(pack, _linear(8, np.zeros(8), 1.0, 0.0))
    taught = settings.model_copy(update={"model": pack})
    examples = [_magenta(tmp_path / "examples" / f"m{i}.jpg", i) for i in range(25)]
    fresh = [_magenta(tmp_path / "new" / f"new{i}.jpg", 500 + i) for i in range(3)]
    sea = write_photo(tmp_path / "new" / "sea.jpg", "sea", seed=77)

    def albums(*paths: Path) -> list[str]:
        classifier = Classifier.from_settings(taught)
        processor = Processor(classifier, None, lambda: taught, simulate=True)
        outcomes = processor.process([prepare(p, taught, classifier.meta.input_size) for p in paths])
        return [o.entry.album for o in outcomes]

    assert albums(*fresh, sea) == ["other"] * 4
    assert learn.add_album(taught, "magenta", examples[0].parent) == 25
    assert learn.learn(taught, force=True).classes[-1] == "magenta"
    assert albums(*fresh, sea) == ["magenta"] * 3 + ["other"]
    classifier = Classifier.from_settings(taught)
    scores = classifier.score([decode(p.read_bytes(), (32, 32)) for p in fresh])
    assert (scores.novelty <= scores.novelty_threshold).all() and scores.novelty_threshold == 0.0
    kinds = {d.kind for d in decide_all(scores, threshold=0.6, albums={}, review_album="review")}
    assert kinds == {AlbumKind.FILE}

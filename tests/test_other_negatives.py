"""The linear "other" detector: its score, how it meets the user's albums, and the model pack that carries it.

Fitting it with negatives and measuring it leave-one-kind-out are further
down. The test model's world (``conftest``) is six colours.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_photo
from PIL import Image

from cened import learn
from cened.config import Settings
from cened.errors import ConfigError, ModelError
from cened.ml import modelpack, novelty
from cened.ml.classifying import AlbumKind, Classifier, decide_all
from cened.ml.imaging import decode
from cened.pipeline import Processor, prepare
from cened.training import other


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


# ----------------------------------------------------------------------------- fitting with negatives


def _world(rng: np.random.Generator, centre: np.ndarray, n: int, classes: int = 6) -> other.Measured:
    """``n`` photos around ``centre`` whose logits are sure of some class, as a fine-tuned network is."""
    embeddings = centre + rng.normal(0, 1, (n, len(centre)))
    logits = 6.0 * np.eye(classes)[rng.integers(0, classes, n)] + rng.normal(0, 0.3, (n, classes))
    return other.Measured(logits.astype(np.float32), embeddings.astype(np.float32))


@pytest.mark.slow
def test_leave_one_kind_out_refits_without_each_kind_and_finds_the_worst() -> None:
    """Kinds that leave the classes as others do are caught unseen; one that looks like a class is not."""
    rng = np.random.default_rng(0)
    d, axis = 14, np.eye(14)
    labels = np.repeat(np.arange(6), 40)
    train = np.concatenate([3 * axis[c] + rng.normal(0, 1, (50, d)) for c in range(6)])
    val_logits = 6.0 * np.eye(6)[labels] + rng.normal(0, 0.3, (len(labels), 6))
    val_logits[:12] = 6.0 * np.eye(6)[(labels[:12] + 1) % 6]  # 5% wrong, all sure of themselves
    val_embeddings = 3 * axis[labels] + rng.normal(0, 1, (len(labels), d))
    validation = other.Measured(val_logits.astype(np.float32), val_embeddings.astype(np.float32))
    # Three kinds off the classes along axis 6 (each also its own way), one that looks like class 0.
    centres = {"pets": 6 * axis[6] + 3 * axis[7], "pages": 6 * axis[6] + 3 * axis[8], "rooms": 6 * axis[6]}
    centres["walls"] = 3 * axis[0] + 3 * axis[9]
    degraded = {k: _world(rng, c, 60) for k, c in centres.items()}
    as_is = {k: _world(rng, c, 60) for k, c in centres.items()}
    crops = (6 * axis[6] + rng.normal(0, 1, (80, d))).astype(np.float32)
    unseen = {"made: noise": _world(rng, 6 * axis[6] + 3 * axis[10], 30)}
    cfg = novelty.NoveltyConfig(rejection_rate=0.05, crops=len(crops), linear_views=1, c=0.1)
    said: list[str] = []
    result = other.leave_one_kind_out(
        train.astype(np.float32),
        validation,
        labels,
        degraded,
        as_is,
        crops,
        cfg,
        temperature=1.0,
        classes=CLASSES,
        confidence=0.6,
        unseen=unseen,
        say=said.append,
    )
    rows = result["kinds"]
    assert list(rows) == [*centres, "made: noise"] and len(said) == len(centres) + 1
    for kind in ("pets", "pages", "rooms"):
        assert rows[kind]["as_is"]["filed"] <= 0.1 and rows[kind]["degraded"]["filed"] <= 0.1, kind
        assert rows[kind]["fitted_without_it"]
    assert rows["walls"]["as_is"]["filed"] >= 0.5  # a scene-like kind is filed: that is what this measures
    assert result["worst"]["as_is"]["kind"] == "walls" == result["worst"]["degraded"]["kind"]
    assert not rows["made: noise"]["fitted_without_it"] and "degraded" not in rows["made: noise"]
    assert rows["made: noise"]["as_is"]["filed"] <= 0.1
    pooled = sum(rows[k]["as_is"]["filed"] * 60 for k in centres) / 240
    assert result["pooled_filed"]["as_is"] == pytest.approx(pooled)
    v = result["validation"]
    assert 0 < v["to_other_mean"] <= v["to_other_max"] <= 0.15  # 5% of a half, measured on the other
    assert v["accuracy_without_detector"] == pytest.approx(0.95)
    assert set(result["fits"]) == {*centres, "(every kind)"}


def test_halves_split_each_label_in_two() -> None:
    labels = np.repeat(np.arange(3), [10, 11, 4])
    half = other.halves(labels, seed=3)
    for c, n in enumerate([10, 11, 4]):
        assert abs(int((half[labels == c] == 0).sum()) - n / 2) <= 0.5
    assert (other.halves(labels, seed=3) == half).all()


def test_negatives_are_made_like_the_training_photos(tmp_path: Path) -> None:
    photo = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 300, 3), dtype=np.uint8)).save(photo)
    with Image.open(io.BytesIO(other.degrade(photo.read_bytes(), 150, 95))) as im:
        assert (im.format, im.size) == ("JPEG", (150, 150))
    rng = np.random.default_rng(1)
    with Image.open(io.BytesIO(other.crop(photo.read_bytes(), rng, (0.06, 0.16), 150, 95))) as im:
        assert (im.format, im.size) == ("JPEG", (150, 150))
    kinds = tmp_path / "kinds"
    for kind in ("a", "b"):
        (kinds / kind / "deeper").mkdir(parents=True)
        shutil.copy(photo, kinds / kind / "deeper" / "1.png")
    (kinds / "empty").mkdir()
    assert {k: len(v) for k, v in other.list_kinds([kinds]).items()} == {"a": 1, "b": 1}
    with pytest.raises(FileNotFoundError):
        other.list_kinds([tmp_path / "nowhere"])


def _texture(path: Path, kind: str, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A photo of none of the colours: noise, stripes, a page of lines or checks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == "noise":
        pixels = rng.integers(0, 256, (size[1], size[0], 3))
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        pixels = np.where(
            (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 6.28 / period) > 0)[..., None], ink, paper
        )
    elif kind == "pages":
        pixels = np.full((size[1], size[0], 3), 245)
        for row in range(4, size[1] - 4, 5):
            pixels[row : row + 2, 4 : 4 + int(rng.integers(size[0] // 3, size[0] - 6))] = 20
    else:
        period = int(rng.integers(3, 8))
        pixels = np.where(((x // period + y // period) % 2 == 0)[..., None], ink, paper)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four kinds of photos of none of the colours, a sub-folder each, as ``--negatives`` takes them."""
    root = tmp_path_factory.mktemp("negatives")
    for k, kind in enumerate(("noise", "stripes", "pages", "checks")):
        for i in range(12):
            _texture(root / kind / f"{i:02d}.jpg", kind, 100 * k + i)
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's training photos, as ``other_model_dir`` was fitted on them."""
    data = tmp_path_factory.mktemp("colours")
    for label, cls in enumerate(CLASSES):
        for seed in range(40):
            write_photo(data / cls / f"{seed:02d}.jpg", cls, seed=seed + 1000 * label)
    return data


@pytest.fixture(scope="module")
def linear_model_dir(
    other_model_dir: Path, colours: Path, negatives: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The test model's detector refitted by ``cened train --other-only --negatives``'s own code."""
    from cened.training import train

    out = tmp_path_factory.mktemp("model") / "tiny-linear"
    shutil.copytree(other_model_dir, out)
    cfg = novelty.NoveltyConfig(layers=("pool",), prototypes=24, rejection_rate=0.02, crops=20, c=1.0)
    float16 = train.Precision.FLOAT16
    train.fit_novelty(out, colours, cfg, negatives=[negatives], precision=float16, say=lambda _: None)
    return out


@pytest.mark.slow
def test_the_detector_is_fitted_with_negatives_and_stored_with_the_model(
    linear_model_dir: Path, other_model_dir: Path, negatives: Path
) -> None:
    meta = modelpack.read_meta(linear_model_dir)
    linear = meta.novelty["linear"]
    assert modelpack.OTHER_FILE in meta.files and linear["file"] == modelpack.OTHER_FILE
    assert linear["negatives"] == {"noise": 12, "stripes": 12, "pages": 12, "checks": 12}
    assert linear["crops"] == 20 and linear["linear_views"] == 2 and linear["c"] == 1.0
    assert linear["negative_folders"] == [str(negatives)]
    assert 0 < linear["validation_other_share"] <= 0.05  # 2% of 60 photos, by construction
    # The detector is part of the version: the journal tells decisions of the two apart.
    assert meta.version.startswith("tiny-test-1+other-")
    assert meta.version != modelpack.read_meta(other_model_dir).version
    assert other.config_of(meta.novelty).crops == 20  # the recipe, for leave-one-kind-out
    # Each training photo also re-encoded as a JPEG, as camera previews are; a pack fitted
    # before that view existed is read back without it, so its leave-one-kind-out is its own.
    assert linear["reencoded"] == [70, 90] and other.config_of(meta.novelty).reencoded == (70, 90)
    older = {**meta.novelty, "linear": {k: v for k, v in linear.items() if k != "reencoded"}}
    assert other.config_of(older).reencoded is None and other.positive_views(other.config_of(older)) == 2

    classifier = Classifier(linear_model_dir)
    assert classifier.detector is not None and classifier.detector.threshold == linear["threshold"]
    size = classifier.meta.input_size
    kinds = other.list_kinds([negatives])
    fitted = classifier.score([decode(p.read_bytes(), size) for paths in kinds.values() for p in paths])
    ordinary = [write_photo(negatives.parent / "o" / f"{c}.jpg", c, seed=99) for c in CLASSES]
    landscapes = classifier.score([decode(p.read_bytes(), size) for p in ordinary])
    assert np.median(fitted.novelty) > np.median(landscapes.novelty)


@pytest.mark.slow
def test_train_other_only_takes_negatives_and_evaluate_leaves_each_kind_out(
    linear_model_dir: Path, colours: Path, negatives: Path, tmp_path: Path
) -> None:
    """``cened evaluate --leave-one-kind-out --full-size``: a table of every kind, and the card shows it."""
    import argparse
    import json

    from cened.commands import evaluate as evaluate_command
    from cened.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--data", str(colours), "--out", str(tmp_path), "--negatives", str(negatives)])
    assert args.negatives == [negatives] and args.other_crops == 3000

    model = tmp_path / "model"
    shutil.copytree(linear_model_dir, model)
    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    argv = ["--data", str(colours), "--model", str(model), "--ood", str(negatives), "--preview-sides", ""]
    argv += ["--leave-one-kind-out", "--full-size", "6", "--unlike", "2"]
    assert evaluate_command.run(parser.parse_args(argv)) == 0
    report = json.loads((model / "evaluation.json").read_text())
    loko = report["leave_one_kind_out"]
    assert set(loko["kinds"]) == {
        "noise",
        "stripes",
        "pages",
        "checks",
        "made: documents",
        "made: screens",
        "made: plain",
    }
    worst = loko["worst"]["as_is"]
    assert worst["filed"] == max(
        r["as_is"]["filed"] for r in loko["kinds"].values() if r["fitted_without_it"]
    )
    assert 0 <= loko["validation"]["to_other_mean"] <= 0.2
    full = report["full_size"]
    assert full["n"] == 6 and set(full) >= {"as is", "jpeg", "heic"}
    # As the daemon would: thumbnail_min_side (160) takes the JPEG's 160 px-high EXIF preview,
    # not the HEIC's thumbnail, whose short side is less than that.
    assert full["jpeg"]["decoded_from"] == {"exif-preview": 6}
    assert full["heic"]["decoded_from"] == {"photo": 6}
    card = (model / "MODEL_CARD.md").read_text()
    assert "### Leave one kind out" in card and f"**Worst kind: {worst['kind']}" in card
    assert "| checks | 12 |" in card and "12 MP HEIC" in card and "linear score" in card

    plain = tmp_path / "plain"
    shutil.copytree(linear_model_dir, plain)
    meta = modelpack.read_meta(plain)
    modelpack.write_meta(
        plain, dataclasses.replace(meta, novelty={k: v for k, v in meta.novelty.items() if k != "linear"})
    )
    argv[3] = str(plain)
    with pytest.raises(ConfigError, match="no linear other detector"):
        evaluate_command.run(parser.parse_args(argv))

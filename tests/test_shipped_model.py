"""The model that ships in models/landscapes: it loads, both runtimes agree, and it sorts real photos.

The last test reads validation photos from ../shared/data (never copied into
the repository) and skips, saying so, on a machine without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES

from cened.bench.photos import unlike_photos
from cened.config import shipped_model_dir
from cened.ml import modelpack
from cened.ml.classifying import AlbumKind, Classifier, decide_all
from cened.ml.imaging import decode
from cened.training.dataset import list_images, split_indices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "intel" / "train"
OOD = Path(__file__).resolve().parents[2] / "shared" / "data" / "ood"
OOD_BROAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "ood-broad"


@pytest.fixture(scope="module")
def shipped() -> Path:
    return shipped_model_dir()


def test_shipped_model_is_complete_and_small(shipped: Path) -> None:
    meta = modelpack.read_meta(shipped)  # checks every file's sha256
    assert meta.classes == CLASSES
    assert {modelpack.KERAS_FILE, modelpack.TFLITE_FILE, modelpack.NOVELTY_FILE} <= set(meta.files)
    assert modelpack.OTHER_FILE in meta.files and meta.novelty["linear"]["file"] == modelpack.OTHER_FILE
    assert meta.novelty["rejection_rate"] <= 0.02
    assert sum((shipped / f).stat().st_size for f in meta.files) <= 25 * 1024 * 1024
    assert (shipped / "MODEL_CARD.md").is_file()
    assert 0.3 < meta.temperature < 3.0
    assert {"split_seed", "val_fraction", "data_sha256"} <= set(meta.training)


def _validation_sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    meta = modelpack.read_meta(shipped_model_dir())
    listing = list_images(DATA, meta.classes)
    # The model's own split: these photos were never trained on.
    _, val = split_indices(listing.labels, meta.training["val_fraction"], meta.training["split_seed"])
    picked = np.concatenate([val[listing.labels[val] == c][:per_class] for c in range(len(meta.classes))])
    pixels = np.stack([decode(listing.paths[i].read_bytes(), meta.input_size) for i in picked])
    return pixels, listing.labels[picked]


@pytest.mark.slow
@pytest.mark.data
def test_shipped_model_sorts_validation_photos(shipped: Path) -> None:
    if not DATA.is_dir():
        pytest.skip(f"the training data is not at {DATA} (it is never copied into the repository)")
    pixels, labels = _validation_sample(per_class=25)
    lite = Classifier(shipped, backend="tflite").predict(pixels)
    keras = Classifier(shipped, backend="keras").predict(pixels)
    accuracy = float((lite.argmax(1) == labels).mean())
    assert accuracy >= 0.88, accuracy  # the card reports ~94% on the whole split
    assert float((lite.argmax(1) == keras.argmax(1)).mean()) >= 0.98
    assert np.allclose(lite.sum(1), 1.0, atol=1e-5)


def _kinds(pixels: np.ndarray, classifier: Classifier) -> list[AlbumKind]:
    """Where the daemon's decision (default thresholds) would send each photo."""
    scores = classifier.score(list(pixels))
    assert scores.novelty is not None
    decided = decide_all(scores, threshold=0.6, albums={}, review_album="review")
    return [d.kind for d in decided]


@pytest.mark.slow
@pytest.mark.data
def test_photos_of_none_of_the_classes_are_kept_out_of_the_albums(shipped: Path, tmp_path: Path) -> None:
    """Photos of the 23 kinds it was fitted against, and made-up documents, screenshots, noise it never saw.

    The kinds of ../shared/data/ood and ood-broad are the detector's negatives, so this shows that the
    daemon's runtime decides as the fit said; how it does on kinds it never saw is the card's
    leave-one-kind-out table, checked below.
    """
    if not OOD.is_dir() or not OOD_BROAD.is_dir() or not DATA.is_dir():
        pytest.skip(f"the photos are not at {OOD}, {OOD_BROAD} and {DATA} (never copied into the repository)")
    classifier = Classifier(shipped)
    size = classifier.meta.input_size
    kinds = sorted(p for folder in (OOD, OOD_BROAD) for p in folder.iterdir() if p.is_dir())
    assert {k.name for k in kinds} == set(classifier.meta.novelty["linear"]["negatives"])
    strangers = [path for kind in kinds for path in sorted(kind.glob("*.jpg"))[:10]]
    strangers += unlike_photos(tmp_path, per_kind=10)
    pixels = np.stack([decode(p.read_bytes(), size) for p in strangers])
    filed = [
        p for p, kind in zip(strangers, _kinds(pixels, classifier), strict=True) if kind == AlbumKind.FILE
    ]
    assert len(filed) <= 0.02 * len(strangers), [p.name for p in filed]

    inliers, labels = _validation_sample(per_class=40)
    kinds_in = np.array(_kinds(inliers, classifier))
    assert (kinds_in == AlbumKind.OTHER).mean() <= 0.03  # 1.45% on the whole split, by construction
    kept = kinds_in != AlbumKind.OTHER
    predicted = classifier.predict(inliers).argmax(1)
    assert (predicted[kept] == labels[kept]).mean() >= 0.9


def test_the_card_measured_other_on_kinds_it_never_saw(shipped: Path) -> None:
    """The shipped detector's figures from `cened evaluate --leave-one-kind-out`, as the card has them.

    Two kinds stay above the 3% aimed at when left out: underwater (the Intel data labels ~50 sea
    floors `sea`) and animals; every other kind is at most 3% (docs/model.md).
    """
    report = json.loads((shipped / "evaluation.json").read_text())
    meta = modelpack.read_meta(shipped)
    loko = report["leave_one_kind_out"]
    left_out = {k: r for k, r in loko["kinds"].items() if r["fitted_without_it"]}
    assert set(left_out) == set(meta.novelty["linear"]["negatives"])
    worst = max(left_out, key=lambda k: left_out[k]["as_is"]["filed"])
    assert loko["worst"]["as_is"] == {"kind": worst, "filed": left_out[worst]["as_is"]["filed"]}
    above = {k for k, r in left_out.items() if r["as_is"]["filed"] > 0.03}
    assert above <= {"underwater", "animals"} and left_out[worst]["as_is"]["filed"] <= 0.07, left_out
    assert loko["pooled_filed"]["as_is"] <= 0.02
    assert all(r["as_is"]["filed"] == 0 for k, r in loko["kinds"].items() if k.startswith("made: "))
    v = loko["validation"]
    assert (
        v["to_other_max"] <= 0.025 and v["accuracy_not_other_min"] >= v["accuracy_without_detector"] - 0.002
    )
    full = report["full_size"]
    assert full["n"] >= 100 and all(full[way]["to_other"] <= 0.04 for way in ("as is", "jpeg", "heic"))
    assert report["other"]["inliers"]["to_other"] <= 0.02


def test_the_card_cross_validated_the_recipe(shipped: Path) -> None:
    """`cened evaluate --folds 5`: the shipped recipe trained on grouped folds of every photo."""
    report = json.loads((shipped / "evaluation.json").read_text())
    meta = modelpack.read_meta(shipped)
    cv = report["crossval"]
    assert len(cv["folds"]) == 5 and sum(f["photos"] for f in cv["folds"]) == cv["photos"] == 14_014
    accuracies = [f["accuracy"] for f in cv["folds"]]
    assert min(accuracies) <= cv["mean"] <= max(accuracies) and cv["sd"] < 0.02
    assert cv["mean"] >= 0.93 and cv["pooled_accuracy"] >= 0.93
    # The recipe is the shipped model's, its last phase left out (docs/model.md says why).
    assert cv["recipe"] == {**meta.training["config"], "full_epochs": 0}
    assert (
        f"## Cross-validation (`cened evaluate --folds {len(accuracies)}`)"
        in (shipped / "MODEL_CARD.md").read_text()
    )


@pytest.mark.slow
@pytest.mark.data
def test_the_shipped_model_learns_an_album_of_cats_from_twenty(shipped: Path, tmp_path: Path) -> None:
    """Twenty cats make an album; other cats are filed there, dogs and landscapes mostly not."""
    if not (OOD / "cats").is_dir():
        pytest.skip(f"the photos of none of the classes are not at {OOD} (never copied into the repository)")
    from cened import learn
    from cened.config import load_settings
    from cened.training.evaluate import learned_report, load_outliers

    cats = sorted((OOD / "cats").glob("*.jpg"))
    settings = load_settings(
        None, inbox=tmp_path / "inbox", library=tmp_path / "albums", database=tmp_path / "state" / "db"
    )
    assert learn.add_album(settings, "cats", cats[0].parent) == len(cats)  # every cat, then held back below
    albums = learn.Albums.load(settings.learned_dir)
    albums.albums["cats"]["examples"] = albums.albums["cats"]["examples"][:20]
    albums.save()
    outcome = learn.learn(settings)
    assert outcome.accepted and outcome.classes[-1] == "cats"

    classifier = Classifier.from_settings(settings)
    pixels, labels = _validation_sample(per_class=40)
    meta = classifier.meta
    rest = np.stack([decode(p.read_bytes(), meta.input_size) for p in cats[20:]])
    dogs = load_outliers(OOD / "dogs", meta.input_size)
    result = learned_report(classifier, pixels, labels, {"cats": rest}, dogs)
    assert result["validation"]["accuracy"] >= 0.92  # the six classes keep what they had
    assert result["albums"]["cats"]["recall"] >= 0.5 and result["albums"]["cats"]["precision"] >= 0.8
    assert result["none"]["dogs"]["filed"] <= 0.05

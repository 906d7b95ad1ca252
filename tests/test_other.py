"""The "other" album: a photo of none of the model's classes never lands in one of their albums.

The test model's world is six colours; its detector is fitted by ``cened
train``'s own last phase (``other_model_dir``). A text page, a screenshot, noise
or a colour it never saw is none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import RunningDaemon, run_cli, wait_until
from PIL import Image

from cened.bench.photos import unlike_photos
from cened.config import Settings
from cened.journal import Action, Journal
from cened.ml import modelpack
from cened.ml.classifying import Classifier
from cened.pipeline import Fate, Processor, prepare


@pytest.fixture(scope="module")
def other_classifier(other_model_dir: Path) -> Classifier:
    return Classifier(other_model_dir)


@pytest.fixture
def other_settings(settings: Settings, other_model_dir: Path) -> Settings:
    return settings.model_copy(update={"model": other_model_dir})


def _file(classifier: Classifier, settings: Settings, *paths: Path) -> list:
    with Journal(settings.database) as journal:
        processor = Processor(classifier, journal, lambda: settings)
        return processor.process([prepare(p, settings, classifier.meta.input_size) for p in paths])


def test_the_detector_is_fitted_and_stored_with_the_model(other_model_dir: Path) -> None:
    meta = modelpack.read_meta(other_model_dir)
    assert meta.novelty["layers"] == ["pool"] and meta.novelty["k"] == 1
    assert modelpack.NOVELTY_FILE in meta.files  # hashed, so a changed detector is refused
    assert 0 < meta.novelty["validation_other_share"] <= 0.05
    assert meta.version.startswith("tiny-test-1+other-")


def test_unlike_photos_go_to_other_and_the_rest_to_their_albums(
    other_classifier: Classifier, other_settings: Settings, tmp_path: Path
) -> None:
    inbox = other_settings.inbox
    strangers = unlike_photos(tmp_path / "unlike", per_kind=3)
    magenta = inbox / "magenta.png"
    Image.new("RGB", (40, 30), (255, 0, 255)).save(magenta)
    moved = [p.rename(inbox / p.name) for p in strangers]
    ordinary = [write_photo(inbox / f"{cls}.jpg", cls, seed=99) for cls in CLASSES]
    outcomes = {o.path.name: o for o in _file(other_classifier, other_settings, *moved, magenta, *ordinary)}

    for path in [*moved, magenta]:
        o = outcomes[path.name]
        assert o.fate == Fate.OTHER, (path.name, o.entry)
        assert o.entry.album == "other"
        assert o.entry.destination == other_settings.library / "other" / path.name
        assert o.entry.novelty > other_classifier.detector.threshold
        assert "none of the model's classes" in o.entry.reason
        assert o.entry.destination.is_file() and not path.exists()
    for cls in CLASSES:
        o = outcomes[f"{cls}.jpg"]
        assert o.fate == Fate.MOVED and o.entry.album == cls, o.entry
        assert o.entry.novelty <= other_classifier.detector.threshold

    with Journal(other_settings.database) as journal:
        rows = journal.history(actions=[Action.OTHER])
    assert {r.source.name for r in rows} == {p.name for p in [*moved, magenta]}
    assert all(r.novelty is not None and r.novelty > other_classifier.detector.threshold for r in rows)


def test_other_album_empty_sends_them_to_review(
    other_classifier: Classifier, other_settings: Settings, tmp_path: Path
) -> None:
    settings = other_settings.model_copy(update={"other_album": ""})
    noise = settings.inbox / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(noise)
    (o,) = _file(other_classifier, settings, noise)
    assert o.fate == Fate.OTHER and o.entry.destination == settings.library / "review" / "noise.png"


def test_a_model_without_a_detector_decides_as_before(classifier: Classifier, settings: Settings) -> None:
    noise = settings.inbox / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(noise)
    (o,) = _file(classifier, settings, noise)
    assert o.fate in (Fate.MOVED, Fate.REVIEW) and o.entry.novelty is None


@pytest.mark.slow
def test_the_daemon_files_a_screenshot_in_other_and_undo_brings_it_back(
    other_settings: Settings, tmp_path: Path
) -> None:
    (shot,) = unlike_photos(tmp_path / "made", per_kind=1)[1:2]
    landscape = write_photo(tmp_path / "sea.jpg", "sea", seed=5)
    with RunningDaemon(other_settings) as daemon:
        for photo in (shot, landscape):
            photo.rename(other_settings.inbox / photo.name)
        assert wait_until(lambda: daemon.filed >= 2, timeout=30)
    target = other_settings.library / "other" / shot.name
    assert target.is_file() and (other_settings.library / "sea" / "sea.jpg").is_file()

    config = write_config(tmp_path / "cened.toml", other_settings)
    history = run_cli("history", "--json", config=config)
    rows = {Path(r["source"]).name: r for r in map(json.loads, history.stdout.splitlines())}
    row = rows[shot.name]
    assert row["action"] == "other" and row["album"] == "other" and row["novelty"] > 0
    stats = json.loads(run_cli("stats", "--json", config=config).stdout)
    assert stats["albums"]["other"]["files"] == 1 and stats["albums"]["sea"]["files"] == 1

    assert run_cli("undo", str(row["id"]), config=config).returncode == 0
    assert (other_settings.inbox / shot.name).is_file() and not target.exists()

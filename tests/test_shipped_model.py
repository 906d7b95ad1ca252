"""The model that ships in models/landscapes: it loads, both runtimes agree, and it sorts real photos.

The last test reads validation photos from ../shared/data (never copied into
the repository) and skips, saying so, on a machine without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES

from cened.config import shipped_model_dir
from cened.ml import modelpack
from cened.ml.classifying import Classifier
from cened.ml.dataset import list_images, split_indices
from cened.ml.imaging import decode

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "intel" / "train"


@pytest.fixture(scope="module")
def shipped() -> Path:
    return shipped_model_dir()


def test_shipped_model_is_complete_and_small(shipped: Path) -> None:
    meta = modelpack.read_meta(shipped)  # checks every file's sha256
    assert meta.classes == CLASSES
    assert {modelpack.KERAS_FILE, modelpack.TFLITE_FILE} <= set(meta.files)
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

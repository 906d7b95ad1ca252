"""Shared fixtures: a small real Keras model and real image files made with Pillow.

The model is trained here, in a few seconds, on synthetic pictures whose
class is their dominant colour, so tests can assert *which* album a photo
lands in -- a model that guessed would fail them.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# A test run started by a systemd unit (a CI runner) must not make every daemon it starts
# think it is the service, which refuses folders under /tmp; the tests that want it set it.
os.environ.pop("INVOCATION_ID", None)

import numpy as np
import pytest
from PIL import Image

from cened.config import Settings, load_settings
from cened.journal import Journal
from cened.ml.classifying import Classifier
from cened.ml.modelpack import ModelMeta
from cened.pipeline import FileOutcome, Processor, prepare

#: The classes of the shipped model (and of the small test model built here).
CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
#: Each class's colour in the synthetic world of the test model.
COLOURS = {
    "buildings": (200, 60, 60),
    "forest": (40, 160, 50),
    "glacier": (230, 230, 240),
    "mountain": (130, 90, 40),
    "sea": (30, 70, 210),
    "street": (20, 20, 20),
}
INPUT = (32, 32)


def picture(cls: str, size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """A noisy picture of ``cls``'s colour; the seed varies the noise, never the class."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[cls], dtype=np.float64)
    noise = rng.normal(0, 12, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def noisy_colours(root: Path, per_class: int) -> Path:
    """``root/<red|green|blue>/``: noisy 40x30 JPEGs of three colours, the tiny training runs' data."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(np.array(colour) + rng.normal(0, 25, (30, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.jpg")
    return root


def write_photo(
    path: Path, cls: str, fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(cls, size, seed).save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, trained, 6-class Keras model with its LiteRT export, in the cened format."""
    import keras

    from cened.ml.modelpack import save_keras

    keras.utils.set_random_seed(7)
    xs, ys = [], []
    for label, cls in enumerate(CLASSES):
        for seed in range(40):
            xs.append(np.asarray(picture(cls, INPUT, seed=seed + 1000 * label), dtype=np.float32))
            ys.append(label)
    x, y = np.stack(xs), np.array(ys)
    model = keras.Sequential(
        [
            keras.Input((*INPUT, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(len(CLASSES)),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=60, batch_size=48, verbose=0)
    _, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy > 0.95, f"the test model did not learn its colours ({accuracy:.2f})"
    out = tmp_path_factory.mktemp("model") / "tiny"
    meta = ModelMeta(name="tiny", version="tiny-test-1", classes=CLASSES, input_size=INPUT)
    save_keras(model, out, meta, tflite=True)
    return out


@pytest.fixture(scope="session")
def other_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model with a novelty detector, fitted by ``cened train``'s own last phase.

    Its world is six colours, so a picture of none of them (or a text page) is "other".
    """
    import dataclasses
    import shutil

    from cened.ml import modelpack, novelty
    from cened.training import train

    data = tmp_path_factory.mktemp("colours")
    for label, cls in enumerate(CLASSES):
        for seed in range(40):
            write_photo(data / cls / f"{seed:02d}.jpg", cls, seed=seed + 1000 * label)
    out = tmp_path_factory.mktemp("model") / "tiny-other"
    shutil.copytree(model_dir, out)
    meta = modelpack.read_meta(out)
    split = {"split_seed": 5, "val_fraction": 0.25}
    modelpack.write_meta(out, dataclasses.replace(meta, training=split))
    cfg = novelty.NoveltyConfig(layers=("pool",), prototypes=24, rejection_rate=0.02)
    # float16: an int8 export of an 8-channel toy blurs its 8-value embedding too much to
    # tell a page from a colour; the shipped model's int8 export is tested on real photos.
    float16 = train.Precision.FLOAT16
    train.fit_novelty(out, data, cfg, batch_size=64, precision=float16, say=lambda _: None)
    return out


@pytest.fixture(scope="session")
def classifier(model_dir: Path) -> Classifier:
    """The test model, loaded once: tests share it as the daemon's threads do."""
    return Classifier(model_dir)


@pytest.fixture
def filing(settings: Settings, classifier: Classifier):
    """File paths as one batch with the real pipeline, under ``settings`` changed by keyword."""
    journal = Journal(settings.database)

    def _file(*paths: Path, **changes: object) -> list[FileOutcome]:
        s = settings.model_copy(update=changes)
        processor = Processor(classifier, journal, lambda: s)
        return processor.process([prepare(p, s, classifier.meta.input_size) for p in paths])

    yield _file, journal
    journal.close()


@pytest.fixture
def filed(settings: Settings, classifier: Classifier, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """Three photos filed by the real pipeline; returns (config path, {name: row id})."""
    paths = [
        write_photo(settings.inbox / "a.jpg", "sea", seed=1),
        write_photo(settings.inbox / "b.jpg", "forest", seed=2),
        write_photo(settings.inbox / "c.jpg", "glacier", seed=3),
    ]
    with Journal(settings.database) as journal:
        outcomes = Processor(classifier, journal, lambda: settings).process(
            [prepare(p, settings, classifier.meta.input_size) for p in paths]
        )
    assert [o.fate for o in outcomes] == ["moved"] * 3
    config = write_config(tmp_path / "cened.toml", settings)
    return config, {o.path.name: o.entry.id for o in outcomes}


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("inbox", "library", "state")}
    for p in paths.values():
        p.mkdir()
    return paths


@pytest.fixture
def settings(dirs: dict[str, Path], model_dir: Path) -> Settings:
    return load_settings(
        None,
        inbox=dirs["inbox"],
        library=dirs["library"],
        database=dirs["state"] / "cened.sqlite3",
        model=model_dir,
        stable_seconds=0.3,
        batch_max_wait_ms=50,
        log_format="json",
    )


def write_config(path: Path, settings: Settings, **extra: object) -> Path:
    """A TOML file equivalent to ``settings`` (plus ``extra``), for subprocess tests."""
    keys = {
        "inbox": settings.inbox,
        "library": settings.library,
        "database": settings.database,
        "model": settings.model,
        "stable_seconds": settings.stable_seconds,
        "batch_max_wait_ms": settings.batch_max_wait_ms,
        "log_format": "json",
        **extra,
    }
    lines = []
    for key, value in keys.items():
        if isinstance(value, str | Path):
            lines.append(f"{key} = {json.dumps(str(value))}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)

"""The pure decision functions: probabilities, thresholds, grouping, times."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import CLASSES

from cened.errors import ConfigError
from cened.ml.classifying import AlbumKind, decide, softmax
from cened.undoing import parse_since


def _probs(**by_class: float) -> np.ndarray:
    return np.array([by_class.get(c, 0.0) for c in CLASSES])


def test_confident_photo_goes_to_its_album() -> None:
    d = decide(_probs(sea=0.9, glacier=0.1), CLASSES, threshold=0.6, albums={}, review_album="review")
    assert (d.label, d.album, d.kind) == ("sea", "sea", AlbumKind.FILE)
    assert d.confidence == pytest.approx(0.9)
    assert set(d.probabilities) == set(CLASSES)


def test_unsure_photo_goes_to_review_but_keeps_its_best_guess() -> None:
    d = decide(
        _probs(glacier=0.5, mountain=0.45, sea=0.05), CLASSES, threshold=0.6, albums={}, review_album="check"
    )
    assert (d.label, d.album, d.kind) == ("glacier", "check", AlbumKind.REVIEW)


def test_grouped_look_alikes_pool_their_probability() -> None:
    albums = {"glacier": "mountains", "mountain": "mountains"}
    d = decide(
        _probs(glacier=0.5, mountain=0.45, sea=0.05), CLASSES, threshold=0.6, albums=albums, review_album="r"
    )
    assert (d.label, d.album, d.kind) == ("glacier", "mountains", AlbumKind.FILE)
    assert d.confidence == pytest.approx(0.95)


def test_a_novel_photo_goes_to_other_however_confident() -> None:
    sure = _probs(glacier=0.97, mountain=0.03)
    kwargs = {"threshold": 0.6, "albums": {}, "review_album": "review", "novelty_threshold": 0.3}
    d = decide(sure, CLASSES, novelty=0.45, **kwargs)
    assert (d.label, d.album, d.kind, d.novelty) == ("glacier", "other", AlbumKind.OTHER, 0.45)
    assert "none of the model's classes" in (d.reason or "")
    # At or below the threshold the probabilities decide, as without a detector.
    assert decide(sure, CLASSES, novelty=0.3, **kwargs).album == "glacier"
    # other_album "" sends such photos to review instead.
    assert decide(sure, CLASSES, novelty=0.45, other_album="", **kwargs).album == "review"
    assert decide(sure, CLASSES, novelty=0.45, other_album="", **kwargs).kind == AlbumKind.OTHER


def test_softmax_temperature_softens_confidence() -> None:
    logits = np.array([[4.0, 1.0, 0.0]])
    sharp, soft = softmax(logits, 1.0), softmax(logits, 2.0)
    assert np.allclose(sharp.sum(), 1) and np.allclose(soft.sum(), 1)
    assert soft.max() < sharp.max()


def test_parse_since() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == "2026-11-24T10:00:00.000+00:00"
    assert parse_since("3d", now).startswith("2026-11-21T12:00")
    assert parse_since("2026-11-20T08:30+00:00") == "2026-11-20T08:30:00.000+00:00"
    with pytest.raises(ConfigError, match="cannot read"):
        parse_since("yesterday-ish")


def _count_calls(classifier: object) -> list[int]:
    """Spy on every model copy of ``classifier``: the sizes of the calls they get, in order."""
    calls: list[int] = []
    runners = []
    while not classifier._free.empty():  # type: ignore[attr-defined]
        runners.append(classifier._free.get())  # type: ignore[attr-defined]
    for runner in runners:
        outputs = runner.outputs
        runner.outputs = lambda batch, outputs=outputs: calls.append(len(batch)) or outputs(batch)
        classifier._free.put(runner)  # type: ignore[attr-defined]
    return calls


@pytest.mark.parametrize(("backend", "workers"), [("tflite", 1), ("tflite", 2), ("keras", 1)])
def test_a_batch_is_scored_in_model_calls_of_max_batch(model_dir, backend: str, workers: int) -> None:
    """``model_batch_size``: 7 photos in calls of 3, 3 and 1, with the same probabilities as one call.

    With two model copies the calls are shared between them, and the rows still
    come back in the photos' order.
    """
    from conftest import COLOURS, INPUT, picture

    from cened.ml.classifying import Classifier

    pixels = np.stack(
        [np.asarray(picture(c, INPUT, seed=i)) for i, c in enumerate([*COLOURS, "sea"])], dtype=np.uint8
    )
    whole = Classifier(model_dir, backend=backend).predict(pixels)
    chunked = Classifier(model_dir, backend=backend, max_batch=3, workers=workers)
    assert chunked.workers == workers
    calls = _count_calls(chunked)
    np.testing.assert_allclose(chunked.predict(pixels), whole, atol=1e-5)
    assert sorted(calls) == [1, 3, 3]
    assert [CLASSES[i] for i in whole.argmax(axis=1)] == [*COLOURS, "sea"]


def test_model_copies_score_from_several_threads_at_once(model_dir) -> None:
    """The daemon's scorer threads share one classifier: concurrent calls must not mix up rows."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import COLOURS, INPUT, picture

    from cened.ml.classifying import Classifier

    photos = [np.asarray(picture(c, INPUT, seed=i), dtype=np.uint8) for i, c in enumerate([*COLOURS] * 3)]
    classifier = Classifier(model_dir, backend="tflite", max_batch=2, workers=2)
    batches = [photos[i:] + photos[:i] for i in range(8)]  # each a different order of the same photos
    expected = [classifier.predict(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(classifier.predict, batches), expected, strict=True):
                np.testing.assert_allclose(got, want, atol=1e-6)


def test_model_copies_default_to_two_for_litert_and_one_for_keras(model_dir) -> None:
    from cened.ml.classifying import Classifier

    assert Classifier(model_dir, backend="tflite", threads=2, workers=0).workers == 2
    assert Classifier(model_dir, backend="tflite", threads=1, workers=0).workers == 1
    assert Classifier(model_dir, backend="keras", threads=2, workers=0).workers == 1


def test_threads_default_to_the_cores_this_process_may_use(model_dir) -> None:
    """Under ``taskset -c 0`` (or systemd's CPUAffinity=) one core means one copy, one thread."""
    import os

    from cened.ml.classifying import Classifier, usable_cores

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert usable_cores() == 1
        confined = Classifier(model_dir, backend="tflite", workers=0)
        assert (confined.threads, confined.workers) == (1, 1)
    finally:
        os.sched_setaffinity(0, allowed)
    assert usable_cores() == len(allowed)


@pytest.mark.parametrize("backend", ["tflite", "keras"])
def test_predict_takes_a_list_of_photos_as_it_takes_a_stacked_batch(model_dir, backend: str) -> None:
    """The daemon hands over its decoded photos unstacked; the scores must not depend on that."""
    from conftest import COLOURS, INPUT, picture

    from cened.ml.classifying import Classifier

    photos = [np.asarray(picture(c, INPUT, seed=i), dtype=np.uint8) for i, c in enumerate(COLOURS)]
    classifier = Classifier(model_dir, backend=backend, max_batch=4)
    np.testing.assert_allclose(classifier.predict(photos), classifier.predict(np.stack(photos)), atol=1e-6)
    assert [CLASSES[i] for i in classifier.predict(photos).argmax(axis=1)] == list(COLOURS)
    with pytest.raises(ValueError, match="expected"):
        classifier.predict([*photos[:2], np.zeros((INPUT[0], INPUT[1] + 1, 3), dtype=np.uint8)])

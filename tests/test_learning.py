"""Learning from the user: albums of their own, corrections, learned versions, a daemon that switches.

The test model's world is six colours (``conftest``); magenta is none of them,
so until an album of magenta photos is learned, a magenta photo is "other".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_config, write_photo
from daemon_helpers import DaemonProcess, RunningDaemon, run_cli, wait_until
from PIL import Image

from cened import learn
from cened.config import Settings
from cened.daemon import Daemon
from cened.errors import Refused
from cened.journal import Action, Journal
from cened.ml import learning
from cened.ml.classifying import Classifier
from cened.ml.versions import SHIPPED, VersionStore
from cened.pipeline import Processor, prepare
from cened.undoing import carry_out, plan_correct

MAGENTA = (220, 40, 200)


def magenta(path: Path, seed: int) -> Path:
    """A noisy magenta photo, as conftest's pictures are of their colours."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(MAGENTA, float) + rng.normal(0, 12, (48, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, quality=92)
    return path


def _filed_into_other(settings: Settings, daemon: Daemon, tmp_path: Path, n: int = 21) -> None:
    """``n`` magenta photos dropped into the inbox and filed by ``daemon`` (into other)."""
    for i in range(n):
        magenta(tmp_path / "roll" / f"m{i}.jpg", 200 + i).rename(settings.inbox / f"m{i}.jpg")
    assert wait_until(lambda: daemon.filed >= n, timeout=60)


def _dragged_into_magenta(settings: Settings, numbers: range) -> None:
    """What a person does in a file manager: other/m{i}.jpg into a folder `magenta`."""
    (settings.library / "magenta").mkdir(exist_ok=True)
    for i in numbers:
        os.rename(settings.library / "other" / f"m{i}.jpg", settings.library / "magenta" / f"m{i}.jpg")


def _corrected(settings: Settings) -> int:
    """Photos corrected so far, as cened learn counts them."""
    with Journal(settings.database, readonly=True) as journal:
        return len(learn.corrected_examples(journal, settings, learn.Albums(Path()), CLASSES)[0])


@pytest.fixture
def taught(settings: Settings, other_model_dir: Path) -> Settings:
    return settings.model_copy(update={"model": other_model_dir})


def _decide(settings: Settings, *paths: Path) -> list[str]:
    """Albums ``cened classify`` would choose (a simulating Processor with the version in use)."""
    classifier = Classifier.from_settings(settings)
    processor = Processor(classifier, None, lambda: settings, simulate=True)
    outcomes = processor.process([prepare(p, settings, classifier.meta.input_size) for p in paths])
    return [o.entry.album for o in outcomes]


def test_the_model_pack_carries_its_replay_set(other_model_dir: Path) -> None:
    replay = learning.Replay.load(other_model_dir)
    # A sample of the training split per class, and the whole validation split (a quarter of 240).
    assert sorted(set(replay.train.labels)) == sorted(CLASSES) and len(replay.validation) == 60
    assert np.allclose(np.linalg.norm(replay.validation.embeddings, axis=1), 1.0, atol=0.02)


def test_a_head_learned_from_nothing_new_keeps_the_shipped_decisions(other_model_dir: Path) -> None:
    replay = learning.Replay.load(other_model_dir)
    classifier = Classifier(other_model_dir)
    head = learning.fit_head(
        CLASSES, CLASSES, classifier.meta.temperature, replay.train, learning.Labelled.empty(6, 8)
    )
    shipped = replay.validation.logits.argmax(axis=1)
    learned = head.logits(replay.validation.logits, replay.validation.embeddings).argmax(axis=1)
    assert (shipped == learned).mean() >= 0.98


def test_an_album_needs_twenty_examples(taught: Settings, tmp_path: Path) -> None:
    for i in range(19):
        magenta(tmp_path / "few" / f"{i}.jpg", i)
    config = write_config(tmp_path / "cened.toml", taught)
    done = run_cli("album", "add", "magenta", str(tmp_path / "few"), config=config)
    assert done.returncode == 1
    assert "at least 20 example photos" in done.stderr and "has 19" in done.stderr
    assert VersionStore(taught.learned_dir).active() == SHIPPED
    assert not (taught.learned_dir / learn.ALBUMS_FILE).exists()


def test_a_new_album_is_learned_and_other_still_works(taught: Settings, tmp_path: Path) -> None:
    examples = [magenta(tmp_path / "examples" / f"m{i}.jpg", i) for i in range(25)]
    fresh = [magenta(tmp_path / "new" / f"new{i}.jpg", 500 + i) for i in range(5)]
    ordinary = [write_photo(tmp_path / "new" / f"{c}.jpg", c, seed=77) for c in CLASSES]
    page = tmp_path / "new" / "page.png"
    Image.new("RGB", (64, 48), (250, 250, 120)).save(page)  # a colour of none of the seven
    assert _decide(taught, *fresh) == ["other"] * 5

    assert learn.add_album(taught, "magenta", tmp_path / "examples") == 25
    outcome = learn.learn(taught)
    assert outcome.accepted and outcome.classes == (*CLASSES, "magenta")
    assert outcome.examples["magenta"] + outcome.held_back["magenta"] == 25
    assert outcome.new["yours"].per_label["magenta"]["recall"] == 1.0
    assert outcome.new["validation"].accuracy >= outcome.current["validation"].accuracy - 0.02

    assert _decide(taught, *fresh) == ["magenta"] * 5
    assert _decide(taught, *ordinary) == list(CLASSES)
    assert _decide(taught, page) == ["other"]
    # The examples stay where they are; copies are kept with the state, so the album outlives DIR.
    assert all(p.is_file() for p in examples)
    kept = sorted((taught.learned_dir / "albums" / "magenta").iterdir())
    assert len(kept) == 25 and {p.read_bytes() for p in kept} == {p.read_bytes() for p in examples}


def test_learn_refuses_a_worse_version_unless_forced(taught: Settings) -> None:
    """Sixty glacier photos "corrected" to forest, twice the glacier photos of the replay set,
    contradict the validation set: the version is kept, not used."""
    for i in range(60):
        write_photo(taught.inbox / f"g{i}.jpg", "glacier", seed=3000 + i)
    with Journal(taught.database) as journal:
        classifier = Classifier(taught.model)
        processor = Processor(classifier, journal, lambda: taught)
        processor.process(
            [prepare(p, taught, classifier.meta.input_size) for p in sorted(taught.inbox.iterdir())]
        )
        for row in journal.history(actions=[Action.MOVED]):
            assert row.id is not None
            # What `cened correct ID forest` does.
            carry_out(
                journal, plan_correct(journal, taught, row.id, "forest"), Action.CORRECTED, label="forest"
            )
    with Journal(taught.database, readonly=True) as journal:
        corrected, _ = learn.corrected_examples(journal, taught, learn.Albums(Path()), CLASSES)
    assert len(corrected) == 60

    outcome = learn.learn(taught)
    assert not outcome.accepted
    assert outcome.new["validation"].accuracy < outcome.current["validation"].accuracy - 0.005
    store = VersionStore(taught.learned_dir)
    assert store.active() == SHIPPED and store.names() == [outcome.version]

    forced = learn.learn(taught, force=True)
    assert forced.accepted and forced.forced and store.active() == forced.version


@pytest.mark.slow
def test_model_use_list_and_rollback(taught: Settings, tmp_path: Path) -> None:
    for i in range(20):
        magenta(tmp_path / "examples" / f"m{i}.jpg", i)
    config = write_config(tmp_path / "cened.toml", taught)
    assert run_cli("album", "add", "magenta", str(tmp_path / "examples"), config=config).returncode == 0
    store = VersionStore(taught.learned_dir)
    first = store.active()
    assert first.startswith("learned-")

    listed = run_cli("model", "list", config=config).stdout
    assert f"* {first}" in listed and "magenta" in listed and "  shipped" in listed
    assert run_cli("model", "rollback", config=config).returncode == 0
    assert store.active() == SHIPPED
    refused = run_cli("model", "rollback", config=config)
    assert refused.returncode == 1 and "nothing to roll back" in refused.stderr
    assert run_cli("model", "use", first, config=config).returncode == 0 and store.active() == first
    assert run_cli("model", "use", "learned-nonesuch", config=config).returncode == 1

    done = run_cli("album", "remove", "magenta", config=config)
    assert done.returncode == 0, done.stderr
    assert store.active() == SHIPPED  # nothing else to learn from
    assert learn.Albums.load(taught.learned_dir).removed == ["magenta"]
    assert not (taught.learned_dir / "albums" / "magenta").exists()
    assert len(list((tmp_path / "examples").iterdir())) == 20  # the user's own photos are untouched
    with pytest.raises(Refused):
        learn.remove_album(taught, "magenta")


@pytest.mark.slow
def test_corrections_into_a_new_folder_become_an_album(taught: Settings, tmp_path: Path) -> None:
    """Photos filed in other, corrected into `magenta` one by one, make an album at the 20th."""
    for i in range(22):
        magenta(taught.inbox / f"m{i}.jpg", 100 + i)
    with Journal(taught.database) as journal:
        classifier = Classifier(taught.model)
        processor = Processor(classifier, journal, lambda: taught)
        processor.process(
            [prepare(p, taught, classifier.meta.input_size) for p in sorted(taught.inbox.iterdir())]
        )
        filed = [r.id for r in journal.history(actions=[Action.OTHER])]
    assert len(filed) == 22
    config = write_config(tmp_path / "cened.toml", taught)
    refused = run_cli("correct", str(filed[0]), "magenta", config=config)
    assert refused.returncode == 1 and "--new-album" in refused.stderr  # no album magenta yet
    assert run_cli("correct", str(filed[0]), "magenta", "--new-album", config=config).returncode == 0
    for row_id in filed[1:19]:  # magenta is an album now
        assert run_cli("correct", str(row_id), "magenta", config=config).returncode == 0
    listed = run_cli("album", "list", config=config).stdout
    assert "19 corrections" in listed and "1 more to be an album" in listed
    for row_id in filed[19:]:
        assert run_cli("correct", str(row_id), "magenta", config=config).returncode == 0

    report = json.loads(run_cli("learn", "--json", config=config).stdout)
    assert report["accepted"] and report["classes"][-1] == "magenta"
    assert _decide(taught, magenta(tmp_path / "new.jpg", 999)) == ["magenta"]


@pytest.mark.slow
def test_a_running_daemon_switches_to_a_learned_version_and_back(taught: Settings, tmp_path: Path) -> None:
    for i in range(20):
        magenta(tmp_path / "examples" / f"m{i}.jpg", i)
    config = write_config(tmp_path / "cened.toml", taught)
    with RunningDaemon(taught) as daemon:
        magenta(tmp_path / "a.jpg", 900).rename(taught.inbox / "a.jpg")
        assert wait_until(lambda: daemon.filed >= 1, timeout=30)
        assert (taught.library / "other" / "a.jpg").is_file()

        done = run_cli("album", "add", "magenta", str(tmp_path / "examples"), config=config)
        assert done.returncode == 0, done.stderr
        version = VersionStore(taught.learned_dir).active()
        assert wait_until(lambda: daemon._classifier.version == version, timeout=15)
        magenta(tmp_path / "b.jpg", 901).rename(taught.inbox / "b.jpg")
        assert wait_until(lambda: daemon.filed >= 2, timeout=30)
        assert (taught.library / "magenta" / "b.jpg").is_file()

        assert run_cli("model", "rollback", config=config).returncode == 0
        assert wait_until(lambda: daemon._classifier.version == daemon._classifier.meta.version, timeout=15)
        magenta(tmp_path / "c.jpg", 902).rename(taught.inbox / "c.jpg")
        assert wait_until(lambda: daemon.filed >= 3, timeout=30)
        assert (taught.library / "other" / "c.jpg").is_file()
    with Journal(taught.database, readonly=True) as journal:
        versions = {
            r.source.name: r.model_version for r in journal.history(actions=[Action.MOVED, Action.OTHER])
        }
    assert versions["b.jpg"] == version and versions["a.jpg"] == versions["c.jpg"] != version


def _learned_magenta(taught: Settings, tmp_path: Path) -> str:
    """A version that knows a magenta album of 20 examples, in use; its name."""
    for i in range(20):
        magenta(tmp_path / "examples" / f"m{i}.jpg", i)
    learn.add_album(taught, "magenta", tmp_path / "examples")
    return learn.learn(taught).version


@pytest.mark.slow
def test_a_broken_version_is_refused_and_the_daemon_keeps_its_model(taught: Settings, tmp_path: Path) -> None:
    good = _learned_magenta(taught, tmp_path)
    store = VersionStore(taught.learned_dir)
    with RunningDaemon(taught) as daemon:
        assert daemon._classifier.version == good
        broken = store.versions / "learned-broken"
        broken.mkdir()
        (broken / "learned.json").write_text("{")
        (store.active_file).write_text(json.dumps({"history": [good, "learned-broken"]}))
        # The daemon logs the refusal and keeps filing with the version it had.
        magenta(tmp_path / "b.jpg", 901).rename(taught.inbox / "b.jpg")
        assert wait_until(lambda: daemon.filed >= 1, timeout=30)
        assert daemon._classifier.version == good
    assert (taught.library / "magenta" / "b.jpg").is_file()


def test_an_album_outlives_its_folder_and_a_new_shipped_model(taught: Settings, tmp_path: Path) -> None:
    """Learned versions sit on one shipped model; the album's kept copies are learned again on the next."""
    import dataclasses
    import shutil

    from cened.errors import ModelError
    from cened.ml import modelpack

    for i in range(20):
        magenta(tmp_path / "examples" / f"m{i}.jpg", i)
    learn.add_album(taught, "magenta", tmp_path / "examples")
    assert learn.learn(taught).accepted
    shutil.rmtree(tmp_path / "examples")

    upgraded = tmp_path / "next-model"
    shutil.copytree(taught.model, upgraded)
    meta = modelpack.read_meta(upgraded)
    modelpack.write_meta(upgraded, dataclasses.replace(meta, version=meta.version + "-next"))
    after = taught.model_copy(update={"model": upgraded})
    with pytest.raises(ModelError, match="learned on model"):
        Classifier.from_settings(after)
    outcome = learn.learn(after)
    assert outcome.accepted and outcome.classes[-1] == "magenta"
    assert _decide(after, magenta(tmp_path / "new.jpg", 999)) == ["magenta"]


@pytest.mark.slow
def test_photos_moved_by_hand_into_a_new_folder_become_an_album(taught: Settings, tmp_path: Path) -> None:
    """The whole loop: filed in other, dragged into `magenta` in a file manager, learned, filed there."""
    taught = taught.model_copy(update={"learn_after": 0})  # `cened learn` here; by itself below
    config = write_config(tmp_path / "cened.toml", taught)
    with RunningDaemon(taught) as daemon:
        assert daemon.library_watched.wait(timeout=30)
        _filed_into_other(taught, daemon, tmp_path)
        _dragged_into_magenta(taught, range(21))
        assert wait_until(lambda: _corrected(taught) == 21, timeout=30)
        report = run_cli("learn", "--json", config=config)
        assert report.returncode == 0, report.stderr
        version = json.loads(report.stdout)["version"]
        assert wait_until(lambda: daemon._classifier.version == version, timeout=15)
        magenta(tmp_path / "new.jpg", 999).rename(taught.inbox / "new.jpg")
        assert wait_until(lambda: (taught.library / "magenta" / "new.jpg").is_file(), timeout=30)


def _file_magenta(settings: Settings, names: list[str], seed: int) -> list[int]:
    """Magenta photos filed (into other) by the real pipeline; their row ids."""
    for i, name in enumerate(names):
        magenta(settings.inbox / name, seed + i)
    with Journal(settings.database) as journal:
        classifier = Classifier(settings.model)
        processor = Processor(classifier, journal, lambda: settings)
        outcomes = processor.process(
            [prepare(settings.inbox / n, settings, classifier.meta.input_size) for n in names]
        )
    assert all(o.entry is not None and o.entry.album == "other" for o in outcomes)
    return [o.entry.id for o in outcomes if o.entry is not None and o.entry.id is not None]


def test_what_is_new_to_learn_is_counted_label_by_label(taught: Settings) -> None:
    meta = Classifier(taught.model).meta
    ids = _file_magenta(taught, [f"m{i}.jpg" for i in range(24)], 100)
    assert learn.unlearned(taught, meta.classes, meta.version) == 0
    with Journal(taught.database) as journal:
        for row_id in ids[:21]:
            plans = plan_correct(journal, taught, row_id, "magenta", new_album=True)
            carry_out(journal, plans, Action.CORRECTED, "magenta")
    assert learn.unlearned(taught, meta.classes, meta.version) == 21
    outcome = learn.learn(taught)
    assert outcome.seen == {"magenta": 21} and outcome.as_dict()["seen"] == {"magenta": 21}
    assert learn.unlearned(taught, meta.classes, meta.version) == 0
    with Journal(taught.database) as journal:
        for row_id in ids[21:]:
            carry_out(journal, plan_correct(journal, taught, row_id, "magenta"), Action.CORRECTED, "magenta")
    assert learn.unlearned(taught, meta.classes, meta.version) == 3
    # A version learned on another shipped model counts for nothing.
    assert learn.unlearned(taught, meta.classes, "another-model") == 24


def test_one_change_to_what_is_learned_at_a_time(taught: Settings) -> None:
    with learn.changing(taught) as mine:
        assert mine
        with learn.changing(taught, wait=False) as theirs:
            assert not theirs  # the daemon, while a command holds it, does not wait
    with learn.changing(taught, wait=False) as free:
        assert free


@pytest.mark.slow
def test_the_daemon_learns_by_itself_once_enough_photos_are_labelled(
    taught: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole loop with the defaults: dragged into `magenta`, learned without a command, filed there."""

    monkeypatch.setattr(learn, "LEARN_QUIET_S", 1.0)
    monkeypatch.setattr(learn, "LEARN_CHECK_S", 0.2)
    assert taught.learn_after == 20
    store = VersionStore(taught.learned_dir)
    with RunningDaemon(taught) as daemon:
        assert daemon.library_watched.wait(timeout=30)
        _filed_into_other(taught, daemon, tmp_path)
        _dragged_into_magenta(taught, range(19))
        assert wait_until(lambda: _corrected(taught) == 19, timeout=30)
        time.sleep(2)  # quiet, but 19 are not enough to learn from
        assert store.names() == []
        _dragged_into_magenta(taught, range(19, 21))
        assert wait_until(lambda: store.active() != SHIPPED, timeout=60)
        version = store.active()
        assert wait_until(lambda: daemon._classifier.version == version, timeout=15)
        magenta(tmp_path / "new.jpg", 999).rename(taught.inbox / "new.jpg")
        assert wait_until(lambda: (taught.library / "magenta" / "new.jpg").is_file(), timeout=30)
        time.sleep(2)  # nothing new since: no second learn
    assert store.names() == [version]
    assert store.info(version)["report"]["seen"] == {"magenta": 21}


@pytest.mark.slow
def test_a_daemon_that_cannot_learn_says_so_once_and_goes_on_filing(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain test model has no "other" detector, so nothing can be learned on it."""
    from cened import logsetup

    monkeypatch.setattr(learn, "LEARN_QUIET_S", 0.5)
    monkeypatch.setattr(learn, "LEARN_CHECK_S", 0.1)
    plain = settings.model_copy(update={"learn_after": 1})
    logsetup.configure("json", "info")  # onto the captured stdout
    try:
        with RunningDaemon(plain) as daemon:
            write_photo(tmp_path / "a.jpg", "sea").rename(plain.inbox / "a.jpg")
            assert wait_until(lambda: daemon.filed >= 1, timeout=30)
            with Journal(plain.database) as journal:
                (row,) = journal.history(actions=[Action.MOVED])
                carry_out(journal, plan_correct(journal, plain, row.id, "forest"), Action.CORRECTED, "forest")
            time.sleep(2)  # some twenty looks at what is due
            write_photo(tmp_path / "b.jpg", "street").rename(plain.inbox / "b.jpg")
            assert wait_until(lambda: daemon.filed >= 2, timeout=30)
    finally:
        logsetup.configure("json", "info", stream=sys.__stderr__)  # not onto a closed capture
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "learn-failed"]
    assert len(failed) == 1 and "novelty detector" in failed[0]["error"] and failed[0]["new_labelled"] == 1
    assert VersionStore(plain.learned_dir).names() == []
    assert (plain.library / "street" / "b.jpg").is_file()


def test_the_oldest_versions_never_used_are_forgotten(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cened.ml.versions import KEEP_UNUSED, Learned, new_version_name

    store = VersionStore(tmp_path / "learned")
    head = learning.Head(CLASSES, np.zeros((4, 6), np.float32), np.zeros(6, np.float32), 1.0)
    prototypes = learning.Prototypes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    start = datetime(2026, 11, 26, tzinfo=UTC)
    names = [new_version_name(start + timedelta(minutes=i)) for i in range(KEEP_UNUSED + 5)]
    for i, name in enumerate(names):
        store.add(Learned(name, "base", head, prototypes))
        if i == 1:
            store.use(name)  # in the history: kept whatever its age
    kept = store.names()
    assert kept == [names[1], *names[-KEEP_UNUSED:]]
    assert store.active() == names[1] and store.load(names[1]).version == names[1]


DAMAGED_ACTIVE = {
    "not-utf8": b"\xff\xfe{\x00",
    "garbage": b"{garbage",
    "empty": b"",
    "a-list": b"[]",
    "null": b"null",
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGED_ACTIVE))
def test_a_damaged_active_file_stops_no_command_and_use_or_rollback_mends_it(
    damage: str, taught: Settings, tmp_path: Path
) -> None:
    store = VersionStore(taught.learned_dir)
    store.active_file.parent.mkdir(parents=True)
    store.active_file.write_bytes(DAMAGED_ACTIVE[damage])
    config = write_config(tmp_path / "cened.toml", taught)
    listed = run_cli("model", "list", config=config)
    assert listed.returncode == 0, listed.stderr
    assert "cannot be read" in listed.stdout and "cened model use shipped" in listed.stdout
    albums = run_cli("album", "list", config=config)
    assert albums.returncode == 0 and "in use: unknown" in albums.stdout, albums.stderr
    learned = run_cli("learn", config=config)  # nothing to learn from, which is the only problem
    assert learned.returncode == 1 and "nothing to learn from" in learned.stderr, learned.stderr
    mend = ["model", "use", "shipped"] if damage < "m" else ["model", "rollback"]
    mended = run_cli(*mend, config=config)
    assert mended.returncode == 0 and "in use now: shipped" in mended.stdout, mended.stderr
    assert store.active() == SHIPPED


@pytest.mark.slow
def test_a_damaged_active_file_is_logged_and_the_daemon_keeps_its_model(
    taught: Settings, tmp_path: Path
) -> None:
    """At start and while running: the pump thread lives on, photos are filed by the version in use."""
    good = _learned_magenta(taught, tmp_path)
    store = VersionStore(taught.learned_dir)
    with RunningDaemon(taught) as daemon:
        assert daemon._classifier.version == good
        store.active_file.write_bytes(b"{garbage")
        time.sleep(3)  # the pump looks every 2 s
        magenta(tmp_path / "b.jpg", 901).rename(taught.inbox / "b.jpg")
        assert wait_until(lambda: daemon.filed >= 1, timeout=30)
        assert daemon._classifier.version == good
    assert (taught.library / "magenta" / "b.jpg").is_file()
    # Started with it damaged: the shipped model, the damage logged, photos filed.
    config = write_config(tmp_path / "cened.toml", taught)
    daemon = DaemonProcess(config)
    try:
        refused = daemon.wait_for("model-switch-refused", timeout=90)
        assert "cannot be read" in refused["error"], refused
        daemon.wait_for("started", timeout=60)
        magenta(tmp_path / "c.jpg", 902).rename(taught.inbox / "c.jpg")
        daemon.wait_for("filed", timeout=30)
    finally:
        assert daemon.stop() == 0
    assert (taught.library / "other" / "c.jpg").is_file()


@pytest.mark.parametrize(
    "name,why",
    [
        ("n" * 300, "at most 255 bytes"),
        ("Review", "too like album 'review'"),
        ("two\nlines", "not a usable folder name"),
        ("_quarantine", "folders cened uses itself"),
    ],
)
def test_album_add_refuses_names_in_one_line(taught: Settings, tmp_path: Path, name: str, why: str) -> None:
    for i in range(20):
        magenta(tmp_path / "examples" / f"m{i}.jpg", i)
    config = write_config(tmp_path / "cened.toml", taught)
    done = run_cli("album", "add", name, str(tmp_path / "examples"), config=config)
    assert done.returncode == 1 and why in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (taught.learned_dir / learn.ALBUMS_FILE).exists()


@pytest.mark.slow
def test_correct_refuses_the_names_album_add_refuses(taught: Settings, tmp_path: Path, filing) -> None:
    file, _journal = filing
    (outcome,) = file(write_photo(taught.inbox / "a.jpg", "sea"))
    config = write_config(tmp_path / "cened.toml", taught)
    for name in ("_quarantine", "_duplicates", "Review", "n" * 300):
        done = run_cli("correct", str(outcome.entry.id), name, config=config)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert (taught.library / "sea" / "a.jpg").exists()


@pytest.mark.slow
def test_an_album_of_twenty_thousand_photos_is_learned_in_bounded_memory(
    taught: Settings, tmp_path: Path
) -> None:
    """Peak RSS at most 1 GiB, and a bounded sample of the album kept and learned from."""
    import subprocess

    base = magenta(tmp_path / "base.jpg", 1).read_bytes()
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(20_000):  # distinct photos: bytes after the JPEG's end change its sha256, not its pixels
        (folder / f"m{i:05d}.jpg").write_bytes(base + b"%d" % i)
    config = write_config(tmp_path / "cened.toml", taught)
    measure = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)"
    )
    cmd = [sys.executable, "-c", measure, sys.executable, "-m", "cened", "--config", str(config)]
    out = subprocess.run(
        [*cmd, "album", "add", "magenta", str(folder)], capture_output=True, text=True, timeout=900
    )
    peak_kib, code = map(int, out.stdout.split()[-2:])
    assert code == 0, out.stderr
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    kept = list((taught.learned_dir / "albums" / "magenta").iterdir())
    assert len(kept) == learning.MAX_EXAMPLES
    assert (
        learn.Albums.load(taught.learned_dir).albums["magenta"]["examples"].__len__() == learning.MAX_EXAMPLES
    )

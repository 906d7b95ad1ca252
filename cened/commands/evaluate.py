"""``cened evaluate``: measure a model and write its card (the metrics are cened.training.evaluate)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cened.commands import _common
from cened.errors import ConfigError, require

if TYPE_CHECKING:
    from cened.ml.classifying import Classifier
    from cened.ml.modelpack import ModelMeta
    from cened.training.dataset import Listing

NAME = "evaluate"
HELP = "measure a model on the validation split and write its card"
EXAMPLES = """
cened evaluate --data ~/datasets/landscapes --model models/mine
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cened evaluate``."""
    from cened.training import evaluate

    _common.add_data_argument(parser)
    parser.add_argument(
        "--model", type=Path, default=evaluate.DEFAULT_MODEL, help="model directory (default: %(default)s)"
    )
    parser.add_argument(
        "--split",
        choices=["val", "all"],
        default="val",
        help="'val': the validation split named in the model metadata (writes MODEL_CARD.md); "
        "'all': every image under --data (e.g. a separate test folder)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where to write the PNG/JSON (default: the model directory for --split val)",
    )
    parser.add_argument("--no-tflite", action="store_true", help="evaluate only model.keras")
    parser.add_argument(
        "--preview-sides",
        default="240,160,120",
        help="also measure accuracy through EXIF-style previews of these short sides, in pixels "
        "(what thumbnail_min_side trades; '' to skip; default: %(default)s)",
    )
    parser.add_argument(
        "--ood",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="photos of none of the classes (sub-folders are reported apart): how many the other "
        "decision keeps out of the albums; repeat for several folders",
    )
    parser.add_argument(
        "--unlike",
        type=int,
        default=0,
        metavar="N",
        help="also measure N made-up photos of each kind cened.bench.photos.unlike_photos draws "
        "(documents, screenshots, plain colours and noise)",
    )
    parser.add_argument(
        "--leave-one-kind-out",
        action="store_true",
        help="with --ood (one sub-folder per kind) and a linear other detector: refit the detector "
        "without each kind in turn, as the model's recipe fitted it, and measure that kind on it",
    )
    parser.add_argument(
        "--full-size",
        type=int,
        default=0,
        metavar="N",
        help="also send N validation photos to other through the daemon's decoding of full-size photos: "
        "each enlarged to 12 MP, as a JPEG with a 160 px EXIF preview and as a HEIC",
    )
    parser.add_argument(
        "--learned",
        metavar="VERSION",
        help="measure a learned version (`active` for the one in use; see cened model list) on the "
        "validation split, --albums and --ood, instead of the model itself; writes no card",
    )
    parser.add_argument(
        "--albums",
        type=Path,
        metavar="DIR",
        help="with --learned: DIR/<album>/ photos of your albums that were not among their examples",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        metavar="MODEL_DIR",
        help="also measure the model this one replaces (its own input size) on the validation photos "
        "neither trained on, and put both figures in the card",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also cross-validate the model's training recipe: K models, each trained without one K-th "
        "of every photo under --data (near-duplicates kept together) and measured on it",
    )
    parser.add_argument(
        "--folds-full-epochs",
        type=int,
        metavar="N",
        help="with --folds: epochs of the recipe's last phase (default: the model's own; 0 is ~2x faster)",
    )
    parser.add_argument(
        "--folds-input-size",
        type=int,
        metavar="PX",
        help="with --folds: cross-validate the recipe at this input size instead of the model's own, "
        "to rank sizes before shipping one",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "cened" / "evaluate",
        help="with --folds: where near-duplicate groups and finished folds are kept, so a run "
        "cut off resumes (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    """0, or a :class:`cened.errors.CenedError` raised.

    An unusable model is a :class:`cened.errors.ModelError`; an unusable data
    folder, or ``--split val`` for a model that names no split, a :class:`ConfigError`.
    """
    require("tensorflow", "cened evaluate")
    import numpy as np

    from cened import logsetup
    from cened.bench.photos import unlike_photos
    from cened.ml import modelpack
    from cened.ml.classifying import softmax
    from cened.training import dataset, evaluate

    # Classifier logs what TensorFlow and LiteRT print while loading; stdout is the report.
    logsetup.configure("console", "warning", stream=sys.stderr)
    meta = modelpack.read_meta(args.model)
    try:
        listing = dataset.list_images(args.data, meta.classes)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    everything = listing
    if args.split == "val":
        tr = meta.training
        if "split_seed" not in tr or "val_fraction" not in tr:
            raise ConfigError("the model metadata names no split; use --split all")
        if tr.get("data_sha256") and dataset.data_hash(listing) != tr["data_sha256"]:
            print(
                "warning: --data differs from the training data; the 'validation' split may overlap training",
                file=sys.stderr,
            )
        _, idx = dataset.split_indices(listing.labels, float(tr["val_fraction"]), int(tr["split_seed"]))
        listing = listing.subset(idx)
    if args.learned:
        return _run_learned(args, meta, listing)
    report_dir = args.report_dir or (args.model if args.split == "val" else Path("evaluation"))
    report_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    pixels = dataset.load_pixels(listing.paths, meta.input_size)
    keras_classifier = evaluate.load_classifier(args.model, "keras", args.batch_size)
    t1 = time.monotonic()
    load_s = t1 - t0
    logits = keras_classifier.logits(pixels)
    keras_s = time.monotonic() - t1
    report = evaluate.compute_report(logits, listing.labels, meta.temperature, meta.classes)
    raw = evaluate.compute_report(logits, listing.labels, 1.0, meta.classes)
    _print_report(f"{meta.name} {meta.version} (Keras, {args.split})", report, meta.classes)
    extra: dict[str, Any] = {
        "ece_uncalibrated": raw["ece"],
        "ece_crossfit": evaluate.crossfit_ece(logits, listing.labels),
        "keras_ms_per_image": 1000 * keras_s / len(pixels),
        "file_mb": {n: (args.model / n).stat().st_size / 1e6 for n in meta.files},
    }
    print(
        f"ECE before temperature scaling {_pct(raw['ece'])}; "
        f"with a 2-fold cross-fitted temperature {_pct(extra['ece_crossfit'])}"
    )
    lite_classifier = None
    if modelpack.TFLITE_FILE in meta.files and not args.no_tflite:
        lite_classifier = evaluate.load_classifier(args.model, "tflite", args.batch_size)
        t1 = time.monotonic()
        tl = lite_classifier.logits(pixels)
        tfl_s = time.monotonic() - t1
        trep = evaluate.compute_report(tl, listing.labels, meta.temperature, meta.classes)
        pk, pt = softmax(logits, meta.temperature), softmax(tl, meta.temperature)
        extra["tflite"] = {
            "accuracy": trep["accuracy"],
            "macro_f1": trep["macro_f1"],
            "ece": trep["ece"],
            "agreement": float((pk.argmax(1) == pt.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(pk - pt).max()),
            "ms_per_image": 1000 * tfl_s / len(pixels),
        }
        t = extra["tflite"]
        print(
            f"LiteRT: accuracy {_pct(t['accuracy'])}, macro-F1 {t['macro_f1']:.4f}, ECE {_pct(t['ece'])}, "
            f"top-1 agreement with Keras {_pct(t['agreement'])}, max |dp| {t['max_prob_diff']:.2e}"
        )
    sides = [int(side) for side in args.preview_sides.split(",") if side.strip()]
    if sides:
        # The runtime the daemon would use: LiteRT when it was measured above.
        if lite_classifier is not None:
            runtime, photo, classifier = "LiteRT", extra["tflite"]["accuracy"], lite_classifier
        else:
            runtime, photo, classifier = "Keras", report["accuracy"], keras_classifier
        through = evaluate.preview_accuracy(listing.paths, listing.labels, classifier, sides)
        extra["previews"] = {"runtime": runtime, "photo": photo, "accuracy": through}
        print(
            f"{runtime} through previews: "
            + ", ".join(f"{side} px {_pct(acc)}" for side, acc in through.items())
            + f" (from the photo itself: {_pct(photo)})"
        )
    runner = lite_classifier or keras_classifier
    if args.previous is not None:
        extra["previous"] = evaluate.previous_report(args.previous, listing, args.batch_size, runner)
        p = extra["previous"]
        print(
            f"previous model {p['version']}: accuracy {_pct(p['accuracy'])} ({p['runtime']}); "
            f"this one {_pct(p['this'])}; on {p['photos']} photos"
            + (" neither trained on" if p["unseen_only"] else " (what it trained on is not known here)")
        )
    if runner.detector is not None:
        outliers: dict[str, np.ndarray] = {}
        for folder in args.ood:
            outliers |= evaluate.load_outliers(folder, meta.input_size)
        made: dict[str, np.ndarray] = {}
        if args.unlike:
            with tempfile.TemporaryDirectory() as folder:
                unlike_photos(Path(folder), per_kind=args.unlike)
                made = {
                    f"made: {k}": v for k, v in evaluate.load_outliers(Path(folder), meta.input_size).items()
                }
        outliers |= made
        extra["other"] = evaluate.other_report(runner, pixels, listing.labels, outliers)
        extra["other"]["runtime"] = "LiteRT" if lite_classifier is not None else "Keras"
        extra["other"]["folders"] = [str(folder) for folder in args.ood] + (
            [f"--unlike {args.unlike}"] if args.unlike else []
        )
        _print_other(extra["other"])
        if args.leave_one_kind_out:
            extra["leave_one_kind_out"] = _leave_one_kind_out(args, meta, everything, pixels, runner, made)
        if args.full_size:
            extra["full_size"] = _full_size(args, meta, listing, pixels, runner)
    elif args.ood or args.unlike or args.leave_one_kind_out or args.full_size:
        raise ConfigError(f"{args.model} has no novelty detector to measure (cened train --other-only)")
    print(
        f"Keras {extra['keras_ms_per_image']:.1f} ms/image (batch {args.batch_size}); "
        f"decoding + loading {load_s:.1f} s"
    )

    if args.folds:
        extra["crossval"] = _cross_validate(args, meta, everything)

    title = f"{meta.name} on {args.split}: accuracy {_pct(report['accuracy'])}"
    evaluate.confusion_png(
        np.asarray(report["confusion_matrix"]), meta.classes, report_dir / "confusion_matrix.png", title
    )
    (report_dir / "evaluation.json").write_text(
        json.dumps(
            {"split": args.split, "data": ", ".join(map(str, args.data)), "report": report} | extra, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    if args.split == "val":
        (args.model / "MODEL_CARD.md").write_text(evaluate.model_card(meta, report, extra), encoding="utf-8")
    print(
        f"wrote {report_dir / 'confusion_matrix.png'}, {report_dir / 'evaluation.json'}"
        + (f", {args.model / 'MODEL_CARD.md'}" if args.split == "val" else "")
    )
    return 0


def _leave_one_kind_out(
    args: argparse.Namespace,
    meta: ModelMeta,
    everything: Listing,
    val_pixels: Any,
    runner: Classifier,
    made: dict[str, Any],
) -> dict[str, Any]:
    """``--leave-one-kind-out``: the linear detector refitted without each kind of ``--ood`` in turn."""
    import numpy as np

    from cened.training import dataset, other
    from cened.training.evaluate import DEFAULT_CONFIDENCE

    if not args.ood or args.split != "val":
        raise ConfigError("--leave-one-kind-out needs --ood folders (a sub-folder per kind) and --split val")
    if not meta.novelty.get("linear"):
        raise ConfigError(f"{args.model} has no linear other detector (cened train --other-only --negatives)")
    cfg = other.config_of(meta.novelty)
    tr, va = dataset.split_indices(
        everything.labels, float(meta.training["val_fraction"]), int(meta.training["split_seed"])
    )
    size, n, batch = meta.input_size, len(meta.classes), args.batch_size
    kinds = other.list_kinds(args.ood)
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731
    say(f"leave one kind out: {len(kinds)} kinds; decoding {len(everything.paths)} photos")
    pixels = dataset.load_pixels(everything.paths, size)
    views = [
        other.view_outputs(runner.outputs, pixels, tr, v, cfg.seed, batch) for v in range(cfg.linear_views)
    ]
    reencoded = other.reencoded_outputs(runner.outputs, pixels, tr, cfg, batch)
    positives = np.concatenate(views + ([reencoded] if reencoded is not None else []))[:, n:]
    del pixels
    measured = {
        variant: {
            k: other.Measured.of(v, n)
            for k, v in other.negative_outputs(
                runner.outputs, kinds, size, cfg, batch, degraded=variant == "degraded"
            ).items()
        }
        for variant in ("degraded", "as_is")
    }
    crops = other.crop_outputs(runner.outputs, [everything.paths[i] for i in tr], size, cfg, batch)[:, n:]
    unseen = {name: other.Measured.of(runner.outputs(list(px)), n) for name, px in made.items()}
    result = other.leave_one_kind_out(
        positives,
        other.Measured.of(runner.outputs(list(val_pixels)), n),
        everything.labels[va],
        measured["degraded"],
        measured["as_is"],
        crops,
        cfg,
        temperature=meta.temperature,
        classes=meta.classes,
        confidence=DEFAULT_CONFIDENCE,
        unseen=unseen,
        say=say,
    )
    result["runtime"] = "LiteRT" if runner.backend == "tflite" else "Keras"
    result["folders"] = [str(folder) for folder in args.ood]
    _print_leave_one_kind_out(result)
    return result


def _full_size(
    args: argparse.Namespace, meta: ModelMeta, listing: Listing, val_pixels: Any, runner: Classifier
) -> dict[str, Any]:
    """``--full-size N``: N validation photos as a camera would store them, through the daemon's decoding."""
    from collections import Counter

    import numpy as np

    from cened.config import load_settings
    from cened.ml.classifying import AlbumKind, decide_all
    from cened.pipeline import Verdict, prepare
    from cened.training import other

    per_class = max(1, args.full_size // len(meta.classes))
    rng = np.random.default_rng(int(meta.training.get("split_seed", 0)))
    classes = range(len(meta.classes))
    picked = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(listing.labels == c))[:per_class] for c in classes])
    )
    labels = listing.labels[picked]
    result: dict[str, Any] = {"n": len(picked), "megapixels": 12.0, "preview_side": 160}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = load_settings(
            None, inbox=root / "inbox", library=root / "library", database=root / "state" / "db"
        )
        result["thumbnail_min_side"] = settings.thumbnail_min_side
        print(f"full size: making {len(picked)} photos of 12 MP as JPEG and HEIC", file=sys.stderr)
        made = other.full_size_copies([listing.paths[i] for i in picked], root / "photos")
        ways = {"as is": (list(val_pixels[picked]), Counter({"photo": len(picked)}))}
        for kind, files in made.items():
            prepared = [prepare(path, settings, meta.input_size) for path in files]
            bad = [p for p in prepared if p.verdict != Verdict.DECODED or p.pixels is None]
            if bad:
                why = f"{bad[0].reason} {bad[0].detail or ''}".strip()
                raise ConfigError(f"the daemon could not decode {bad[0].path}: {why}")
            ways[kind] = ([p.pixels for p in prepared], Counter(p.pixel_source for p in prepared))
        for way, (images, sources) in ways.items():
            scores = runner.score(images)
            decided = decide_all(
                scores, threshold=settings.confidence_threshold, albums={}, review_album="review"
            )
            kind = np.array([d.kind for d in decided])
            right = scores.probabilities.argmax(axis=1) == labels
            kept = kind != AlbumKind.OTHER
            result[way] = {
                "to_other": float((~kept).mean()),
                "accuracy": float(right.mean()),
                "accuracy_not_other": float(right[kept].mean()) if kept.any() else float("nan"),
                "decoded_from": dict(sources),
            }
            print(
                f"full size, {way}: {_pct(result[way]['to_other'])} to other, accuracy "
                f"{_pct(result[way]['accuracy'])} ({', '.join(f'{k} {v}' for k, v in sources.items())})",
                file=sys.stderr,
            )
    result["runtime"] = "LiteRT" if runner.backend == "tflite" else "Keras"
    return result


def _cross_validate(args: argparse.Namespace, meta: ModelMeta, listing: Listing) -> dict[str, Any]:
    """``--folds K``: the model's own recipe, trained K times on grouped folds of every photo."""
    import dataclasses

    import numpy as np

    from cened.training import crossval, dataset, groups
    from cened.training.train import TrainConfig

    if args.folds < 2:
        raise ConfigError("--folds needs at least 2")
    if "config" not in meta.training:
        raise ConfigError(f"{args.model} names no training recipe in its metadata")
    recipe = TrainConfig(**meta.training["config"])
    if args.folds_full_epochs is not None:
        recipe = dataclasses.replace(recipe, full_epochs=args.folds_full_epochs)
    if args.folds_input_size is not None:
        recipe = dataclasses.replace(recipe, input_size=args.folds_input_size)
    cache = args.cache / dataset.data_hash(listing)[:16]
    cache.mkdir(parents=True, exist_ok=True)
    grouped = cache / "groups.npy"
    if grouped.is_file():
        near = np.load(grouped)
    else:
        print(f"finding near-duplicates among {len(listing.paths)} photos", file=sys.stderr)
        near, links = groups.near_duplicate_groups(listing.paths)
        np.save(grouped, near)
        print(f"{links} near-duplicate pairs, {near.max() + 1} groups", file=sys.stderr)
    folds = groups.grouped_folds(listing.labels, near, args.folds, recipe.seed)
    checkpoint = cache / f"folds-{args.folds}-{_recipe_digest(recipe)}"
    result = crossval.cross_validate(
        recipe, listing, folds, checkpoint, say=lambda text: print(text, file=sys.stderr)
    )
    report = result.as_dict(recipe) | {"groups": int(near.max()) + 1}
    print(
        f"cross-validated over {args.folds} folds: {_pct(result.mean)} ± {_pct(result.sd)} "
        f"(standard error {_pct(result.se)}); folds " + ", ".join(_pct(f.accuracy) for f in result.folds)
    )
    return report


def _recipe_digest(recipe: Any) -> str:
    import dataclasses
    import hashlib

    return hashlib.sha256(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode()).hexdigest()[:12]


def _run_learned(args: argparse.Namespace, meta: ModelMeta, listing: Listing) -> int:
    """``cened evaluate --learned``: the daemon's classifier with that version, on every kind of photo."""
    import numpy as np

    from cened.ml.versions import VersionStore
    from cened.training import dataset, evaluate

    settings = _common.settings_of(args)
    store = VersionStore(settings.learned_dir)
    version = store.active() if args.learned == "active" else args.learned
    classifier = evaluate.load_classifier(
        args.model, "tflite" if not args.no_tflite else "keras", args.batch_size
    )
    classifier.use(store.load(version) if version != "shipped" else None)
    pixels = dataset.load_pixels(listing.paths, meta.input_size)
    albums = evaluate.load_outliers(args.albums, meta.input_size) if args.albums else {}
    outliers: dict[str, np.ndarray] = {}
    for folder in args.ood:
        outliers |= evaluate.load_outliers(folder, meta.input_size)
    result = evaluate.learned_report(classifier, pixels, listing.labels, albums, outliers)
    v = result["validation"]
    print(f"{result['version']}: classes {', '.join(result['classes'])}")
    print(
        f"validation ({v['n']}): top-1 {_pct(v['accuracy'])}, filed right {_pct(v['filed_right'])}, "
        f"to other {_pct(v['to_other'])}"
    )
    for name, a in result["albums"].items():
        print(
            f"album {name} ({a['n']} not among its examples): precision {_pct(a['precision'])}, "
            f"recall {_pct(a['recall'])}, to other {_pct(a['to_other'])}"
        )
    for name, o in result["none"].items():
        print(f"none of the classes: {name} ({o['n']}): filed {_pct(o['filed'])}")
    report_dir = args.report_dir or Path(f"evaluation-{version}")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "learned.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {report_dir / 'learned.json'}")
    return 0


def _print_report(title: str, report: dict[str, Any], classes: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"[bold]{title}[/bold]: n={report['n']}  accuracy {_pct(report['accuracy'])}  "
        f"macro-F1 {report['macro_f1']:.4f}  ECE {_pct(report['ece'])}  "
        f"(temperature {report['temperature']:.3f})"
    )
    t = Table("class", "precision", "recall", "F1", "support")
    for c in classes:
        r = report["per_class"][c]
        t.add_row(c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    con.print(t)
    cm = Table("true \\ pred", *classes, title="confusion matrix")
    for c, row in zip(classes, report["confusion_matrix"], strict=True):
        cm.add_row(c, *(str(v) for v in row))
    con.print(cm)
    th = Table("threshold", "sent to review", "accuracy of the rest", "filed", title="review threshold")
    for r in report["thresholds"]:
        th.add_row(
            f"{r['threshold']:.2f}", _pct(r["review_share"]), _pct(r["filed_accuracy"]), str(r["filed"])
        )
    con.print(th)


def _print_leave_one_kind_out(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        "kind", "n", "filed (as is)", "filed (degraded)", "other (as is)", title="other, leave one kind out"
    )
    for name, r in result["kinds"].items():
        degraded = _pct(r["degraded"]["filed"]) if "degraded" in r else "never fitted"
        t.add_row(name, str(r["n"]), _pct(r["as_is"]["filed"]), degraded, _pct(r["as_is"]["to_other"]))
    con = Console()
    con.print(t)
    w, v = result["worst"], result["validation"]
    con.print(
        f"worst kind: {w['as_is']['kind']} {_pct(w['as_is']['filed'])} filed as is, "
        f"{w['degraded']['kind']} {_pct(w['degraded']['filed'])} degraded; validation photos to other "
        f"{_pct(v['to_other_mean'])} (at most {_pct(v['to_other_max'])}), accuracy of the rest "
        f"{_pct(v['accuracy_not_other_mean'])} (without the detector {_pct(v['accuracy_without_detector'])})"
    )


def _print_other(other: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    inl = other["inliers"]
    con = Console()
    con.print(
        f"[bold]other[/bold] (novelty threshold {other['threshold']:.4f}): validation photos sent to other "
        f"{_pct(inl['to_other'])}, to review {_pct(inl['to_review'])}; accuracy of the rest "
        f"{_pct(inl['accuracy_not_other'])}, of those filed {_pct(inl['accuracy_filed'])}"
    )
    t = Table("photos of none of the classes", "n", "filed in an album", "other", "review", "AUROC")
    rows = [*other["outliers"].items()]
    if "outliers_all" in other:
        rows.append(("all", {**other["outliers_all"], "to_other": None, "to_review": None}))
    for name, r in rows:
        t.add_row(
            name,
            str(r["n"]),
            _pct(r["filed"]),
            _pct(r["to_other"]) if r["to_other"] is not None else "",
            _pct(r["to_review"]) if r["to_review"] is not None else "",
            f"{r['auroc']:.4f}",
        )
    con.print(t)


def _pct(x: float) -> str:
    return _common.pct(x, 2)

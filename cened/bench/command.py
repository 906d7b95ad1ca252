"""``cened bench``: how fast the daemon is, next to how fast it could be.

One run measures, on the same machine and model, the figures that only mean
something side by side:

* the **limit** -- the model alone on pre-decoded tensors, at its best batch
  size, for both runtimes (so the default runtime is a measured choice);
* the **daemon** end to end, as a subprocess on temporary folders: photos
  appear in the inbox, and the clock stops at the last ``filed`` log line;
  once for small (150 px) JPEGs, once for realistic 12-megapixel ones (with
  the EXIF preview a phone embeds), once for 12-megapixel ones without it, and
  once as cameras write them (a 160x120 EXIF preview and a large MPF preview);
  then for 12-megapixel HEIC photos, with the thumbnail an iPhone embeds, with
  one too small for the model, and without;
* the **naive baseline** -- one file at a time, full decode, ``model.predict``
  -- the way the original notebook sorted photos;
* idle **latency** from one drop to ``filed``, **peak memory** and **cold start**;
* the **near-duplicate lookup** of one photo against libraries of growing size.

This module is :func:`measure`, which runs the parts in order (the command's
options and output are :mod:`cened.commands.bench`).  :mod:`~cened.bench.model`
times the model alone, :mod:`~cened.bench.e2e` the daemon, :mod:`~cened.bench.report`
states the ratios and prints them; :mod:`~cened.bench.compare` is ``--compare``
and :mod:`~cened.bench.against` is ``--against``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from cened.bench.e2e import TIMED_SETTINGS, daemon_figures, spread_warnings
from cened.bench.lookup import lookup_costs
from cened.bench.model import daemon_backend, decoded, limit_rates, naive_throughput, raw_limits, stage_costs
from cened.bench.photos import CAMERA_THUMBNAIL, LARGE, MPF_PREVIEW, PREVIEW, SMALL, image_set
from cened.bench.plan import Plan, say
from cened.bench.report import ratios
from cened.config import Settings


def measure(plan: Plan, settings: Settings, model: Path, cache: Path, images: Path | None) -> dict[str, Any]:
    """Every figure, in the order that keeps them from disturbing one another."""
    from cened.ml import modelpack

    say(f"model {model}")
    model_meta = modelpack.read_meta(model)
    input_size = model_meta.input_size
    meta = {
        "path": str(model),
        "version": model_meta.version,
        "input_size": list(input_size),
        "backend": daemon_backend(settings, model),
    }
    large_label = "12MP" if plan.large_size == LARGE else f"{plan.large_size[0]}x{plan.large_size[1]}"
    heic = functools.partial(image_set, cache, plan.large_size, plan.heic_count, say=say, heic=True)
    sets = {
        "150px": image_set(cache, SMALL, plan.small_count, say=say),
        large_label: image_set(cache, plan.large_size, plan.large_count, PREVIEW, say=say),
        f"{large_label}-no-preview": image_set(cache, plan.large_size, plan.large_count, say=say),
        # As cameras write it: an EXIF preview too small for the model, a large MPF preview after the photo.
        f"{large_label}-camera-mpf": image_set(
            cache, plan.large_size, plan.large_count, CAMERA_THUMBNAIL, say=say, mpf=MPF_PREVIEW
        ),
        # HEIC as iPhones write it: with its thumbnail item (PREVIEW's size), and without one;
        # and with a thumbnail below thumbnail_min_side, which the daemon must decode past.
        f"{large_label}-heic": heic(PREVIEW),
        f"{large_label}-heic-small-thumbnail": heic(CAMERA_THUMBNAIL),
        f"{large_label}-heic-no-thumbnail": heic(None),
    }
    if images is not None:
        sets["yours"] = user_images(images)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": meta,
        "settings": {k: getattr(settings, k) for k in TIMED_SETTINGS},
        "plan": asdict(plan),
        "sets": {name: _describe(files) for name, files in sets.items()},
    }
    result["stages_ms"] = {
        name: stage_costs(files[:16], input_size, settings) for name, files in sets.items()
    }
    result["near_duplicate_lookup_ms"] = lookup_costs(sets["150px"][:64], input_size, plan.lookup_sizes)
    # The limit is measured a round at a time between the daemon runs, so that
    # a burst of load from elsewhere hits both sides of their ratio alike; the
    # other runtime and the naive loop import TensorFlow, so they come last.
    pool = decoded(sets["150px"], input_size)
    limits = limit_rates(model, settings, meta["backend"], pool, plan)

    def limit_round() -> None:
        for rates in limits:
            rates.measure_round()

    result.update(daemon_figures(plan, settings, model, sets, cache, between=limit_round))
    result["warnings"] = spread_warnings(result["e2e"])
    for warning in result["warnings"]:
        say(f"warning: {warning}")
    result["raw"] = raw_limits(model, settings, limits, plan)
    result["naive"] = {
        name: naive_throughput(
            model, files[: plan.naive_count if name == "150px" else max(2, plan.naive_count // 4)], plan
        )
        for name, files in sets.items()
    }
    result["machine"]["load_after"] = list(os.getloadavg())
    result["ratios"], result["targets"] = ratios(result, large_label)
    return result


def user_images(folder: Path) -> list[Path]:
    from cened.config import DEFAULT_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DEFAULT_EXTENSIONS)
    if not files:
        raise SystemExit(f"cened bench: no images in {folder}")
    return files


def _describe(files: Sequence[Path]) -> dict[str, Any]:
    sizes = [f.stat().st_size for f in files]
    return {"count": len(files), "mean_mb": round(statistics.fmean(sizes) / 1e6, 3)}


def machine_info() -> dict[str, Any]:
    """What the figures depend on, so two runs can be compared honestly."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "ai-edge-litert",
        "pillow",
        "pillow-heif",
        "rawpy",
        "simplejpeg",
        "numpy",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_before": list(os.getloadavg()),
    }

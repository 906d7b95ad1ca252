"""``cened bench --against MODEL_DIR``: what a model change costs, in paired rounds.

Two models' limits timed one after the other can differ by the load that came
and went in between.  Here both run the model limit (:class:`ModelRates`, the
daemon's ``Classifier.score``) with the same runtime, threads, copies and batch
sizes on the same photos, each decoded for its own model's input size, and
take turns round by round.  The figure that counts is the median over rounds
of this model's CPU per image divided by the other's in the *same* round, at
the daemon's call size (``model_batch_size``).
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from cened.bench.model import ModelRates, daemon_backend, decoded
from cened.bench.photos import SMALL, image_set
from cened.bench.plan import Plan, say
from cened.config import Settings

#: Photos decoded for the limit; :func:`cened.bench.model.decoded` keeps no more.
POOL = 64


def against(plan: Plan, settings: Settings, model: Path, other: Path, cache: Path) -> dict[str, Any]:
    """Both models' limits by batch size, round by round, and the paired ratio of their CPU per image."""
    from cened.errors import ModelError
    from cened.ml import modelpack
    from cened.ml.classifying import model_copies, usable_cores
    from cened.ml.versions import VersionStore

    call = settings.model_batch_size
    # The daemon's call size is always measured, whatever --batch-sizes says.
    plan = replace(plan, batch_sizes=tuple(sorted({*plan.batch_sizes, call})))
    backend = daemon_backend(settings, model)
    copies = model_copies(backend, settings.model_workers, settings.model_threads or usable_cores())
    files = image_set(cache, SMALL, min(POOL, plan.small_count), say=say)
    limits = []
    for role, path in (("model", model), ("against", other)):
        say(f"{role} {path}")
        try:
            meta = modelpack.read_meta(path)
            pool = decoded(files, meta.input_size)
            # Your model as the daemon runs it: with the learned version in use, if any
            # (so `--against` the shipped model measures what learning costs).
            learned = None
            if role == "model" and path.resolve() == settings.model.resolve():
                learned = VersionStore(settings.learned_dir).load_active()
            name = f"{path.name}+{learned.version}" if learned else path.name
            limits.append(
                ModelRates(
                    path,
                    backend,
                    settings.model_threads,
                    pool,
                    plan,
                    workers=copies,
                    name=name,
                    learned=learned,
                )
            )
        except ModelError as exc:  # not a model, or one without the runtime the daemon picks for yours
            raise SystemExit(f"cened bench: --against: {exc}") from exc
    this, that = limits
    for round_ in range(plan.repeats):
        say(f"against: round {round_ + 1}/{plan.repeats}")
        this.measure_round()
        that.measure_round()
    paired = [a / b for a, b in zip(this.cpu_ms[call], that.cpu_ms[call], strict=True)]
    return {
        "backend": this.label,
        "settings": {
            k: getattr(settings, k) for k in ("backend", "model_threads", "model_workers", "model_batch_size")
        },
        "plan": {"rounds": plan.repeats, "batch_sizes": list(plan.batch_sizes), "photos": len(files)},
        "model": _entry(model, this, call),
        "against": _entry(other, that, call),
        "cpu_ratio": round(statistics.median(paired), 3),
        "cpu_ratio_runs": [round(r, 3) for r in paired],
    }


def _entry(path: Path, rates: ModelRates, call: int) -> dict[str, Any]:
    """One model's figures: at the daemon's call size, at its best batch, and by batch size."""
    meta = rates.classifier.meta
    version = rates.classifier.version  # with a learned version, its name
    novelty = rates.classifier.detector is not None
    ips = rates.medians()  # also frees the runtime
    best = max(ips, key=lambda batch: ips[batch])
    return {
        "path": str(path),
        "version": version,
        "input_size": list(meta.input_size),
        "novelty": novelty,
        "call": {"batch": call, "ips": ips[str(call)], "cpu_ms_per_image": rates.cpu_ms_per_image(call)},
        "best": {"batch": int(best), "ips": ips[best], "cpu_ms_per_image": rates.cpu_ms_per_image(int(best))},
        "ips_by_batch": ips,
        "cpu_ms_by_batch": {str(b): rates.cpu_ms_per_image(b) for b in rates.plan.batch_sizes},
    }


def _by_batch(entry: dict[str, Any]) -> str:
    return "  ".join(f"{b}:{r:.1f}" for b, r in entry["ips_by_batch"].items())


def print_against(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    this, that = result["model"], result["against"]
    call = this["call"]["batch"]
    table = Table(
        title=f"model limit on {result['backend']}, {result['plan']['photos']} pre-decoded photos, "
        f"medians of {result['plan']['rounds']} paired rounds",
        header_style="bold",
    )
    table.add_column("figure", no_wrap=True)
    for name, entry in (("this model", this), ("--against", that)):
        table.add_column(f"{name}\n{Path(entry['path']).name} ({entry['version']})", justify="right")
    table.add_column("unit")

    def row(figure: str, unit: str, value: Any) -> None:
        table.add_row(figure, str(value(this)), str(value(that)), unit)

    row("input size", "px", lambda e: "×".join(map(str, e["input_size"])))
    row("novelty detector", "", lambda e: "yes" if e["novelty"] else "no")
    row(f"batch {call} (model_batch_size)", "images/s", lambda e: f"{e['call']['ips']:.1f}")
    row("  CPU per image, all threads", "ms", lambda e: f"{e['call']['cpu_ms_per_image']:.2f}")
    row("best batch", "", lambda e: e["best"]["batch"])
    row("  at the best batch", "images/s", lambda e: f"{e['best']['ips']:.1f}")
    row("  CPU per image, all threads", "ms", lambda e: f"{e['best']['cpu_ms_per_image']:.2f}")
    row("by batch size", "images/s", _by_batch)
    console = Console(file=sys.stdout)
    console.print(table)
    runs = " ".join(f"{r:.3f}" for r in result["cpu_ratio_runs"])
    console.print(
        f"CPU per image at batch {call}, this model ÷ --against: [bold]{result['cpu_ratio']:.3f}[/] "
        f"(median of the per-round ratios {runs})"
    )

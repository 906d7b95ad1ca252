"""``cened bench --compare``: which settings make the daemon faster, in paired runs.

On a shared machine the same figure moves by several percent within minutes,
so two settings timed one after the other can look different when they are
not.  Here every setting runs once per round, in turn, one burst each, and the
figure that counts is the median over rounds of each setting's rate divided by
the baseline's in the *same* round: load that comes and goes hits both sides of
each ratio alike.  The baseline is the configured settings; each ``--compare``
names the keys it changes (``model_workers=1,model_batch_size=4``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cened.bench.e2e import drop_burst, workspace
from cened.bench.photos import SMALL, image_set
from cened.bench.plan import Plan, say
from cened.bench.process import DaemonProcess
from cened.config import Settings

#: Paired rounds of ``--compare`` when ``--repeats`` is not given.
COMPARE_ROUNDS = 5


def parse_variant(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` as ``{"a": 1, "b": "x"}``; values are read as JSON where they can be."""
    variant: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in Settings.model_fields:
            raise SystemExit(f"--compare: {part!r} is not KEY=VALUE with a setting from config.example.toml")
        try:
            variant[key.strip()] = json.loads(value)
        except ValueError:
            variant[key.strip()] = value.strip()
    return variant


def _idle_cores() -> tuple[int, int]:
    """Idle and total jiffies of all CPUs so far (``/proc/stat``), or zeros where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0, 0
    return fields[3], sum(fields)


def compare(
    plan: Plan, settings: Settings, model: Path, cache: Path, variants: list[dict[str, Any]]
) -> dict[str, Any]:
    """Images/s of the daemon per setting, round by round, and the paired ratios to the baseline."""
    count = plan.small_count
    files = image_set(cache, SMALL, count, say=say)
    configs = [{}, *variants]
    rates: list[list[float]] = [[] for _ in configs]
    idle: list[list[float]] = [[] for _ in configs]
    cores = os.cpu_count() or 1  # /proc/stat counts every CPU of the machine
    for round_ in range(plan.repeats):
        for i, overrides in enumerate(configs):
            say(f"compare: round {round_ + 1}/{plan.repeats}, {_label(overrides)}")
            with workspace(cache) as ws:
                daemon = DaemonProcess(ws.config(settings, model, stable_seconds=0, **overrides))
                try:
                    daemon.wait_started()
                    time.sleep(0.3)  # let start-up settle before the clock runs
                    idle0, total0 = _idle_cores()
                    burst = drop_burst(daemon, ws, files, f"r{round_}")
                    idle1, total1 = _idle_cores()
                finally:
                    daemon.stop(30, or_kill=True)
            rates[i].append(burst.ips)
            if total1 > total0:
                idle[i].append(cores * (idle1 - idle0) / (total1 - total0))
    rows = []
    for i, overrides in enumerate(configs):
        paired = [a / b for a, b in zip(rates[i], rates[0], strict=True)]
        rows.append(
            {
                "settings": overrides,
                "runs": [round(r, 1) for r in rates[i]],
                "ips": round(statistics.median(rates[i]), 1),
                "vs_baseline": round(statistics.median(paired), 3),
                "idle_cores": round(statistics.median(idle[i]), 3) if idle[i] else None,
            }
        )
    return {"photos_per_burst": count, "rounds": plan.repeats, "results": rows}


def _label(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "your settings"


def print_comparison(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"daemon end to end, {result['photos_per_burst']} × 150 px photos per burst, "
        f"medians of {result['rounds']} paired rounds",
        header_style="bold",
    )
    table.add_column("settings", no_wrap=True)
    for column in ("images/s", "× yours", "idle CPUs", "runs"):
        table.add_column(column, justify="right")
    for row in result["results"]:
        idle = "" if row["idle_cores"] is None else f"{row['idle_cores']:.2f}"
        runs = " ".join(f"{r:.0f}" for r in row["runs"])
        table.add_row(_label(row["settings"]), f"{row['ips']:.1f}", f"{row['vs_baseline']:.3f}", idle, runs)
    Console(file=sys.stdout).print(table)

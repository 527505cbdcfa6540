"""Turn benchmark rows into speed-ups, JSON and a PNG (the article's claims are judged in ``claims``).

Building renderables and files lives here; printing them is the CLI's job.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tangtoc.bench.cases import BenchConfig, Row
from tangtoc.bench.claims import Claim
from tangtoc.device import cpu_cores, cpu_model
from tangtoc.files import write_atomic
from tangtoc.schemas import stamp


def add_speedups(rows: Sequence[Row]) -> None:
    """Set ``metrics["speedup_vs_cpu"]`` on every accelerator row that has a CPU row for the same case.

    Matmul rows of every GPU dtype are compared with the CPU's float32 row of the same size: the question
    a user asks is "how much faster is my GPU than my CPU at this product", whatever precision each uses.
    """
    cpu: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.device == "cpu" and r.measurement is not None:
            cpu[(r.suite, r.case)] = r.measurement.median
    for r in rows:
        base = cpu.get((r.suite, r.case))
        if r.device != "cpu" and r.measurement is not None and base is not None:
            r.metrics["speedup_vs_cpu"] = base / r.measurement.median


def metadata(cfg: BenchConfig, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Who produced the numbers: machine, CPU, GPUs, versions, date, threads, command."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "threads": cfg.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "devices": {name: info.name for name, info in cfg.infos.items()},
        "command": " ".join(argv if argv is not None else sys.argv),
        "full": cfg.full,
        "min_time_s": cfg.min_time,
    }


def write_json(path: Path, rows: Iterable[Row], meta: dict[str, Any], claims: Iterable[Claim] = ()) -> None:
    """Write every row with its measurement and the metadata; replaced atomically so a reader never sees half.
    Raises :class:`~tangtoc.errors.OutputError` when the file cannot be written."""
    data = {"metadata": meta, "rows": [r.to_dict() for r in rows], "seed_claims": [asdict(c) for c in claims]}
    write_atomic(path, json.dumps(stamp("tangtoc.bench", data), indent=2))


def plot(path: Path, rows: Sequence[Row]) -> None:
    """Three log-log panels: time per call vs size, GPU/CPU speed-up vs size, bandwidth vs size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s, ax_b) = plt.subplots(1, 3, figsize=(17, 5))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    speed: dict[str, list[tuple[int, float]]] = defaultdict(list)
    bandwidth: dict[str, list[tuple[int, float]]] = defaultdict(list)
    # Host<->device copies where a GPU was measured; otherwise the bandwidth the small ops reached in memory.
    bandwidth_suite = "transfer" if any(r.suite == "transfer" and r.measurement for r in rows) else "small-ops"
    for r in rows:
        if r.measurement is None or r.suite not in ("matmul", "small-ops", "transfer"):
            continue
        op = r.case.split()[0] if r.suite != "transfer" else r.case
        key = f"{op} {r.dtype} {r.device}"
        if r.suite != "transfer":
            series[key].append((r.size, r.measurement.median))
        if r.metrics.get("speedup_vs_cpu"):
            speed[key].append((r.size, r.metrics["speedup_vs_cpu"]))
        if r.metrics.get("gbps") and r.suite == bandwidth_suite:
            bandwidth[key].append((r.size * (1 if r.suite == "transfer" else 4), r.metrics["gbps"]))
    for ax, data, title, xlabel, ylabel in (
        (ax_t, series, "time per call", "size (n for matmul, elements for ops)", "seconds"),
        (ax_s, speed, "GPU speed-up over CPU", "size", "speed-up (x)"),
        (
            ax_b,
            bandwidth,
            f"bandwidth ({'host<->device copies' if bandwidth_suite == 'transfer' else 'small ops'})",
            "bytes",
            "GB/s",
        ),
    ):
        for label, points in sorted(data.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set(xscale="log", yscale="log", title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if data:
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.text(0.5, 0.5, "no GPU present:\nnothing to compare", ha="center", va="center", transform=ax.transAxes)
    if speed:
        ax_s.axhline(1, color="grey", linewidth=0.8)
    fig.suptitle("tangtoc bench: " + ", ".join(sorted({r.device for r in rows})) + f" | torch {torch.__version__}")
    fig.tight_layout()
    try:
        write_atomic(path, lambda f: fig.savefig(f, dpi=110, format="png"))  # PNG whatever the name
    finally:
        plt.close(fig)

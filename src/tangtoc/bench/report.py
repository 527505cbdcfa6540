"""Turn benchmark rows into speed-ups, the seed-claims summary, JSON and a PNG.

Building renderables and files lives here; printing them is the CLI's job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tangtoc.bench.cases import BenchConfig, Row
from tangtoc.device import cpu_cores, cpu_model
from tangtoc.units import fmt_duration


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
    """Write every row with its measurement and the metadata; replaced atomically so a reader never sees half."""
    data = {"metadata": meta, "rows": [r.to_dict() for r in rows], "seed_claims": [c.__dict__ for c in claims]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims (section 6.2), what was measured here, and the verdict."""

    claim: str
    measured: str
    verdict: str  # "confirmed", "not confirmed", "not measured", ...


def seed_claims(rows: Sequence[Row]) -> list[Claim]:
    """Check the seed's three speed claims against the rows; says plainly when there was no GPU."""
    gpu_rows = [r for r in rows if r.device != "cpu" and r.measurement is not None]
    claims: list[Claim] = []
    small = [
        r.metrics["speedup_vs_cpu"]
        for r in rows
        if r.suite == "small-ops" and r.size <= 10_000 and r.metrics.get("speedup_vs_cpu")
    ]
    small_cpu = [r for r in rows if r.suite == "small-ops" and r.device == "cpu" and r.measurement and r.size == 100]
    if small:
        lo, hi = min(small), max(small)
        verdict = "confirmed" if lo >= 2 and hi <= 5 else ("GPU slower or equal" if hi <= 1 else "partly")
        claims.append(
            Claim("GPU is 2-5x faster on small operations", f"{lo:.2f}x to {hi:.2f}x (<= 1e4 elements)", verdict)
        )
    else:
        cpu_us = ", ".join(
            f"{r.case.split()[0]} {r.measurement.median * 1e6:.1f} us" for r in small_cpu if r.measurement
        )
        claims.append(
            Claim(
                "GPU is 2-5x faster on small operations",
                f"no GPU present; CPU per call at 100 elements: {cpu_us or 'not run'}",
                "not measured",
            )
        )
    big = [r for r in rows if r.suite == "matmul" and r.metrics.get("speedup_vs_cpu")]
    if big:
        top = max(big, key=lambda r: (r.size, r.metrics["speedup_vs_cpu"] or 0))
        claims.append(
            Claim(
                "with large matrices the gap is much larger",
                f"{top.metrics['speedup_vs_cpu']:.0f}x at n={top.size} ({top.dtype} on {top.device} vs CPU float32)",
                "confirmed" if (top.metrics["speedup_vs_cpu"] or 0) > 5 else "not confirmed",
            )
        )
    else:
        cpu_mm = [r for r in rows if r.suite == "matmul" and r.device == "cpu" and r.measurement]
        best = max(cpu_mm, key=lambda r: r.size, default=None)
        claims.append(
            Claim(
                "with large matrices the gap is much larger",
                f"no GPU present; CPU float32 at n={best.size}: {best.metrics['tflops'] * 1e3:.0f} GFLOP/s"
                if best
                else "no GPU present; matmul not run",
                "not measured",
            )
        )
    gpt = {r.device: r for r in rows if r.suite == "gpt2" and r.measurement is not None}
    cpu_gpt = gpt.get("cpu")
    gpu_gpt = next((r for d, r in gpt.items() if d != "cpu"), None)
    if cpu_gpt and gpu_gpt:
        claims.append(
            Claim(
                "GPT-2 training: tens of minutes on CPU -> seconds on GPU",
                f"{fmt_duration(cpu_gpt.metrics['projected_s'])} on CPU vs "
                f"{fmt_duration(gpu_gpt.metrics['projected_s'])} on {gpu_gpt.device} for {cpu_gpt.note}",
                "confirmed"
                if (cpu_gpt.metrics["projected_s"] or 0) / (gpu_gpt.metrics["projected_s"] or 1) > 20
                else "not confirmed",
            )
        )
    else:
        claims.append(
            Claim(
                "GPT-2 training: tens of minutes on CPU -> seconds on GPU",
                f"no GPU present; CPU: {fmt_duration(cpu_gpt.metrics['projected_s'])} for {cpu_gpt.note}"
                if cpu_gpt
                else "gpt2 suite not run",
                "not measured" if not gpu_rows else "not run on both devices",
            )
        )
    return claims


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
    fig.savefig(path, dpi=110, format="png")  # PNG whatever the name: plot.out stays plot.out
    plt.close(fig)

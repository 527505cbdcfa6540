"""Shared by the training benchmarks (loop_overhead, loader_overhead, gpt_mini_throughput): who ran it, timing
whole runs so that fixed costs cancel, ratios measured within each round, a table, a verdict, JSON.

Not a benchmark itself. The scripts import it from their own folder (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tangtoc.device import cpu_cores, cpu_model

RunFn = Callable[[int], object]  # run(n): a complete run of n training steps, from a fresh model


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(**extra: Any) -> dict[str, Any]:
    """Date, command, machine, versions and load: what every number needs beside it."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "tangtoc": version("tangtoc"),
        "accelerate": version("accelerate"),
        "lightning": version("lightning"),
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **extra,
    }


def wall(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes. Everything here runs on the CPU, where no synchronisation is needed;
    this is the one place these benchmarks read a clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_step_rounds(
    contenders: dict[str, RunFn], short: int, long: int, rounds: int, *, offset: int = 0, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds per training step of each contender, one value per round.

    Each value is ``(T(long) - T(short)) / (long - short)`` where ``T(n)`` is a complete run of ``n`` steps:
    set-up, start-up and first-step costs appear in both runs and cancel, leaving the steady-state step. Each
    round runs every contender once, in an order rotated by one each round, so machine noise of the moment
    falls on all of them alike. A caller that saves after every round calls this with ``rounds=1``, the round's
    number as ``offset`` (it sets the rotation) and ``warm_up`` only the first time.
    """
    names = list(contenders)
    if warm_up:
        for name in names:  # discarded: imports, allocator, first-call paths
            contenders[name](short)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(offset, offset + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            run = contenders[name]
            t_short = wall(lambda run=run: run(short))
            t_long = wall(lambda run=run: run(long))
            out[name].append((t_long - t_short) / (long - short))
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    median_s: float  # per step (or per epoch for the loader benchmark)
    ratio: float  # baseline time / this time: the rate relative to the baseline, > 1 is faster
    ratio_min: float
    ratio_max: float
    rounds: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_s": self.median_s,
            "rate_vs_baseline": self.ratio,
            "rate_vs_baseline_min": self.ratio_min,
            "rate_vs_baseline_max": self.ratio_max,
            "round_values_s": self.rounds,
        }


def summarise(times: dict[str, list[float]], baseline: str) -> dict[str, Summary]:
    """Per contender: median time and the rate relative to ``baseline``, as the median of the ratios measured
    within each round (same moment, same machine state)."""
    base = times[baseline]
    out = {}
    for name, values in times.items():
        ratios = [b / v for b, v in zip(base, values, strict=True)]
        out[name] = Summary(
            name, statistics.median(values), statistics.median(ratios), min(ratios), max(ratios), values
        )
    return out


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    met: bool | None  # None: could not be checked
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.text, "met": self.met, "detail": self.detail}


def print_report(
    title: str, unit: str, summaries: dict[str, Summary], baseline: str, goals: Sequence[Goal], meta: dict[str, Any]
) -> None:
    console = Console(highlight=False, width=120)
    console.print(
        f"{meta['cpu_model']}, {meta['cpu_cores']} cores, torch {meta['torch']} ({meta['torch_threads']} thread(s)), "
        f"Python {meta['python']}, load average {meta['load_average_1_5_15']}",
        markup=False,
    )
    table = Table(title=escape(title), title_justify="left")
    for i, col in enumerate(("contender", unit, f"rate vs {baseline} (median of rounds)", "min–max over rounds")):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for s in summaries.values():
        scale, suffix = (1e6, "µs") if s.median_s < 1e-3 else (1e3, "ms")
        table.add_row(
            escape(s.name),
            f"{s.median_s * scale:.1f} {suffix}",
            f"{s.ratio:.3f}×",
            f"{s.ratio_min:.3f}–{s.ratio_max:.3f}×",
        )
    console.print(table)
    console.print("Goals:")
    for g in goals:
        verdict = "NOT CHECKED" if g.met is None else "MET" if g.met else "MISSED"
        console.print(f"  {g.text}: {verdict} — {g.detail}", markup=False)
    checked = [g for g in goals if g.met is not None]
    missed = [g for g in checked if not g.met]
    if not checked:
        console.print("Verdict: no goal could be checked.")
    elif missed:
        console.print(f"Verdict: {len(missed)} of {len(checked)} checked goals MISSED (as measured; see above).")
    else:
        console.print(f"Verdict: all {len(checked)} checked goals met.")


def write_json(
    path: Path | None, meta: dict[str, Any], summaries: dict[str, Summary], goals: Sequence[Goal], **extra: Any
) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "metadata": meta,
        "results": {k: s.to_dict() for k, s in summaries.items()},
        "goals": [g.to_dict() for g in goals],
        **extra,
    }
    path.write_text(json.dumps(payload, indent=2))


def assert_same_parameters(reference: torch.nn.Module, other: torch.nn.Module, who: str, *, rtol: float = 1e-5) -> None:
    """Never time a wrong loop: after the same steps, ``other`` must hold ``reference``'s parameters."""
    for (name, a), b in zip(reference.state_dict().items(), other.state_dict().values(), strict=True):
        if not torch.allclose(a, b, rtol=rtol, atol=1e-6):
            raise AssertionError(f"{who} trained differently from the reference loop: {name} differs")

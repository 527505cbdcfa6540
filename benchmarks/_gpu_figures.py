"""The figures of ``gpu_check``: each step's outputs read back into key figures with a unit, a goal and a verdict.

A reader never assumes its step finished: a step cut short by its time limit leaves partial JSON (or none), and
the figures it can still give are given, the others are ``not measured``. Not a benchmark itself.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# -- goals and verdicts -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    """``value op target``, e.g. ``>= 50``; ``within`` means target**-1 <= value <= target."""

    op: str
    target: float
    text: str

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.target
        if self.op == "<":
            return value < self.target
        if self.op == "within":
            return 1 / self.target <= value <= self.target
        raise ValueError(f"unknown goal operator {self.op!r}")


@dataclass(slots=True)
class Figure:
    """One key figure: what, how much, in which unit, against which goal, and the verdict."""

    step: str
    name: str
    value: float | None
    unit: str
    goal: Goal | None = None
    note: str = ""
    verdict: str = ""

    def judge(self, rehearsal: bool) -> Figure:
        if self.goal is None:
            self.verdict = "recorded" if self.value is not None else "not measured"
        elif self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            self.verdict = "not measured"
        elif rehearsal:
            self.verdict = "not measured"
            self.note = "; ".join(filter(None, [self.note, "rehearsal on the CPU: the goal is for the GPU"]))
        else:
            self.verdict = "met" if self.goal.met(self.value) else "missed"
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["goal"] = self.goal.text if self.goal else None
        return d


# -- reading what each step wrote -----------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any] | None:
    """A step's JSON, or None when it wrote none (or a torn one: the step was killed mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _bench_rows(path: Path, suite: str) -> list[dict[str, Any]]:
    data = _load(path)
    return [r for r in (data or {}).get("rows", []) if r["suite"] == suite and r.get("measurement")]


def _gpu(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["device"] != "cpu"]


def device_figures(work: Path) -> list[Figure]:
    data = _load(work / "doctor.json")
    devices = (data or {}).get("environment", {}).get("devices", [])
    gpu = next((d for d in devices if d["kind"] != "cpu"), None)
    peak = ((gpu or {}).get("peak_flops") or {}).get("bfloat16")
    source = (gpu or {}).get("spec_source") or "not in tangtoc's hardware table"
    name = gpu["name"] if gpu else "no GPU"
    return [
        Figure(
            "device", "published dense bf16 peak", peak / 1e12 if peak else None, "TFLOP/s", None, f"{name}; {source}"
        )
    ]


MATMUL_GOALS = {"float32": 50.0, "tf32": 50.0, "bfloat16": 70.0}  # % of the published dense peak


def matmul_figures(work: Path) -> list[Figure]:
    rows = _bench_rows(work / "matmul.json", "matmul")
    figures = []
    for dtype, pct in MATMUL_GOALS.items():
        mine = [r for r in _gpu(rows) if r["dtype"] == dtype and r["metrics"].get("tflops")]
        best = max(mine, key=lambda r: r["metrics"]["tflops"], default=None)
        value = best["metrics"].get("pct_peak") if best else None
        note = f"{best['metrics']['tflops']:.1f} TFLOP/s at n={best['size']}" if best else "no GPU row"
        figures.append(
            Figure(
                "matmul",
                f"matmul {dtype}: best of the sizes",
                value,
                "% of peak",
                Goal(">=", pct, f">= {pct:g}% of peak"),
                note,
            )
        )
    return figures


def _link(telemetry: dict[str, Any]) -> str:
    """The PCIe link NVML reported, which bounds every host<->device copy, with what limits it."""
    if not telemetry.get("link_bytes_per_s"):
        return ""
    text = (f"; link PCIe Gen{telemetry['pcie_max_gen']} x{telemetry['pcie_max_width']}: "
            f"{telemetry['link_bytes_per_s'] / 1e9:.1f} GB/s each way")  # fmt: skip
    return text + "".join(f" ({limit})" for limit in telemetry.get("link_limits", []))


def transfer_figures(work: Path) -> list[Figure]:
    rows = _gpu(_bench_rows(work / "transfer.json", "transfer"))
    nvml = ((_load(work / "transfer.json") or {}).get("metadata") or {}).get("telemetry") or {}
    out = []
    for direction, kind, goal in (
        ("h2d", "pinned", Goal(">=", 48.0, ">= 48 GB/s")),
        ("d2h", "pinned", None),
        ("h2d", "pageable", None),
    ):
        mine = [r for r in rows if r["case"].startswith(f"{direction} {kind}") and "gbps" in r["metrics"]]
        best = max(mine, key=lambda r: r["metrics"]["gbps"], default=None)
        note = f"{best['case']}, {best['size'] / 2**20:g} MiB{_link(nvml.get(best['device'], {}))}" if best else (
            "no GPU row")  # fmt: skip
        out.append(
            Figure(
                "transfer",
                f"{direction} {kind}: best of the sizes",
                best["metrics"]["gbps"] if best else None,
                "GB/s",
                goal,
                note,
            )
        )
    return out


def train_figures(work: Path) -> list[Figure]:
    data = _load(work / "gpu_train.json") or {}
    state = "" if data.get("complete") else "incomplete run: from the log intervals written"
    compiled = (
        "compiled" if data.get("compiled") else "eager" + (" (compile failed)" if data.get("compile_error") else "")
    )
    history = data.get("history", [])
    steady = history[1:] or history
    mfu = data.get("mfu")
    if mfu is None and steady and steady[-1].get("mfu") is not None:
        mfu = steady[-1]["mfu"]
    tokens = data.get("tokens_per_s") or (steady[-1].get("tokens_per_s") if steady else None)
    peak = data.get("peak_bf16_flops")
    mem = data.get("peak_memory_bytes")
    first, last = data.get("first_loss"), data.get("last_loss")
    return [
        Figure(
            "gpt2-train",
            "GPT-2 124M bf16 MFU",
            None if mfu is None else 100 * mfu,
            "% of peak",
            Goal(">=", 50.0, ">= 50% of the dense bf16 peak"),
            "; ".join(filter(None, [compiled, f"peak {peak / 1e12:.0f} TFLOP/s" if peak else "", state])),
        ),
        Figure("gpt2-train", "GPT-2 124M tokens/s", tokens, "tokens/s", None, compiled),
        Figure("gpt2-train", "compile + warm-up", data.get("compile_and_warmup_s"), "s", None, compiled),
        Figure("gpt2-train", "peak memory", None if mem is None else mem / 2**30, "GiB"),
        Figure(
            "gpt2-train",
            "last loss",
            last,
            "nats/token",
            Goal("<", first, f"< first loss ({first:.3f})") if first is not None else None,
        ),
    ]


_PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def pytest_figures(work: Path) -> list[Figure]:
    """Counts from the JUnit XML, or, when pytest was killed before writing it, from its ``-v`` log lines."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failing: list[str] = []
    try:
        for case in ET.parse(work / "junit.xml").getroot().iter("testcase"):
            bad = case.find("failure") is not None or case.find("error") is not None
            kind = "failed" if bad else "skipped" if case.find("skipped") is not None else "passed"
            counts[kind] += 1
            if bad:
                klass = case.get("classname")  # empty for a module that failed to import
                failing.append(f"{klass}::{case.get('name')}" if klass else str(case.get("name")))
        source = "JUnit XML"
    except (OSError, ET.ParseError):
        log = work / "logs" / "pytest-cuda.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            m = _PYTEST_LINE.match(line)
            if m:
                kind = {"FAILED": "failed", "ERROR": "failed", "SKIPPED": "skipped"}.get(m[2], "passed")
                counts[kind] += 1
                if kind == "failed":
                    failing.append(m[1])
        source = "the log (no JUnit XML: pytest did not finish)"
    ran = counts["passed"] + counts["failed"]
    note = f"{counts['passed']} passed, {counts['failed']} failed or errored, {counts['skipped']} skipped ({source})"
    if failing:
        note += "; failing: " + ", ".join(failing[:5]) + (" ..." if len(failing) > 5 else "")
    return [
        Figure(
            "pytest-cuda",
            "CUDA tests failing",
            counts["failed"] if ran else None,
            "tests",
            Goal("<", 1, "0 failing, at least one run"),
            note,
        )
    ]


def advise_figures(work: Path) -> list[Figure]:
    data = _load(work / "advise_check.json") or {}
    dry = (data.get("meta") or {}).get("dry_run_on_cpu", False)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in data.get("rows", []):
        by_model.setdefault(r["model"], []).append(r)
    out = []
    for model, rows in by_model.items():
        worst = max(rows, key=lambda r: abs(math.log(r["ratio"])))
        note = f"worst of {len(rows)}: {worst['precision']}, data {worst['data']}, {worst['limited_by']}-bound"
        value = None if dry else worst["ratio"]
        out.append(
            Figure(
                "advise-check",
                f"advise {model}: predicted / measured",
                value,
                "x",
                Goal("within", 1.5, "within 1.5x"),
                note + ("; dry run: CPU vs h100" if dry else ""),
            )
        )
    if not out:
        out.append(
            Figure(
                "advise-check",
                "advise: predicted / measured",
                None,
                "x",
                Goal("within", 1.5, "within 1.5x"),
                "no rows written",
            )
        )
    return out


def small_ops_figures(work: Path) -> list[Figure]:
    path = work / "small_ops.json"
    ops = _gpu(_bench_rows(path, "small-ops"))
    smallest = min(ops, key=lambda r: r["size"], default=None) if ops else None
    add_small = [r for r in ops if r["case"].startswith("add") and r["size"] == (smallest or {}).get("size")]
    row = add_small[0] if add_small else None
    eager_us = row["measurement"]["median_s"] * 1e6 if row else None
    graphed = row["metrics"].get("graphed_us") if row else None
    resident = _gpu(_bench_rows(path, "residency"))
    slow = resident[0]["metrics"].get("slowdown_copied") if resident else None
    size = f"add of {row['size']:.0e} elements" if row else "no GPU row"
    return [
        Figure(
            "small-ops",
            "GPU / CPU speed-up, smallest add",
            row["metrics"].get("speedup_vs_cpu") if row else None,
            "x",
            None,
            f"{size}; the seed claims 2-5x",
        ),
        Figure(
            "small-ops",
            "launch overhead removed by CUDA-graph replay",
            None if not (graphed and eager_us) else eager_us / graphed,
            "x eager / graphed",
            Goal(">=", 1.0, ">= 1 (replay no slower than eager)"),
            f"{size}: eager {eager_us or float('nan'):.2f} us, graphed {graphed or float('nan'):.2f} us",
        ),
        Figure("small-ops", "batch copied every step / resident", slow, "x", None, "seed 6.3: residency"),
    ]


def ddp_figures(work: Path) -> list[Figure]:
    data = _load(work / "ddp_overhead.json") or {}
    ratio = data.get("throughput_ddp_over_plain")
    rounds, meta = len(data.get("ratios", [])), data.get("metadata", {})
    return [
        Figure(
            "ddp",
            "DDP world size 1 / plain fit() throughput",
            ratio,
            "x",
            Goal(">=", 0.97, ">= 0.97x"),
            f"{rounds} round(s); {meta.get('workload')} on {meta.get('device')}"
            + ("" if data.get("complete") else "; incomplete"),
        )
    ]

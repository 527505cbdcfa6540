"""What fit() reports, and where: rates per log interval, a JSONL log, a loss-curve PNG, progress on stderr.

Everything here runs on the host with numbers that were already fetched: nothing in this module reads a tensor.
Units are in the key names (``_s`` seconds, ``_per_s`` per second, ``_bytes`` bytes); MFU is a fraction (0..1).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tangtoc.files import check_target, write_atomic

Record = dict[str, Any]


@dataclass(slots=True)
class Interval:
    """Work done since the last log: counted on the host from batch shapes; a token count that leaves padding out
    stays on the device until the log point reads it with the losses."""

    steps: int = 0
    samples: int = 0
    tokens: int = 0  # between log points, a 0-dim device tensor when padding is left out (tangtoc.step)
    flops: float = 0.0
    data_wait_s: float = 0.0  # host time inside the data iterator's next(): this rank's, never summed over ranks

    def add(self, other: Interval) -> None:
        self.steps += other.steps
        self.samples += other.samples
        self.tokens += other.tokens
        self.flops += other.flops
        self.data_wait_s += other.data_wait_s

    def take(self) -> Interval:
        """A copy of the counts, then zero them (in place: the hot loop holds a reference to this object)."""
        taken = Interval(self.steps, self.samples, self.tokens, self.flops, self.data_wait_s)
        self.steps = self.samples = self.tokens = 0
        self.flops = self.data_wait_s = 0.0
        return taken


def rates(work: Interval, seconds: float, peak_flops: float | None) -> Record:
    """Step time, samples/s, the share of the time spent waiting for the next batch (as torchtitan logs it: host
    time in the data iterator), tokens/s (when the batches are token ids) and MFU (when the model declares its
    FLOPs and the device's peak is known; omitted otherwise, never guessed)."""
    if seconds <= 0 or work.steps == 0:
        return {}
    out: Record = {"step_time_s": seconds / work.steps, "samples_per_s": work.samples / seconds,
                   "data_wait_share": min(1.0, work.data_wait_s / seconds)}  # fmt: skip
    if work.tokens:
        out["tokens_per_s"] = work.tokens / seconds
    if work.flops and peak_flops:
        out["mfu"] = work.flops / seconds / peak_flops
    return out


class MetricsLog:
    """One JSON object per line in ``path``; ``None`` keeps records in memory only (:attr:`records`).

    When a run resumes at ``resume_step``, records after that step (written by the run that was killed after
    its last checkpoint) are dropped, so the log reads as one uninterrupted run. A fresh run starts a new file.
    """

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[Record] = []
        if resume_step is not None and path.exists():
            check_target(path)  # never read or write through a link planted in the run's folder
            kept = [r for r in _read_jsonl(path) if r.get("step", 0) <= resume_step]
        self.records = kept
        # Rewritten atomically (no symlink followed, no other file replaced), then appended to by this process only.
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW), "a")

    def write(self, record: Record) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()  # a killed run keeps every record up to its last log point

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_jsonl(path: Path) -> list[Record]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is not trustworthy either
    return out


def plot_loss(records: Sequence[Record], path: Path) -> Path | None:
    """Draw training (and evaluation) loss against the step into a PNG; ``None`` when matplotlib is missing or
    there is nothing to draw. Uses a figure object and its Agg canvas directly, so pyplot's global state and
    the user's backend are left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("kind") == "eval" and _finite(r.get("eval_loss"))]
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (mean over each log interval)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return path


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class ProgressBar:
    """Progress on stderr at log points only (nothing is drawn between them): a rich bar on a terminal and in a
    notebook (rich draws it there through ipywidgets), and one plain line per log point anywhere else (a pipe, a
    log file, nohup, a batch job), where a redrawn bar would show nothing until the run ends."""

    def __init__(self, total: int, start: int, enabled: bool, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._total = total
        self._enabled = enabled
        self._progress = None
        if enabled and _draws_live(self._console):
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, step: int, record: Record) -> None:
        if not self._enabled:
            return
        info = _info(record)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
            return
        elapsed = f" | {record['elapsed_s']:.1f} s elapsed" if "elapsed_s" in record else ""
        # soft_wrap: a log line stays one line whatever width rich assumes for a file (80 columns).
        self._console.print(f"train step {step}/{self._total} | {info}{elapsed}", markup=False, soft_wrap=True)

    def note(self, line: str) -> None:
        """A line of its own (an evaluation's result), printed above the bar or among the log lines."""
        if self._enabled:
            self._console.print(line, markup=False, soft_wrap=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _draws_live(console: Console) -> bool:
    """Whether a redrawn bar is seen as it runs: on a terminal, or in Jupyter when ipywidgets is installed (without
    it rich only warns, and the plain lines serve better)."""
    if console.is_terminal and not console.is_dumb_terminal:
        return True
    return console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None


def _info(record: Record) -> str:
    parts = [f"loss {record['loss']:.4f}"] if "loss" in record else []
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    elif "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    if "mfu" in record:
        parts.append(f"MFU {record['mfu']:.1%}")
    return " | ".join(parts)

"""What fit() reports, and where: rates per log interval, a JSONL log, a loss-curve PNG (its progress on stderr is
:class:`tangtoc.console.ProgressBar`).

Everything here runs on the host with numbers that were already fetched: nothing in this module reads a tensor.
Units are in the key names (``_s`` seconds, ``_per_s`` per second, ``_bytes`` bytes); MFU is a fraction (0..1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tangtoc.files import check_target, write_atomic
from tangtoc.train.folderlock import FolderLock

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
    left_out_s: float = 0.0  # evaluations, and steps that counted FLOPs (whose work is not counted either)

    def add(self, other: Interval) -> None:
        self.steps += other.steps
        self.samples += other.samples
        self.tokens += other.tokens
        self.flops += other.flops
        self.data_wait_s += other.data_wait_s
        self.left_out_s += other.left_out_s

    def take(self) -> Interval:
        """A copy of the counts, then zero them (in place: the hot loop holds a reference to this object)."""
        taken = Interval(self.steps, self.samples, self.tokens, self.flops, self.data_wait_s, self.left_out_s)
        self.steps = self.samples = self.tokens = 0
        self.flops = self.data_wait_s = self.left_out_s = 0.0
        return taken


def rates(work: Interval, seconds: float, peak_flops: float | None) -> Record:
    """Step time, samples/s, the share of the time spent waiting for the next batch (as torchtitan logs it: host
    time in the data iterator), tokens/s (when the batches are token ids) and MFU (FLOPs, declared by the model or
    counted, per second over ``peak_flops``; omitted without a peak, never guessed). ``seconds`` is the interval's
    wall time; evaluations and the steps that counted FLOPs (``work.left_out_s``) are taken out of it."""
    seconds -= work.left_out_s
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

    The log's folder is held (:class:`~tangtoc.train.folderlock.FolderLock`) from here to :meth:`close`: a second
    run writing there would replace the file this one appends to, and this one's records would go to the replaced
    file, lost. It is refused instead, with a :class:`~tangtoc.errors.FolderInUseError` naming the holder.
    """

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file = None
        self._lock: FolderLock | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(path.parent, "write metrics")
        try:
            kept: list[Record] = []
            if resume_step is not None and path.exists():
                check_target(path)  # never read or write through a link planted in the run's folder
                kept = [r for r in _read_jsonl(path) if r.get("step", 0) <= resume_step]
            self.records = kept
            # Rewritten atomically (no symlink followed, no other file replaced), then appended to by this process.
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
            self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW), "a")
        except BaseException:
            self.close()
            raise

    def write(self, record: Record) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()  # a killed run keeps every record up to its last log point

    def close(self) -> None:
        """Close the file and let the folder go; a second call does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


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

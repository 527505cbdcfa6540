"""What :func:`~tangtoc.fit` hands back: the events its callbacks receive and the :class:`FitResult` it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from tangtoc.train.metrics import Interval, Record, plot_loss, rates

if TYPE_CHECKING:
    from tangtoc.train.run import Run


@dataclass(frozen=True, slots=True)
class FitEvent:
    """What a callback receives: a ``"log"``, ``"eval"``, ``"checkpoint"`` or ``"end"`` event at ``step``, with
    the host-side numbers of that moment (already fetched: a callback costs no extra sync). In a distributed run
    callbacks are called on every rank with the same numbers (summed or averaged over the ranks); ``rank`` says
    which one is calling, for a callback that should act once (``if event.rank == 0``)."""

    kind: Literal["log", "eval", "checkpoint", "end"]
    step: int
    record: Mapping[str, Any]
    path: Path | None = None  # the checkpoint written, for "checkpoint" events
    rank: int = 0


Callback = Callable[[FitEvent], None]


@dataclass(slots=True)
class FitResult:
    """The outcome of :func:`fit`. Rates are over the log intervals after the first one (which includes warm-up
    and compilation) when there is more than one; ``None`` where not measured or not known. In a distributed
    run, losses are the mean over the ranks, rates the sum over them, MFU a fraction of all their devices' peak,
    and peak memory this rank's own; ``metrics_path`` and ``plot_path`` are set on rank 0, which writes them."""

    step: int  # optimizer steps done in total, resumed ones included
    start_step: int  # the step this call resumed from (0 for a fresh run)
    device: str
    precision: str
    loss: float | None  # mean training loss over the last log interval: the steps of loss_steps
    loss_steps: tuple[int, int] | None  # (first, last) step that ``loss`` averages, both included
    last_step_loss: float | None  # the loss of the last step trained (read with the last log point's fetch)
    eval_loss: float | None
    wall_time_s: float  # this call, set-up and evaluation included
    samples_per_s: float | None
    tokens_per_s: float | None
    mfu: float | None  # FLOPs per second over peak_flops (times world_size); None without a peak
    peak_flops: float | None  # one device's peak FLOP/s that MFU divides by (see fit's peak_flops=)
    peak_source: str  # where peak_flops comes from (a datasheet, the user, $TANGTOC_PEAK_TFLOPS), or why there is none
    data_wait_share: float | None  # fraction of the steady training time spent waiting for batches (this rank's)
    peak_memory_bytes: int | None  # CUDA only: torch.cuda.max_memory_allocated
    strategy: str  # "single", "ddp" or "fsdp"
    world_size: int  # processes that trained together (1 for a single process)
    skipped_steps: int  # steps skipped for a non-finite loss (on_nonfinite="skip")
    preempted: bool
    checkpoint: Path | None  # the newest checkpoint written or resumed from
    metrics_path: Path | None
    plot_path: Path | None
    history: list[Record] = field(default_factory=list)


def build_result(run: Run, *, plot: bool) -> FitResult:
    """The :class:`FitResult` of ``run`` now; ``plot``: draw the loss curve into its log_dir."""
    steady = run.intervals[1:] or run.intervals  # the first interval holds warm-up and compilation
    work, seconds = Interval(), 0.0
    for interval, lap in steady:
        work.add(interval)
        seconds += lap
    summary = rates(work, seconds, run.peak_flops)
    plot_path = None
    if plot and run.cfg.log_dir is not None and run.rank == 0:
        plot_path = plot_loss(run.log.records, run.cfg.log_dir / "loss.png")
    return FitResult(
        step=run.step,
        start_step=run.start_step,
        device=str(run.device),
        precision=run.precision.name,
        loss=run.last_loss,
        loss_steps=run.loss_steps,
        last_step_loss=run.last_step_loss,
        eval_loss=run.eval_loss,
        wall_time_s=run.watch.lap()[1],
        samples_per_s=summary.get("samples_per_s"),
        tokens_per_s=summary.get("tokens_per_s"),
        mfu=summary.get("mfu"),
        peak_flops=run.peak.flops,
        peak_source=run.peak.source,
        data_wait_share=summary.get("data_wait_share"),
        peak_memory_bytes=torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None,
        strategy=run.strategy or "single",
        world_size=run.world_size,
        skipped_steps=run.skipped,
        preempted=run.preempted,
        checkpoint=run.checkpoint,
        metrics_path=run.log.path,
        plot_path=plot_path,
        history=list(run.log.records),
    )

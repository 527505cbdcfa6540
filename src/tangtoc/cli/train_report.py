"""What ``tangtoc train`` shows after the work: the summary of a finished (or preempted) run, and for a run that
trained but could not be kept or went non-finite, what it reached, what could not be written and why, and what to
pass next, in the words of the command's flags."""

from __future__ import annotations

import argparse
import errno
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tangtoc.cli.render import console, fmt_bytes
from tangtoc.cli.sample import TEMPERATURE, TOP_K
from tangtoc.device import describe
from tangtoc.errors import CheckpointError, NonFiniteLossError, OutputError
from tangtoc.files import describe_write_error
from tangtoc.flops import mfu_text
from tangtoc.step import resolve_precision
from tangtoc.train import FitEvent, FitResult

SAMPLE_PROMPT = "def "
#: errno values that mean "this file cannot be written here", as opposed to a bug or a crash.
_WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO")
    if hasattr(errno, name)
)
STEADY = "steady state: log intervals after the first"


class Progress:
    """A fit() callback that keeps what the run has reached: its last log and evaluation records and its newest
    checkpoint, so that a run that fails after training (a checkpoint that cannot be written) can still say what
    it trained and what is kept."""

    def __init__(self) -> None:
        self.log: dict[str, Any] | None = None
        self.first_logged = 1  # the first step of the last log interval
        self.eval_loss: float | None = None
        self.checkpoint: Path | None = None
        self.resumed_from: int | None = None  # the step --resume continued from

    def __call__(self, event: FitEvent) -> None:
        if event.kind == "log":
            self.first_logged = self.log["step"] + 1 if self.log is not None else self.first_logged
            self.log = dict(event.record)
        elif event.kind == "eval":
            self.eval_loss = event.record.get("eval_loss")
        elif event.kind == "checkpoint":
            self.checkpoint = event.path

    def resumed_at(self, step: int) -> None:
        """The run resumed at ``step``: its first log interval starts after it."""
        self.first_logged = step + 1
        self.resumed_from = step or None


def unwritten(error: BaseException, progress: Progress) -> OSError | CheckpointError | None:
    """The failed write behind ``error``, when it is one that came after training started (an
    :class:`OutputError`, an ``OSError`` such as ENOSPC anywhere in its chain, even inside torch's own
    ``RuntimeError``, or a checkpoint folder refused at a save); ``None`` for any other failure."""
    if progress.log is None:
        return None  # nothing trained yet: the failure is reported as it is
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OutputError) or (isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error if isinstance(error, CheckpointError) else None


def _checkpoint_bytes(model: nn.Module, progress: Progress) -> int:
    """About what the failed checkpoint needed: the last one this run wrote, else the weights and AdamW's two
    moments in float32."""
    if progress.checkpoint is not None and progress.checkpoint.exists():
        return progress.checkpoint.stat().st_size
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def unwritten_message(
    failure: OSError | CheckpointError, model: nn.Module, progress: Progress, folder: Path | None, steps: int
) -> str:
    """What could not be written and why, how far the run of ``steps`` got, which checkpoint is the last good one,
    and what to do."""
    step = progress.log["step"] if progress.log is not None else 0
    if isinstance(failure, OutputError):
        what = str(failure).rstrip(".")  # names its file and why, already
    elif isinstance(failure, OSError):
        target = (folder or Path(".")) / f"step-{step:08d}.pt"
        why = describe_write_error(failure, target, _checkpoint_bytes(model, progress))
        what = f"could not write the checkpoint of step {step} in {folder}: {why}"
    else:  # the folder was refused when the checkpoint came to be saved (it changed since the run started)
        what = f"could not write the checkpoint of step {step}: {failure}".split(" Fix:")[0].rstrip(".")
    cause = failure.__cause__ if isinstance(failure, OutputError) else failure
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC and folder is not None and folder.is_dir():
        need = "" if "needed" in what else f", {fmt_bytes(_checkpoint_bytes(model, progress))} needed for a checkpoint"
        what += f" ({fmt_bytes(shutil.disk_usage(folder).free)} free{need})"
    kept = (
        f"The last good checkpoint is {progress.checkpoint}: --resume continues from it once the folder can be "
        "written again."
        if progress.checkpoint is not None
        else "No checkpoint of this run was written."
    )
    return f"{what}. Training reached step {step} of {steps} (summary above). {kept}"


def nonfinite_message(e: NonFiniteLossError, args: argparse.Namespace, device: torch.device) -> str:
    """The non-finite loss in the command's words, with only the changes this command line has not made already."""
    tries = [f"a lower --lr (this run used {args.lr:g})"]
    if args.warmup is None:
        tries.append("--warmup STEPS (the learning rate raised from 0 over the first steps)")
    precision = resolve_precision(args.precision, device).name
    if precision == "fp16":
        tries.append("--precision bf16 or fp32 instead of fp16")
    elif precision == "bf16":
        tries.append("--precision fp32")
    if e.checkpoint is not None:
        start = (
            f"The last good checkpoint is {e.checkpoint}. Start from its weights with the change: --init-from "
            f"{e.checkpoint} and another --checkpoint-dir (a fresh optimizer; --resume would restore the optimizer "
            "state that diverged)."
        )
    elif args.no_save:
        start = "Nothing was kept (--no-save)."
    elif args.checkpoint_every is not None:
        start = f"No checkpoint was written before it (--checkpoint-every {args.checkpoint_every}: the first at step "
        start += f"{args.checkpoint_every})."
    else:
        start = "No checkpoint was written before it (--checkpoint-every N keeps one every N steps)."
    return f"the training loss was not finite (NaN or infinite) at step {e.step}. {start} Try: {'; '.join(tries)}."


def summary(
    args: argparse.Namespace, model: nn.Module, about: str, result: FitResult, sample: str | None
) -> dict[str, Any]:
    """The summary of a finished or preempted run, as ``--json`` prints it."""
    info = describe(result.device)
    return {
        "model": f"{args.model} {args.size}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": about,
        "device": f"{result.device} ({info.name})",
        "processes": result.world_size,
        "strategy": result.strategy,
        "precision": result.precision,
        "steps": result.step,
        "resumed_from_step": result.start_step or None,
        "loss": result.loss,  # the mean over the steps of loss_steps (the last log interval)
        "loss_steps": result.loss_steps,
        "last_step_loss": result.last_step_loss,
        "eval_loss": result.eval_loss,
        "tokens_per_s": result.tokens_per_s,
        "samples_per_s": result.samples_per_s,
        "mfu": result.mfu,
        "peak_flops": result.peak_flops,
        "peak_source": result.peak_source,
        "rates_over": STEADY,
        "peak_memory_bytes": result.peak_memory_bytes,
        "wall_time_s": result.wall_time_s,
        "preempted": result.preempted,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "metrics": str(result.metrics_path) if result.metrics_path else None,
        "plot": str(result.plot_path) if result.plot_path else None,
        "sample": sample,
    }


def reached(
    args: argparse.Namespace,
    model: nn.Module,
    about: str,
    device: torch.device,
    world_size: int,
    progress: Progress,
    error: str,
) -> dict[str, Any]:
    """The summary of a run that trained but failed after (its checkpoint could not be written), from its last
    log record: the same fields as :func:`summary`, with its rates those of the last log interval."""
    record = progress.log or {}
    step = record.get("step", 0)
    return {
        "model": f"{args.model} {args.size}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": about,
        "device": f"{device} ({describe(device).name})",
        "processes": world_size,
        "strategy": None if world_size == 1 and args.strategy == "auto" else args.strategy,
        "precision": resolve_precision(args.precision, device).name,
        "steps": step,
        "resumed_from_step": progress.resumed_from,
        "loss": record.get("loss"),
        "loss_steps": [progress.first_logged, step] if "loss" in record else None,
        "last_step_loss": None,
        "eval_loss": progress.eval_loss,
        "tokens_per_s": record.get("tokens_per_s"),
        "samples_per_s": record.get("samples_per_s"),
        "mfu": record.get("mfu"),
        "peak_flops": record.get("peak_flops"),
        "peak_source": record.get("peak_source", "no log point was reached"),
        "rates_over": "the last log interval",
        "peak_memory_bytes": record.get("peak_memory_bytes"),
        "wall_time_s": record.get("elapsed_s", 0.0),
        "preempted": False,
        "checkpoint": str(progress.checkpoint) if progress.checkpoint else None,
        "metrics": None,
        "plot": None,
        "sample": None,
        "error": error,
    }


def render(s: dict[str, Any]) -> None:
    out = console()
    ranks = f" x {s['processes']} processes ({s['strategy']})" if s["processes"] > 1 else ""
    out.print(
        f"[bold]tangtoc train {s['model']}[/bold]: {s['parameters']:,} parameters on {s['device']}{ranks}, "
        f"{s['precision']}"
    )
    out.print(f"data: {s['data']}", markup=False, soft_wrap=True)
    resumed = f" (resumed from step {s['resumed_from_step']})" if s["resumed_from_step"] else ""
    if s["loss"] is None:
        loss = "train loss n/a"
    else:  # a mean over an interval differs from one step's loss: both are said, with what they are
        first, last = s["loss_steps"]
        loss = f"train loss {s['loss']:.4f} (mean of steps {first} to {last})"
        if s["last_step_loss"] is not None:  # None when a finished run was resumed: nothing was trained now
            loss += f", last step {s['last_step_loss']:.4f}"
    eval_loss = "n/a" if s["eval_loss"] is None else f"{s['eval_loss']:.4f}"
    out.print(f"steps: {s['steps']}{resumed} | {loss} | eval loss {eval_loss} | wall {s['wall_time_s']:.1f} s")
    rate = (
        f"{s['tokens_per_s']:,.0f} tokens/s"
        if s["tokens_per_s"] is not None
        else f"{s['samples_per_s']:,.0f} samples/s"
        if s["samples_per_s"] is not None
        else "rate n/a"
    )
    mfu = mfu_text(s["mfu"], s["peak_flops"], s["peak_source"])
    memory = f" | peak memory {fmt_bytes(s['peak_memory_bytes'])}" if s["peak_memory_bytes"] is not None else ""
    out.print(f"throughput: {rate} | {mfu}{memory}  ({s['rates_over']})")
    written = [f"{k}: {s[k]}" for k in ("checkpoint", "metrics", "plot") if s[k]]
    if written:
        out.print(" | ".join(written), markup=False, soft_wrap=True)
    if s["preempted"]:
        out.print(
            f"[yellow]preempted[/yellow] at step {s['steps']}: checkpoint written; rerun with --resume to continue."
        )
    if s["sample"] is not None:
        if s["checkpoint"] is not None:
            out.print(f"more text: tangtoc sample {shlex.quote(s['checkpoint'])} --prompt TEXT", markup=False)
        out.print(f"[bold]sample[/bold] (temperature {TEMPERATURE}, top-k {TOP_K}, prompt {SAMPLE_PROMPT!r}):")
        out.print(s["sample"], markup=False, highlight=False, soft_wrap=True)

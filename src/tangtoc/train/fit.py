"""fit(): a training loop that is correct on every device and has no hidden synchronisation.

This module is the public entry: it validates the arguments into a :class:`~tangtoc.train.config.FitConfig`, forms
the process group under torchrun, and hands over to :class:`~tangtoc.train.run.Run`, where the loop lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from tangtoc.device import DeviceLike, resolve
from tangtoc.step import DEFAULT_LR, LossFn, LossFrom, OptimizerFactory, default_optimizer
from tangtoc.train.checkpoint import hold_checkpoint_dir
from tangtoc.train.config import (
    SAME_AS_CHECKPOINTS,
    FitConfig,
    NonfinitePolicy,
    PrecisionName,
    PreemptPolicy,
    SameAsCheckpoints,
    StrategyName,
    settings_doc,
)
from tangtoc.train.distributed import DEFAULT_TIMEOUT_S, session
from tangtoc.train.result import Callback, FitEvent, FitResult
from tangtoc.train.run import Run
from tangtoc.train.schedule import SchedulerFactory

__all__ = ["DEFAULT_LR", "Callback", "FitEvent", "FitResult", "LossFn", "default_optimizer", "fit"]

#: fit()'s keywords that are settings: every field of FitConfig (the others are the model, the data and what acts on
#: them). ``fit`` reads them from its own arguments, so they are written once more, in its signature, and a test
#: checks that signature against the fields.
SETTINGS = frozenset(f.name for f in fields(FitConfig))


def fit(
    model: nn.Module,
    data: Iterable[Any],
    *,
    optimizer: torch.optim.Optimizer | OptimizerFactory | None = None,
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    precision: PrecisionName = "auto",
    compile: bool = False,
    grad_accum: int = 1,
    clip_grad: float | None = None,
    scheduler: LRScheduler | SchedulerFactory | None = None,
    log_every: int = 10,
    eval_data: Iterable[Any] | None = None,
    eval_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_last: int = 3,
    resume: bool = True,
    on_nonfinite: NonfinitePolicy = "raise",
    on_preempt: PreemptPolicy = "exit",
    device: DeviceLike | None = "auto",
    progress: bool = True,
    peak_flops: float | None = None,
    log_dir: str | Path | SameAsCheckpoints | None = SAME_AS_CHECKPOINTS,
    callbacks: Sequence[Callback] = (),
    strategy: StrategyName = "auto",
    shard_data: bool = True,
    dist_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FitResult:
    """Train ``model`` on ``data`` on one device, or on many under torchrun; resumable, preemption-safe, one sync
    per log interval.

    Args:
        model: moved to ``device`` (in place) and put in train mode.
        data: any iterable of batches that can be iterated again each epoch: a
            :class:`~tangtoc.data.ResidentLoader`, a ``DataLoader``, a list. Batches not on the device are moved
            with :func:`~tangtoc.move.to_device`. Under torchrun each rank trains on its share (``shard_data``).
        optimizer: an optimizer, or a function ``params -> optimizer`` called on the parameters once the model is
            wrapped (needed with ``strategy="fsdp"``, whose sharding replaces the parameters); default
            :func:`default_optimizer` (AdamW, lr 1e-3, fused on CUDA).
        loss_fn: with a loss function, a batch ``(inputs, targets)`` trains on ``loss_fn(model(inputs), targets)``,
            and a mapping batch on ``loss_fn(model(**rest), batch["labels"])``. With ``None``, the model returns
            the loss itself: ``model(**batch)`` for a mapping (dict, ``BatchEncoding``), ``model(*batch)`` for a
            tuple or list, ``model(batch)`` otherwise; the loss is what it returns if that is a one-element
            tensor, else its ``"loss"`` / ``.loss`` (a Hugging Face ``ModelOutput``), else the one 0-dim tensor
            requiring grad in a tuple (nanoGPT's ``(logits, loss)``). See :mod:`tangtoc.step`.
        eval_data: evaluated (mean loss over all its batches, no gradients) every ``eval_every`` steps and at
            the end; it must be iterable again each time.
        device: ``"auto"`` for :func:`~tangtoc.device.pick_device`, or any device spec.
        callbacks: functions called with a :class:`FitEvent` at each log, evaluation, checkpoint and the end (on
            every rank of a distributed run; ``event.rank`` tells them apart).
        {settings}

    Raises:
        NonFiniteLossError, CheckpointError (also for a ``checkpoint_dir`` that cannot be written, before training),
        TrainingOutOfMemoryError (with the batch size and what to change),
        DistributedError (the process group cannot be formed, or the ranks disagree on the checkpoints),
        FolderInUseError (another run holds ``checkpoint_dir`` or ``log_dir``; the message names its PID),
        ValueError for arguments that cannot work (each names the argument).
    """
    config = FitConfig(**{name: value for name, value in locals().items() if name in SETTINGS})
    placed = resolve(device)  # once, here; under torchrun, session() maps CUDA to this rank's GPU
    with (
        session(config.strategy, placed, config.dist_timeout_s) as parallel,
        hold_checkpoint_dir(config.checkpoint_dir, parallel),  # one run per folder, for the whole run
    ):
        if parallel is not None:
            placed = parallel.device
        run = Run(model, data, optimizer, loss_fn, eval_data, placed, tuple(callbacks), config, parallel)
        return run.run()


# The settings' lines of the docstring are made from FitConfig's fields (the one place they are documented).
assert fit.__doc__ is not None
fit.__doc__ = fit.__doc__.replace("{settings}", settings_doc().lstrip())  # the slot is indented already

"""fit(): a training loop that is correct on every device and has no hidden synchronisation.

This module is the public entry: it validates the arguments into a :class:`~tangtoc.train.config.FitConfig`, forms
the process group under torchrun, and hands over to :class:`~tangtoc.train.run.Run`, where the loop lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tangtoc.device import DeviceLike, resolve
from tangtoc.step import DEFAULT_LR, LossFn, LossFrom, OptimizerFactory, default_optimizer
from tangtoc.train.config import FitConfig
from tangtoc.train.distributed import DEFAULT_TIMEOUT_S, session
from tangtoc.train.result import Callback, FitEvent, FitResult
from tangtoc.train.run import Run

__all__ = ["DEFAULT_LR", "Callback", "FitEvent", "FitResult", "LossFn", "default_optimizer", "fit"]


def fit(
    model: nn.Module,
    data: Iterable[Any],
    *,
    optimizer: torch.optim.Optimizer | OptimizerFactory | None = None,
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    precision: str = "auto",
    compile: bool = False,
    grad_accum: int = 1,
    clip_grad: float | None = None,
    log_every: int = 10,
    eval_data: Iterable[Any] | None = None,
    eval_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_last: int = 3,
    resume: bool = True,
    on_nonfinite: str = "raise",
    on_preempt: str = "exit",
    device: DeviceLike | None = "auto",
    progress: bool = True,
    log_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    strategy: str = "auto",
    dist_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FitResult:
    """Train ``model`` on ``data`` on one device, or on many under torchrun; resumable, preemption-safe, one sync
    per log interval.

    Args:
        model: moved to ``device`` (in place) and put in train mode.
        data: any iterable of batches that can be iterated again each epoch: a
            :class:`~tangtoc.data.ResidentLoader`, a ``DataLoader``, a list. Batches not on the device are moved
            with :func:`~tangtoc.move.to_device`.
        optimizer: an optimizer, or a function ``params -> optimizer`` called on the parameters once the model is
            wrapped (needed with ``strategy="fsdp"``, whose sharding replaces the parameters); default
            :func:`default_optimizer` (AdamW, lr 1e-3, fused on CUDA).
        loss_fn: with a loss function, a batch ``(inputs, targets)`` trains on ``loss_fn(model(inputs), targets)``,
            and a mapping batch on ``loss_fn(model(**rest), batch["labels"])``. With ``None``, the model returns
            the loss itself: ``model(**batch)`` for a mapping (dict, ``BatchEncoding``), ``model(*batch)`` for a
            tuple or list, ``model(batch)`` otherwise; the loss is what it returns if that is a one-element
            tensor, else its ``"loss"`` / ``.loss`` (a Hugging Face ``ModelOutput``), else the one 0-dim tensor
            requiring grad in a tuple (nanoGPT's ``(logits, loss)``). See :mod:`tangtoc.step`.
        loss_from: where the loss is in the model's output when that is ambiguous: a key or attribute name, an
            index, or a function of the output. Decided and checked on the first batch, never searched again.
        steps / epochs: exactly one. A step is one optimizer step of ``grad_accum`` batches; ``epochs`` needs
            ``len(data)`` and means ``epochs * len(data) // grad_accum`` steps.
        precision: ``"auto"`` (bf16 autocast where the device supports it, fp16 with a GradScaler on older CUDA
            GPUs, fp32 on the CPU), or ``"bf16"``, ``"fp16"``, ``"fp32"``. TF32 matmuls are on for CUDA during
            the call and restored afterwards.
        compile: run the forward pass through ``torch.compile`` (checkpoints still hold the plain model's keys).
        grad_accum: batches per optimizer step; each micro-batch's loss is divided by it.
        clip_grad: clip the global gradient norm to this value; the mean norm before clipping is logged.
        log_every: steps per log interval: the one point where the host reads losses and rates.
        eval_data: evaluated (mean loss over all its batches, no gradients) every ``eval_every`` steps and at
            the end; it must be iterable again each time.
        checkpoint_dir: where checkpoints go (``step-NNNNNNNN.pt``, the newest ``keep_last`` kept), and the
            metrics log and loss plot unless ``log_dir`` says otherwise. A checkpoint is always written at the
            end and on preemption; ``checkpoint_every`` adds periodic ones.
        resume: continue from the newest checkpoint in ``checkpoint_dir``: model, optimizer, GradScaler, step,
            RNG states (CPU and device) and the data position. ``resume=False`` refuses a folder that already
            holds checkpoints, rather than mixing two runs in it.
        on_nonfinite: ``"raise"`` stops with :class:`NonFiniteLossError` naming the first bad step and the last
            good checkpoint (detected at the next log point, at no cost per step); ``"skip"`` skips the
            optimizer step for that batch, at the price of one sync per step to look at the loss.
        on_preempt: on SIGTERM or SIGUSR1 (installed only with a ``checkpoint_dir``, from the main thread) the
            current step finishes (in a distributed run: every rank trains on to the next log point, where the
            flag is summed over the ranks, so that they all stop at the same step) and a checkpoint is written;
            then ``"exit"`` raises ``SystemExit(0)`` so the scheduler sees a clean exit, and ``"return"`` returns
            with ``preempted=True``.
        device: ``"auto"`` for :func:`~tangtoc.device.pick_device`, or any device spec.
        progress: a progress bar on stderr, when it is a terminal, updated at log points.
        log_dir: where ``metrics.jsonl`` (one record per log interval and evaluation) and ``loss.png`` go;
            default ``checkpoint_dir``; ``None`` for neither (the records are still in ``FitResult.history``).
        callbacks: functions called with a :class:`FitEvent` at each log, evaluation, checkpoint and the end (on
            every rank of a distributed run; ``event.rank`` tells them apart).
        strategy: under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set), each process trains on
            ``cuda:LOCAL_RANK`` (or the CPU) in a process group that fit() creates (NCCL on CUDA, gloo on the CPU)
            and destroys on every way out. ``"ddp"`` (what ``"auto"`` means with more than one process): a full
            copy of the model per rank, gradients all-reduced, DDP's ``no_sync`` on the micro-steps of
            ``grad_accum``. ``"fsdp"``: FSDP2 ``fully_shard`` on each block of the model's ``nn.ModuleList`` objects
            and on the root, for models that do not fit one device (the model stays sharded after fit() returns; its
            full weights are in the checkpoint). A :class:`~tangtoc.data.ResidentLoader` built without a shard is
            sharded by rank in place; any other ``data`` must already yield this rank's share (e.g. a
            ``DataLoader`` with a ``DistributedSampler``). Each rank's loss is the mean over its batch and the
            gradients are averaged over the ranks, so equal per-rank batches of ``b`` train as one batch of
            ``world_size * b``. Only rank 0 draws the progress bar and writes metrics and checkpoints (which every
            rank reads to resume: put ``checkpoint_dir`` on a filesystem all machines share). A SIGTERM to any
            rank stops every rank at the next log point (see ``on_preempt``). Single process: ``"auto"``.
        dist_timeout_s: how long a rank waits to join the process group, and later for any one collective,
            before failing with a message (an unreachable master, a port in use, a rank that died) rather than
            hanging.

    Raises:
        NonFiniteLossError, CheckpointError, TrainingOutOfMemoryError (with the batch size and what to change),
        DistributedError (the process group cannot be formed, or the ranks disagree on the checkpoints),
        ValueError for arguments that cannot work (each names the argument).
    """
    config = FitConfig(
        steps=steps,
        epochs=epochs,
        precision=precision,
        compile=compile,
        grad_accum=grad_accum,
        clip_grad=clip_grad,
        log_every=log_every,
        eval_every=eval_every,
        checkpoint_dir=checkpoint_dir,  # type: ignore[arg-type]  # normalised to Path by FitConfig
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        resume=resume,
        on_nonfinite=on_nonfinite,
        on_preempt=on_preempt,
        progress=progress,
        log_dir=log_dir,  # type: ignore[arg-type]
        strategy=strategy,
        dist_timeout_s=dist_timeout_s,
        loss_from=loss_from,
    )
    placed = resolve(device)  # once, here; under torchrun, session() maps CUDA to this rank's GPU
    with session(config.strategy, placed, config.dist_timeout_s) as parallel:
        if parallel is not None:
            placed = parallel.device
        run = Run(model, data, optimizer, loss_fn, eval_data, placed, tuple(callbacks), config, parallel)
        return run.run()

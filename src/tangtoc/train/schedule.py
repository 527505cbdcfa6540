"""Learning-rate schedules for :func:`~tangtoc.fit`: what its ``scheduler=`` takes, and the built-in warmup + cosine.

``scheduler=`` takes what a PyTorch user already has: a ``torch.optim.lr_scheduler`` instance built on the optimizer
given to fit(), or a function ``optimizer -> scheduler`` (needed when fit() builds the optimizer: the default one,
an optimizer factory, FSDP). :func:`warmup_cosine` is such a function, with the run's length filled in by fit().

How fit() steps it, and why (where the Trainer, Lightning and Accelerate users were bitten):

* **Once per optimizer step**, after the ``grad_accum`` micro-batches, never per batch: a warmup of N steps is N
  optimizer steps whatever the accumulation (Lightning #1476, Accelerate #963).
* **Also when the step was skipped**, by fp16's GradScaler (inf/NaN gradients) or by ``on_nonfinite="skip"``: the
  learning rate of step n is the schedule's value at step n, known from the step number alone, and the decay ends
  where the run ends. Accelerate (and the Trainer through it) holds the schedule back on a skipped step instead
  (``optimizer_step_was_skipped``), which shifts all that follows by the number of skips, and fp16's first steps
  are often skipped while the scale calibrates. torch's warning about a scheduler stepped before its optimizer,
  which such a skip on the very first step sets off, is silenced for that one call (pytorch#55585).
* **After the step's log point**: the ``lr`` in a train record is the rate its step trained with. The checkpoint of
  step n holds the scheduler as it is after the step, so a resumed run continues the same sequence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler]
"""``optimizer -> scheduler``: called once on the optimizer fit() trains with."""

DEFAULT_MIN_LR_RATIO = 0.1


@dataclass(frozen=True, slots=True)
class WarmupCosine:
    """A linear warmup to the optimizer's learning rate, then a cosine decay to ``min_lr_ratio`` of it. Made by
    :func:`warmup_cosine`; called on an optimizer, it returns the ``LambdaLR`` that follows it."""

    warmup_steps: int
    total_steps: int | None
    min_lr_ratio: float

    def __post_init__(self) -> None:
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_cosine: warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        total = self.total_steps
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
            raise ValueError(f"warmup_cosine: total_steps must be an int >= 1 or None, got {total!r}.")
        ratio = self.min_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"warmup_cosine: min_lr_ratio must be a number in [0, 1], got {ratio!r}.")
        if total is not None and self.warmup_steps > total:
            raise ValueError(
                f"warmup_cosine: warmup_steps={self.warmup_steps} is more than total_steps={total}: the run would "
                "end before reaching its learning rate. Fix: fewer warmup steps or more steps."
            )

    def factor(self, step: int) -> float:
        """The fraction of the optimizer's learning rate that step ``step`` (1-based) trains with: ``step /
        warmup_steps`` during the warmup (so the first step already learns, unlike a warmup from 0), then
        ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2``, ``p`` going from just above 0 at the step
        after the warmup to 1 at ``total_steps``; ``min_lr_ratio`` from there on."""
        warmup, total = self.warmup_steps, self.total_steps
        assert total is not None, "resolved by fit() or by the caller before use"
        if step <= warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, optimizer: torch.optim.Optimizer) -> LambdaLR:
        if self.total_steps is None:
            raise ValueError(
                "warmup_cosine: total_steps is None, which only fit() can fill in (with its run's steps). Fix: pass "
                "it to fit(scheduler=...), or give total_steps= to build the scheduler yourself."
            )
        # A plain function, not a bound method or an object: LambdaLR's state_dict then saves no Python object
        # (a checkpoint must load with weights_only=True), and the schedule's shape comes from this call's
        # arguments on resume, its position from the checkpoint.
        return LambdaLR(optimizer, lambda done: self.factor(done + 1))


def warmup_cosine(
    warmup_steps: int, total_steps: int | None = None, min_lr_ratio: float = DEFAULT_MIN_LR_RATIO
) -> WarmupCosine:
    """Linear warmup over ``warmup_steps`` optimizer steps to the optimizer's learning rate, then cosine decay to
    ``min_lr_ratio`` times it at ``total_steps``, for ``fit(scheduler=...)``. ``total_steps=None`` (the default)
    means the run's own length, ``steps=`` or what ``epochs=`` comes to (after a ``DataLoader`` is split over the
    ranks), so it need not be worked out by hand. Steps are optimizer steps (of ``grad_accum`` batches each). A
    resumed run continues from the checkpoint's step with the shape given here: resumed with more ``steps=``, the
    cosine stretches to the new end, so the rate at the step resumed from rises to that longer run's value.

    Also usable without fit(): ``warmup_cosine(100, total_steps=1000)(optimizer)`` is a ``LambdaLR``.
    """
    return WarmupCosine(warmup_steps, total_steps, min_lr_ratio)


def check_scheduler_arg(scheduler: object) -> None:
    """What ``fit(scheduler=...)`` accepts, checked on entry (the optimizer it was built on is checked by
    :func:`build_scheduler`, once the optimizer exists)."""
    if scheduler is None or isinstance(scheduler, LRScheduler) or callable(scheduler):
        return
    raise TypeError(
        "fit: scheduler must be a torch.optim.lr_scheduler scheduler, a function optimizer -> scheduler (such as "
        f"tangtoc.warmup_cosine(...)), or None; got {type(scheduler).__name__}."
    )


def build_scheduler(
    scheduler: LRScheduler | SchedulerFactory | None, optimizer: torch.optim.Optimizer, total_steps: int
) -> LRScheduler | None:
    """The scheduler fit() steps, on ``optimizer`` (the one it trains with). A function is called on it; a
    :class:`WarmupCosine` without ``total_steps`` gets the run's ``total_steps``. A scheduler on another optimizer
    would change learning rates that nothing uses, and ``ReduceLROnPlateau`` needs a metric each step: both are
    refused."""
    if scheduler is None:
        return None
    if isinstance(scheduler, WarmupCosine) and scheduler.total_steps is None:
        if scheduler.warmup_steps > total_steps:
            raise ValueError(
                f"fit: warmup_cosine(warmup_steps={scheduler.warmup_steps}) warms up over more steps than the run "
                f"has ({total_steps}). Fix: fewer warmup steps (--warmup in the CLI), or more steps."
            )
        scheduler = replace(scheduler, total_steps=total_steps)
    built = scheduler if isinstance(scheduler, LRScheduler) else scheduler(optimizer)
    if not isinstance(built, LRScheduler):
        raise TypeError(
            f"fit: the scheduler function must return a torch.optim.lr_scheduler scheduler, got {type(built)}."
        )
    if isinstance(built, ReduceLROnPlateau):
        raise ValueError(
            "fit: ReduceLROnPlateau steps on a metric (scheduler.step(val_loss)), and fit() steps its scheduler "
            "once per optimizer step without one. Fix: a step-based schedule (tangtoc.warmup_cosine, "
            "CosineAnnealingLR, OneCycleLR, ...)."
        )
    if built.optimizer is not optimizer:
        raise ValueError(
            f"fit: the scheduler ({type(built).__name__}) was built on another optimizer than the one fit() trains "
            "with (fit() builds its own when optimizer= is None or a function), so it would set learning rates that "
            "nothing uses. Fix: build it on the optimizer you pass (optimizer=opt, scheduler=CosineAnnealingLR(opt, "
            "...)), or pass a function that fit() calls on its optimizer: scheduler=lambda opt: "
            "CosineAnnealingLR(opt, T_max=...)."
        )
    return built


def resume_rates(scheduler: LRScheduler) -> None:
    """After ``scheduler.load_state_dict``: set the rate of the next step from this run's schedule. A ``LambdaLR``
    (a :func:`warmup_cosine`'s included) saves its position but not its functions, so a run resumed with another
    shape (more ``steps=``) would otherwise train its first step at the rate the checkpoint holds, then jump. The
    other torch schedulers save their shape with their position: theirs is the checkpoint's."""
    if isinstance(scheduler, LambdaLR):
        groups = scheduler.optimizer.param_groups
        for group, base, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * fn(scheduler.last_epoch)  # LambdaLR's own expression: the same float


def first_step(scheduler: LRScheduler) -> None:
    """The run's first ``scheduler.step()``. torch warns on it when the optimizer has not stepped yet, which in
    fit() means the step was skipped (a GradScaler that found inf/NaN gradients, as fp16's first steps often do, or
    ``on_nonfinite="skip"``); its claim that the first value of the schedule is lost does not apply, since the
    schedule is indexed by fit()'s step."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning
        )
        scheduler.step()

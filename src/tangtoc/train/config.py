"""fit()'s settings: one typed source. Each field carries its type (``Literal`` for choices), its default and its
documentation; :func:`~tangtoc.train.fit` takes exactly these keywords (a test checks the signature against the
fields) and its docstring's settings are generated from :func:`settings_doc`. Validated on entry; every error names
the argument."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from torch.optim.lr_scheduler import LRScheduler

from tangtoc.step import PRECISIONS, LossFrom
from tangtoc.train.distributed import DEFAULT_TIMEOUT_S, STRATEGIES
from tangtoc.train.schedule import SchedulerFactory, check_scheduler_arg

PrecisionName = Literal["auto", "bf16", "fp16", "fp32"]
StrategyName = Literal["auto", "ddp", "fsdp"]
NonfinitePolicy = Literal["raise", "skip"]
PreemptPolicy = Literal["exit", "return"]
NONFINITE_POLICIES: tuple[NonfinitePolicy, ...] = ("raise", "skip")
PREEMPT_POLICIES: tuple[PreemptPolicy, ...] = ("exit", "return")


class SameAsCheckpoints:
    """``log_dir``'s default: the metrics go where the checkpoints go. A sentinel, so that ``log_dir=None`` can mean
    "write no metrics file", as documented (it used to fall back to ``checkpoint_dir`` as well)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SAME_AS_CHECKPOINTS"


SAME_AS_CHECKPOINTS = SameAsCheckpoints()


def doc(text: str) -> dict[str, str]:
    """A setting's documentation, kept in its field's metadata (``fields(FitConfig)[i].metadata["doc"]``)."""
    return {"doc": text}


@dataclass(kw_only=True, slots=True)
class FitConfig:
    """Everything about *how* :func:`~tangtoc.train.fit` trains."""

    steps: int | None = field(
        default=None,
        metadata=doc(
            "A step is one optimizer step of ``grad_accum`` batches. Give exactly one of ``steps`` and ``epochs``."
        ),
    )
    epochs: int | None = field(
        default=None, metadata=doc("Needs ``len(data)``; means ``epochs * len(data) // grad_accum`` steps.")
    )
    precision: PrecisionName = field(
        default="auto",
        metadata=doc(
            '``"auto"`` (bf16 autocast where the device supports it, fp16 with a GradScaler on older CUDA GPUs, '
            'fp32 on the CPU), or ``"bf16"``, ``"fp16"``, ``"fp32"``. TF32 matmuls are on for CUDA during the call '
            "and restored afterwards."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=doc("Run the forward pass through ``torch.compile`` (checkpoints still hold the plain model's keys)."),
    )
    grad_accum: int = field(
        default=1, metadata=doc("Batches per optimizer step; each micro-batch's loss is divided by it.")
    )
    clip_grad: float | None = field(
        default=None,
        metadata=doc("Clip the global gradient norm to this value; the mean norm before clipping is logged."),
    )
    scheduler: LRScheduler | SchedulerFactory | None = field(
        default=None,
        metadata=doc(
            "A learning-rate schedule: a ``torch.optim.lr_scheduler`` scheduler built on ``optimizer``, or a "
            "function ``optimizer -> scheduler`` (needed when fit() builds the optimizer), such as "
            ":func:`~tangtoc.train.schedule.warmup_cosine` (linear warmup, then cosine decay to the end of the run). "
            "Stepped once per optimizer step (not per micro-batch of ``grad_accum``), also for a step the GradScaler "
            "or ``on_nonfinite='skip'`` skipped, so step n always trains at the schedule's value for step n; saved "
            "in checkpoints and restored on resume. The ``lr`` in each train record is the one its step used. "
            "``None``: the optimizer's learning rate, constant."
        ),
    )
    log_every: int = field(
        default=10, metadata=doc("Steps per log interval: the one point where the host reads losses and rates.")
    )
    eval_every: int | None = field(
        default=None, metadata=doc("Evaluate ``eval_data`` every this many steps (and always at the end).")
    )
    checkpoint_dir: Path | None = field(
        default=None,
        metadata=doc(
            "Where checkpoints go (``step-NNNNNNNN.pt``, the newest ``keep_last`` kept), and the metrics log and loss "
            "plot unless ``log_dir`` says otherwise. A checkpoint is always written at the end and on preemption; "
            "``checkpoint_every`` adds periodic ones."
        ),
    )
    checkpoint_every: int | None = field(
        default=None, metadata=doc("Steps between periodic checkpoints (needs ``checkpoint_dir``).")
    )
    keep_last: int = field(default=3, metadata=doc("Checkpoints kept in ``checkpoint_dir``, the newest."))
    resume: bool = field(
        default=True,
        metadata=doc(
            "Continue from the newest checkpoint in ``checkpoint_dir``: model, optimizer, GradScaler, step, RNG states "
            "(CPU and device) and the data position. ``resume=False`` refuses a folder that already holds checkpoints, "
            "rather than mixing two runs in it. A checkpoint past ``steps`` is refused (ValueError); a finished run "
            "resumed trains nothing and adds no evaluation record."
        ),
    )
    on_nonfinite: NonfinitePolicy = field(
        default="raise",
        metadata=doc(
            '``"raise"`` stops with :class:`NonFiniteLossError` naming the first bad step and the last good '
            'checkpoint (detected at the next log point, at no cost per step); ``"skip"`` skips the optimizer step '
            "for that batch, at the price of one sync per step to look at the loss."
        ),
    )
    on_preempt: PreemptPolicy = field(
        default="exit",
        metadata=doc(
            "On SIGTERM or SIGUSR1 (installed only with a ``checkpoint_dir``, from the main thread) the current step "
            "finishes (in a distributed run: every rank trains on to the next log point, where the flag is summed over "
            'the ranks, so that they all stop at the same step) and a checkpoint is written; then ``"exit"`` raises '
            '``SystemExit(0)`` so the scheduler sees a clean exit, and ``"return"`` returns with ``preempted=True``.'
        ),
    )
    progress: bool = field(
        default=True,
        metadata=doc(
            "Progress on stderr at log points: a bar on a terminal or in Jupyter with ipywidgets; elsewhere (a pipe, "
            "a log file, a batch job) one line per log point and per evaluation."
        ),
    )
    peak_flops: float | None = field(
        default=None,
        metadata=doc(
            "The device's peak FLOP/s that MFU divides by (for all the ranks: this, times the number of processes). "
            "``None``: ``$TANGTOC_PEAK_TFLOPS`` (in TFLOP/s) if set, else tangtoc's hardware table for the device "
            "and precision (each part's datasheet; none for a CPU). Every train record and the result carry the peak "
            "and its source (``peak_flops``, ``peak_source``); without one, MFU is not reported and ``peak_source`` "
            "says why. FLOPs come from the model's ``flops_per_token`` / ``flops_per_sample``, or, for any other "
            "model, from PyTorch's FLOP counter on the first micro-batch of each new batch shape (that step, "
            "slowed by the counter, is left out of the rates; see :mod:`tangtoc.flops`)."
        ),
    )
    log_dir: Path | SameAsCheckpoints | None = field(
        default=SAME_AS_CHECKPOINTS,
        metadata=doc(
            "Where ``metrics.jsonl`` (one record per log interval and evaluation) and ``loss.png`` go; by default "
            "``checkpoint_dir``; ``None`` for neither (the records are still in ``FitResult.history``)."
        ),
    )
    strategy: StrategyName = field(
        default="auto",
        metadata=doc(
            "Under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set), each process trains on "
            "``cuda:LOCAL_RANK`` (or the CPU) in a process group that fit() creates (NCCL on CUDA, gloo on the "
            'CPU) and destroys on every way out. ``"ddp"`` (what ``"auto"`` means with more than one process): a '
            "full copy of the model per rank, gradients all-reduced, DDP's ``no_sync`` on the micro-steps of "
            '``grad_accum``. ``"fsdp"``: FSDP2 ``fully_shard`` on each block of the model\'s ``nn.ModuleList`` '
            "objects and on the root, for models that do not fit one device (the model stays sharded after fit() "
            "returns; its full weights are in the checkpoint). Each rank trains on its share of ``data`` (see "
            "``shard_data``). Each rank's loss is the mean over its batch "
            "and the gradients are averaged over the ranks, so equal per-rank batches of ``b`` train as one batch "
            "of ``world_size * b``. Only rank 0 draws the progress bar and writes metrics and checkpoints (which "
            "every rank reads to resume: put ``checkpoint_dir`` on a filesystem all machines share). A SIGTERM to "
            'any rank stops every rank at the next log point (see ``on_preempt``). Single process: ``"auto"``.'
        ),
    )
    shard_data: bool = field(
        default=True,
        metadata=doc(
            "Under torchrun, give each rank its share of ``data``: a :class:`~tangtoc.data.ResidentLoader` built "
            "without a shard is sharded by rank in place (``eval_data``'s too); a ``DataLoader`` over a map-style "
            "data set with the default sampler is made again with a ``DistributedSampler`` (its ``shuffle`` "
            "becomes the sampler's, seeded by the loader's ``generator`` or 0, the same on every rank; "
            "``drop_last`` also drops the samples that do not divide among the ranks, which are otherwise "
            "repeated; batch size, ``collate_fn``, workers and the rest kept), so ``epochs=`` counts passes over "
            "the whole data set; one that already has a ``DistributedSampler`` for this rank is kept. A "
            "``DataLoader`` that cannot be split safely (an ``IterableDataset``, a custom sampler or batch "
            "sampler, a subclass) is refused, with the fix. Each epoch, ``set_epoch`` is called on the loader's "
            "sampler, so shuffling changes each epoch and a resumed run sees the same batches. ``eval_data`` as "
            "a ``DataLoader`` is evaluated whole on every rank (correct, if redundant). Other iterables (a list, a "
            "generator) are used as they are. ``False``: ``data`` is used as it is, already this rank's share."
        ),
    )
    dist_timeout_s: float = field(
        default=DEFAULT_TIMEOUT_S,
        metadata=doc(
            "How long a rank waits to join the process group, and later for any one collective, before failing with a "
            "message (an unreachable master, a port in use, a rank that died) rather than hanging."
        ),
    )
    loss_from: LossFrom | None = field(
        default=None,
        metadata=doc(
            "Where the loss is in the model's output when that is ambiguous: a key or attribute name, an index, or a "
            "function of the output. Decided and checked on the first batch, never searched again."
        ),
    )

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"fit: pass exactly one of steps= or epochs=, got steps={self.steps!r}, epochs={self.epochs!r}."
            )
        _positive_int("steps", self.steps, allow_none=True)
        _positive_int("epochs", self.epochs, allow_none=True)
        _choice("precision", self.precision, PRECISIONS)
        if self.peak_flops is not None and (
            isinstance(self.peak_flops, bool)
            or not isinstance(self.peak_flops, (int, float))
            or not 0 < self.peak_flops < float("inf")
        ):
            raise ValueError(
                "fit: peak_flops must be the device's peak in FLOP/s, a number > 0 (e.g. 989.5e12 for an H100 in "
                f"bf16), or None to look it up, got {self.peak_flops!r}."
            )
        _positive_int("grad_accum", self.grad_accum)
        if self.clip_grad is not None and (isinstance(self.clip_grad, bool) or not self.clip_grad > 0):
            raise ValueError(f"fit: clip_grad must be a number > 0 or None, got {self.clip_grad!r}.")
        check_scheduler_arg(self.scheduler)
        _positive_int("log_every", self.log_every)
        _positive_int("eval_every", self.eval_every, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("keep_last", self.keep_last)
        _choice("on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        _choice("on_preempt", self.on_preempt, PREEMPT_POLICIES)
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError(
                f"fit: checkpoint_every={self.checkpoint_every} needs somewhere to write; pass checkpoint_dir=."
            )
        _choice("strategy", self.strategy, STRATEGIES)
        if not isinstance(self.shard_data, bool):
            raise ValueError(f"fit: shard_data must be True or False, got {self.shard_data!r}.")
        if isinstance(self.dist_timeout_s, bool) or not (
            isinstance(self.dist_timeout_s, (int, float)) and self.dist_timeout_s > 0
        ):
            raise ValueError(f"fit: dist_timeout_s must be a number of seconds > 0, got {self.dist_timeout_s!r}.")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if isinstance(self.log_dir, SameAsCheckpoints):
            self.log_dir = self.checkpoint_dir
        elif self.log_dir is not None:
            self.log_dir = Path(self.log_dir)


def _positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"fit: {name} must be an int >= 1{extra}, got {value!r}.")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"fit: {name} must be one of {', '.join(choices)}, got {value!r}.")


def settings_doc(indent: int = 8, width: int = 120) -> str:
    """The ``Args:`` lines of fit's settings, one per field of :class:`FitConfig`, from the fields' own docs."""
    lines = []
    for f in fields(FitConfig):
        text = f"{f.name}: {f.metadata['doc']}"
        lines += textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * (indent + 4))
    return "\n".join(lines)

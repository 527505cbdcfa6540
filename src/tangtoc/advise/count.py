"""What one training step asks of the hardware: FLOPs, bytes moved and kernels, op by op, without running it.

:class:`CountingMode` is a ``TorchDispatchMode``: it sees every ATen operation a step runs (forward, loss,
backward, optimizer) and records, per call,

* **FLOPs** from PyTorch's own formulas (``torch.utils.flop_counter``'s registry: matmuls, convolutions,
  attention) and tangtoc's for recurrent layers (:mod:`~tangtoc.advise.formulas`); every other op counts 0 FLOPs,
  which is right for the memory-bound ops most are (elementwise, reductions, copies). The few that compute
  without a formula (an FFT, a decomposition, a custom op) are marked ``counted=False``: their FLOPs are missing,
  and :meth:`StepCount.uncounted` names them;
* **bytes**: what the op reads and writes, the sum of its tensor inputs and outputs (a broadcast input counts
  its stored elements once; an in-place op that returns nothing counts what it writes);
* **kernels**: one per op that does work. Views and metadata-only ops (``view``, ``t``, ``detach``,
  ``empty``...) launch none; a ``_foreach_*`` op launches one per chunk of tensors, as PyTorch's
  ``multi_tensor_apply`` does.

:func:`count_step` runs one training step under it on **fake tensors** (``FakeTensorMode``: shapes, dtypes
and strides, no data, no arithmetic), so counting GPT-2 at a batch 64 times larger costs the same few seconds as
at the real one and needs no memory. Fake CPU tensors rather than ``meta`` ones, because CPU tensors take the
paths a CUDA run takes: fused attention (``meta`` falls back to the unfused math path, which materialises the
T x T score matrix that flash attention never writes) and autocast (which does not apply to ``meta``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tangtoc.advise.formulas import aten_ops, flop_free, flops_of, kind_of
from tangtoc.errors import CountError
from tangtoc.move import map_tensors, named_tensors, to_device
from tangtoc.step import LossFn, LossFrom, LossRule, OptimizerFactory, Precision, batch_size_of, default_optimizer

# Ops that launch no kernel although they are not views: metadata (in-place ones included), allocation without
# initialisation and the host-side read of a scalar.
_NO_KERNEL = aten_ops(
    "_unsafe_view",
    "detach",
    "lift_fresh",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "_local_scalar_dense",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_same_size",
    "set_",
    "resize_",
    "_has_compatible_shallow_copy_type",
    "t_",
    "transpose_",
    "swapdims_",
    "squeeze_",
    "unsqueeze_",
    "as_strided_",
)
# Namespaces of ops that launch nothing: TorchScript's metadata reads (prim::device) and the profiler's markers
# (record_function). Other namespaces (a library's custom kernels) are counted: they launch kernels, with no
# FLOP formula.
_MARKERS = ("prim", "profiler")

# multi_tensor_apply (ATen/native/cuda/MultiTensorApply.cuh): one launch holds at most this many tensors per
# list depth, and at most _FOREACH_BLOCKS chunks of _FOREACH_CHUNK elements.
_FOREACH_MAX_TENSORS = (110, 64, 48, 36, 30)
_FOREACH_CHUNK = 65536
_FOREACH_BLOCKS = 320


@dataclass(frozen=True, slots=True)
class OpCall:
    """One ATen operation of a step: what it computes and moves, and how many kernels it launches."""

    op: str  # "aten.mm"
    kind: str  # "matmul" | "conv" | "attention" | "other"
    dtype: str  # dtype of its first floating-point input ("float32"), or of its first tensor
    flops: float
    bytes: float
    kernels: int
    # False: the op computes but no formula counts its FLOPs (an FFT, a custom op): ``flops`` is 0 and too low
    counted: bool = True


@dataclass(frozen=True, slots=True)
class OpSummary:
    """All calls of one op in a step, added up."""

    op: str
    kind: str
    calls: int
    flops: float
    bytes: float
    kernels: int
    counted: bool = True


class Totals:
    """FLOPs, bytes and kernels summed over ``self.calls``: shared by a finished count and one in progress."""

    __slots__ = ()  # so the slotted StepCount stays slotted
    calls: list[OpCall]

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.calls)

    @property
    def bytes(self) -> float:
        return sum(c.bytes for c in self.calls)

    @property
    def kernels(self) -> int:
        return sum(c.kernels for c in self.calls)


@dataclass(frozen=True, slots=True)
class StepCount(Totals):
    """What one training step (forward, loss, backward, optimizer step) does, op by op.

    ``precision`` is ``"fp32"`` (as written) or ``"bf16"`` (the forward and loss under bfloat16 autocast).
    ``batch_bytes`` and ``batch_tensors`` describe the batch a host-to-device copy would move each step.
    """

    calls: tuple[OpCall, ...]
    batch_size: int
    batch_bytes: int
    batch_tensors: int
    params: int
    precision: str = "fp32"
    optimizer: str = ""

    def by_op(self) -> list[OpSummary]:
        """Calls grouped by op, the most FLOPs first, then the most bytes."""
        groups: dict[str, list[OpCall]] = {}
        for c in self.calls:
            groups.setdefault(c.op, []).append(c)
        rows = [
            OpSummary(
                op,
                cs[0].kind,
                len(cs),
                sum(c.flops for c in cs),
                sum(c.bytes for c in cs),
                sum(c.kernels for c in cs),
                cs[0].counted,
            )
            for op, cs in groups.items()
        ]
        return sorted(rows, key=lambda r: (-r.flops, -r.bytes))

    def uncounted(self) -> list[OpSummary]:
        """The ops whose FLOPs no formula counts (see :mod:`~tangtoc.advise.formulas`), the most bytes first: the
        count, and a prediction from it, miss their arithmetic."""
        return [r for r in sorted(self.by_op(), key=lambda r: -r.bytes) if not r.counted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "batch_size": self.batch_size,
            "batch_bytes": self.batch_bytes,
            "params": self.params,
            "optimizer": self.optimizer,
            "flops": self.flops,
            "bytes": self.bytes,
            "kernels": self.kernels,
            "ops": [
                {
                    "op": r.op,
                    "kind": r.kind,
                    "calls": r.calls,
                    "flops": r.flops,
                    "bytes": r.bytes,
                    "kernels": r.kernels,
                    "flops_counted": r.counted,
                }
                for r in self.by_op()
            ],
        }


def footprint(t: torch.Tensor) -> int:
    """Bytes a kernel touches reading or writing ``t``: its elements, a broadcast (stride-0) dimension once."""
    if t.numel() == 0:
        return 0
    try:
        n = math.prod(size for size, stride in zip(t.shape, t.stride(), strict=True) if stride != 0)
    except (RuntimeError, NotImplementedError):  # sparse and nested tensors have no strides
        n = t.numel()
    return int(n) * t.element_size()


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _foreach_kernels(args: Sequence[Any]) -> int:
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    if not lists:
        return 1
    depth = min(len(lists), len(_FOREACH_MAX_TENSORS))
    chunks = sum(max(1, math.ceil(t.numel() / _FOREACH_CHUNK)) for t in lists[0])
    return max(1, math.ceil(len(lists[0]) / _FOREACH_MAX_TENSORS[depth - 1]), math.ceil(chunks / _FOREACH_BLOCKS))


def _dtype(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> str:
    for t in (*inputs, *outputs):
        if t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    first = (inputs or outputs)[0] if (inputs or outputs) else None
    return str(first.dtype).removeprefix("torch.") if first is not None else "none"


def op_name(func: Any) -> str:
    """How an op is named in a count: ``"aten.mm"``, ``"mylib.fused_thing"`` (namespace and overload packet)."""
    return f"{func.namespace}.{func.overloadpacket.__name__}"


def record(func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCall | None:
    """The :class:`OpCall` for one dispatched op, or ``None`` for an op that launches no kernel."""
    packet = func.overloadpacket
    if func.namespace in _MARKERS or func.is_view or packet in _NO_KERNEL:
        return None
    inputs = _tensors((args, kwargs))
    outputs = _tensors(out)
    if not outputs:  # an in-place op that returns nothing (the _foreach_*_ family): count what it writes
        written = [
            i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write
        ]
        outputs = _tensors([args[i] for i in written if i < len(args)])
    flops = flops_of(func, tuple(args), kwargs, out)
    # multi_tensor_apply launches: the _foreach_* family and the fused optimizers (_fused_adamw_...)
    kernels = _foreach_kernels(args) if packet.__name__.startswith(("_foreach_", "_fused_")) else 1
    return OpCall(
        op=op_name(func),
        kind=kind_of(packet),
        dtype=_dtype(inputs, outputs),
        flops=flops or 0.0,
        bytes=float(sum(footprint(t) for t in inputs) + sum(footprint(t) for t in outputs)),
        kernels=kernels,
        counted=flops is not None or flop_free(func),
    )


class CountingMode(Totals, TorchDispatchMode):
    """Record an :class:`OpCall` for every ATen op run inside it (see the module docstring).

    ``with CountingMode() as c: fn()`` then read ``c.calls``. It works on real tensors as well as fake ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[OpCall] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        call = record(func, args, kwargs, out)
        if call is not None:
            self.calls.append(call)
        return out


# -- the batch ----------------------------------------------------------------------------------------------------


def resize_batch(batch: Any, batch_size: int, new_size: int) -> Any:
    """``batch`` with every tensor whose first dimension is ``batch_size`` cut or tiled to ``new_size`` rows."""
    if new_size < 1:
        raise ValueError(f"batch size must be at least 1, got {new_size}.")

    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] != batch_size or new_size == batch_size:
            return t
        if t.is_meta:
            return torch.empty((new_size, *t.shape[1:]), dtype=t.dtype, device="meta")
        if new_size < batch_size:
            return t[:new_size].clone()
        reps = math.ceil(new_size / batch_size)
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:new_size].clone()

    return map_tensors(batch, resize)


def batch_bytes(batch: Any) -> tuple[int, int]:
    """(bytes, tensors) of a batch: what a host-to-device copy moves each step."""
    tensors = [t for _, t in named_tensors(to_device(batch, "meta"))]
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


# -- the training step ------------------------------------------------------------------------------------------


def _counting_optimizer(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    # fit's default optimizer as it runs on CUDA (fused AdamW: a few launches for all parameters), which fake CPU
    # tensors run too: the count is of the step a GPU would run.
    return default_optimizer(params, "cuda")


class _Step(nn.Module):
    """The model and its loss as one module, so ``functional_call`` swaps parameters for the loss as well."""

    def __init__(self, model: nn.Module, rule: LossRule) -> None:
        super().__init__()
        self.model = model
        self.rule = rule

    def forward(self, batch: Any) -> torch.Tensor:
        if self.rule.decided:
            return self.rule.bind(self.model)(batch)
        return self.rule.first(self.model, batch)


@contextlib.contextmanager
def _quiet_fake_tensors() -> Iterator[None]:
    # FakeTensorMode logs a traceback of its own before re-raising a failing op; the error itself is enough.
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    was = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, training in was:
            m.training = training


def count_step(
    model: nn.Module,
    batch: Any,
    *,
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    optimizer: OptimizerFactory | None = None,
    precision: str = "fp32",
    batch_size: int | None = None,
) -> StepCount:
    """Count one training step of ``model`` on ``batch`` (forward, loss, backward, ``optimizer.step()``).

    Nothing runs for real: parameters, buffers and the batch are replaced by fake tensors of the same shapes on
    the CPU, and ``model`` itself is left as it was. The optimizer's state is created by a first step that is not
    counted, so the count is that of every later step.

    Args:
        loss_fn, loss_from: how a batch becomes a loss, as in :func:`tangtoc.fit` (see :mod:`tangtoc.step`).
        optimizer: builds the optimizer from a list of parameters (default: fit's, as on CUDA: fused AdamW).
        precision: ``"fp32"`` as written, or ``"bf16"`` with the forward and loss under bfloat16 autocast.
        batch_size: count at this batch size instead of the example's (tensors whose first dimension is the
            example's batch size are resized; see :func:`resize_batch`).

    Raises:
        CountError: the step reads tensor values (``.item()``, data-dependent shapes), which fake tensors lack.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # private module, imported where it is used

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
    shapes = to_device(batch, "meta")  # NumPy arrays become tensors; a GPU batch is not copied
    example_size = batch_size_of(shapes)
    if batch_size is not None and batch_size != example_size:
        shapes = resize_batch(shapes, example_size, batch_size)
    size = batch_size or example_size
    nbytes, ntensors = batch_bytes(shapes)
    make_optimizer = optimizer or _counting_optimizer
    step_module = _Step(model, LossRule(loss_fn, loss_from, who=""))
    params = dict(step_module.named_parameters())
    buffers = dict(step_module.named_buffers())

    def fake(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="cpu")

    autocast = Precision.exactly(precision, "cpu").autocast  # fake CPU tensors take autocast's CUDA paths
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    counter = CountingMode()
    try:
        with _quiet_fake_tensors(), _train_mode(model), mode:
            fake_params = {n: fake(p).requires_grad_(p.requires_grad) for n, p in params.items()}
            fake_buffers = {n: fake(b) for n, b in buffers.items()}
            state = {**fake_params, **fake_buffers}
            fake_batch = map_tensors(shapes, fake)
            opt = make_optimizer([p for p in fake_params.values() if p.requires_grad])

            def step() -> None:
                with autocast():
                    loss = functional_call(step_module, state, (fake_batch,))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()  # creates the optimizer's state (exp_avg, ...), which later steps only update
            with counter:
                step()
    except Exception as e:
        if type(e).__name__ in ("UnsupportedOperatorException", "UnsupportedFakeTensorException"):
            raise CountError(
                f"the training step could not be counted: an operation has no shape function for fake tensors ({e}). "
                "Measure it on the GPU instead."
            ) from e
        if type(e).__name__ in ("DataDependentOutputException", "DynamicOutputShapeException"):
            raise CountError(
                f"the training step could not be counted: it reads tensor values ({e}), e.g. with .item(), "
                "nonzero() or boolean masking, which counting on shapes alone cannot follow. Measure it on the "
                "GPU instead, or keep value reads out of the step."
            ) from e
        raise
    return StepCount(
        calls=tuple(counter.calls),
        batch_size=size,
        batch_bytes=nbytes,
        batch_tensors=ntensors,
        params=sum(p.numel() for p in params.values()),
        precision=precision,
        optimizer="AdamW (fused)" if optimizer is None else getattr(optimizer, "__name__", "custom"),
    )


def count_calls(fn: Callable[[], object]) -> list[OpCall]:
    """Run ``fn()`` (for real, on whatever tensors it uses) and return the ops it dispatched."""
    with CountingMode() as counter:
        fn()
    return counter.calls


def total(calls: Iterable[OpCall]) -> tuple[float, float, int]:
    """(FLOPs, bytes, kernels) of some calls."""
    calls = list(calls)
    return sum(c.flops for c in calls), sum(c.bytes for c in calls), sum(c.kernels for c in calls)


__all__ = [
    "CountingMode",
    "OpCall",
    "OpSummary",
    "StepCount",
    "count_calls",
    "count_step",
    "footprint",
    "op_name",
    "record",
    "resize_batch",
    "total",
]

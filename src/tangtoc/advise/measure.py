"""Measuring here: real training steps of the user's model, and the host-to-device link, on the one clock.

:func:`measure_step` times the step :func:`tangtoc.fit` runs (its loss rule, precision and default optimizer, from
:mod:`tangtoc.step`) with :func:`tangtoc.bench.measure`; :func:`time_ops` times chosen ops inside one such step on
the CPU (the ops a count has no FLOP formula for); :func:`measure_link` times the copy a batch from host memory
costs each step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tangtoc.advise.count import StepCount, op_name
from tangtoc.bench.measure import Measurement, measure
from tangtoc.clock import now
from tangtoc.device import resolve
from tangtoc.move import to_device
from tangtoc.step import LossFn, LossFrom, LossRule, OptimizerFactory, Precision, default_optimizer


class StepMeasurer(Protocol):
    """What :func:`tangtoc.advise.advise` times a training step with: :func:`measure_step`'s signature. Tests
    pass their own (constructed timings, no clock)."""

    def __call__(
        self,
        model: nn.Module,
        batch: Any,
        device: torch.device | str,
        *,
        precision: str = "fp32",
        data: str = "resident",
        loss_fn: LossFn | None = None,
        loss_from: LossFrom | None = None,
        optimizer: OptimizerFactory | None = None,
        min_time: float = 0.3,
        max_time: float = 3.0,
        threads: int | None = None,
    ) -> Measurement: ...


def training_step(
    model: nn.Module,
    batch: Any,
    device: torch.device,
    precision: Precision,
    *,
    data: str = "resident",
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    optimizer: OptimizerFactory | None = None,
) -> Callable[[], None]:
    """One training step of a copy of ``model`` on ``device``, as fit runs it, to call again and again. Its first
    call decides how a batch becomes a loss (and checks it) and creates the optimizer's state."""
    if data not in ("copied", "resident"):
        raise ValueError(f"data must be 'copied' or 'resident', got {data!r}.")
    net = copy.deepcopy(model).to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer is not None else default_optimizer(params, device)
    host_batch = to_device(batch, "cpu")
    resident = to_device(host_batch, device) if data == "resident" else None
    rule = LossRule(loss_fn, loss_from, who="")
    loss_of: Callable[[Any], torch.Tensor] | None = None

    def step() -> None:
        nonlocal loss_of
        b = resident if resident is not None else to_device(host_batch, device)
        with precision.autocast():
            if loss_of is None:
                loss = rule.first(net, b)
                loss_of = rule.bind(net)
            else:
                loss = loss_of(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure_step(
    model: nn.Module,
    batch: Any,
    device: torch.device | str,
    *,
    precision: str = "fp32",
    data: str = "resident",
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    optimizer: OptimizerFactory | None = None,
    min_time: float = 0.3,
    max_time: float = 3.0,
    threads: int | None = None,
) -> Measurement:
    """Time real training steps of a copy of ``model`` on ``device`` (``model`` itself is not changed).

    ``data="copied"`` copies the batch from host memory every step, as a loop over a CPU data set does;
    ``"resident"`` puts it on the device once. ``precision`` is ``"fp32"`` (PyTorch's default math), ``"tf32"``,
    ``"bf16"`` or ``"fp16"`` (autocast; see :meth:`tangtoc.step.Precision.exactly`). The step is fit's: its loss
    rules (``loss_fn``, ``loss_from``) and, without ``optimizer``, its default optimizer on ``device``.
    ``threads`` sets torch's CPU threads for the measurement (restored afterwards).
    """
    dev = resolve(device)
    prec = Precision.exactly(precision, dev.type)
    step = training_step(model, batch, dev, prec, data=data, loss_fn=loss_fn, loss_from=loss_from, optimizer=optimizer)
    label = f"train step {precision} {data} on {dev}"
    with prec.math():
        warmup = 1 if dev.type == "cpu" else 3  # the first step creates the optimizer state; CUDA loads its libraries
        return measure(
            step,
            device=dev,
            label=label,
            min_time=min_time,
            max_time=max_time,
            min_runs=3,
            warmup=warmup,
            threads=threads,
        )


class _OpTimer(TorchDispatchMode):
    def __init__(self, ops: Collection[str], clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = dict.fromkeys(ops, 0.0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        name = op_name(func)
        if name not in self.seconds:
            return func(*args, **(kwargs or {}))
        start = self.clock()  # CPU ops run synchronously: the host clock around the call is the op's time
        out = func(*args, **(kwargs or {}))
        self.seconds[name] += self.clock() - start
        return out


def time_ops(
    model: nn.Module,
    batch: Any,
    ops: Collection[str],
    *,
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    optimizer: OptimizerFactory | None = None,
    threads: int | None = None,
    clock: Callable[[], float] = now,
) -> dict[str, float]:
    """Seconds each of ``ops`` (named as :func:`~tangtoc.advise.count.op_name` names them) takes, all its calls
    together, in one real fp32 training step of a copy of ``model`` on the CPU, after one untimed step. Only
    those ops are timed, so the rest of the step runs at nearly its normal speed; one step gives a rough figure,
    enough to say whether they matter. ``clock`` reads the host's time (tests pass a fake one)."""
    cpu = torch.device("cpu")
    prec = Precision.exactly("fp32", "cpu")
    step = training_step(model, batch, cpu, prec, loss_fn=loss_fn, loss_from=loss_from, optimizer=optimizer)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        step()  # decides the loss, creates the optimizer's state
        with _OpTimer(ops, clock) as timer:
            step()
    finally:
        torch.set_num_threads(saved_threads)
    return timer.seconds


@dataclass(frozen=True, slots=True)
class UncountedOp:
    """An op of the step whose FLOPs no formula counts (see :mod:`~tangtoc.advise.formulas`): the predictions see
    only its bytes. ``cpu_s``: its time (all calls) in one fp32 training step on the CPU; ``share``: that time
    over the CPU's measured step."""

    op: str
    calls: int
    bytes: float
    cpu_s: float
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "calls": self.calls,
            "bytes": self.bytes,
            "cpu_s": self.cpu_s,
            "share_of_cpu_step": self.share,
        }


def time_uncounted(
    model: nn.Module,
    batch: Any,
    count: StepCount,
    step_s: float,
    *,
    loss_fn: LossFn | None = None,
    loss_from: LossFrom | None = None,
    optimizer: OptimizerFactory | None = None,
    threads: int | None = None,
    clock: Callable[[], float] = now,
) -> tuple[UncountedOp, ...]:
    """``count``'s uncounted ops (:meth:`StepCount.uncounted`), each with its time in one CPU step
    (:func:`time_ops`) and its share of ``step_s``, the CPU's measured step (at most 1: one timed step is noisier
    than a median). No step runs when there are none."""
    ops = count.uncounted()
    if not ops:
        return ()
    seconds = time_ops(
        model,
        batch,
        [o.op for o in ops],
        loss_fn=loss_fn,
        loss_from=loss_from,
        optimizer=optimizer,
        threads=threads,
        clock=clock,
    )
    return tuple(UncountedOp(o.op, o.calls, o.bytes, seconds[o.op], min(1.0, seconds[o.op] / step_s)) for o in ops)


def host_buffer(nbytes: int, *, pinned: bool = False) -> torch.Tensor:
    """``nbytes`` of host memory holding data, as a real batch does. An untouched ``torch.empty`` buffer is not
    backed by memory yet (the kernel maps every page to one shared zero page on first read), so a copy from it
    reads far fewer bytes than it claims and the link looks faster than it is."""
    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    buf.fill_(0xA5)  # writing every page commits it; the value only needs to be non-zero
    return buf


def measure_link(device: torch.device | str, nbytes: int = 64 << 20, *, pinned: bool = False) -> float:
    """Measured host-to-device bandwidth (bytes/s) of a copy of ``nbytes`` to a CUDA ``device``: from pageable
    memory by default, as a batch the user made with ``torch.tensor``/NumPy is, or from pinned memory."""
    dev = resolve(device)
    src = host_buffer(nbytes, pinned=pinned)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    kind = "pinned" if pinned else "pageable"
    m = measure(
        lambda: dst.copy_(src, non_blocking=pinned), device=dev, label=f"{kind} host-to-device copy", min_time=0.1
    )
    return nbytes / m.median

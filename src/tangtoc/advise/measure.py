"""Measuring here: real training steps of the user's model, and the host-to-device link, on the one clock.

:func:`measure_step` times the step :func:`tangtoc.fit` runs (its loss rule, precision and default optimizer, from
:mod:`tangtoc.step`) with :func:`tangtoc.bench.measure`; :func:`measure_link` times the copy a batch from host
memory costs each step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tangtoc.bench.measure import Measurement, measure
from tangtoc.device import resolve
from tangtoc.move import to_device
from tangtoc.step import LossFn, LossFrom, LossRule, OptimizerFactory, Precision, default_optimizer


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
    if data not in ("copied", "resident"):
        raise ValueError(f"data must be 'copied' or 'resident', got {data!r}.")
    prec = Precision.exactly(precision, dev.type)
    net = copy.deepcopy(model).to(dev).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer is not None else default_optimizer(params, dev)
    host_batch = to_device(batch, "cpu")
    resident = to_device(host_batch, dev) if data == "resident" else None
    rule = LossRule(loss_fn, loss_from, who="")
    loss_of: Callable[[Any], torch.Tensor] | None = None

    def step() -> None:
        nonlocal loss_of
        b = resident if resident is not None else to_device(host_batch, dev)
        with prec.autocast():
            if loss_of is None:  # the first (warm-up) step decides how a batch becomes a loss, and checks it
                loss = rule.first(net, b)
                loss_of = rule.bind(net)
            else:
                loss = loss_of(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

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

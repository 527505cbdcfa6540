"""Predict a training step's time on a GPU that is not here, from the counted step and the part's published peaks.

This is a *prediction*, and every result says so and carries its assumptions. The model, per op ``i`` of the
counted step (:mod:`tangtoc.advise.count`):

* ``device_i = max(flops_i / (peak(dtype) * matmul_efficiency), bytes_i / (bandwidth * memory_efficiency),
  kernels_i * min_kernel_s)``: a roofline bound, and no kernel shorter than the GPU's minimum;
* ``host_i = kernels_i * launch_overhead_s``: eager PyTorch spends host time on every op (Python, dispatcher,
  autograd, ``cudaLaunchKernel``) before the GPU sees it; a training step measured on an H200 took about 50 us
  per counted kernel (:class:`Assumptions` says where that comes from).

The host queues kernels ahead of the GPU (launches are asynchronous and a training step has no sync), so a
step takes ``max(sum(host_i), sum(device_i))``, not ``sum(max(host_i, device_i))``: a long matmul lets the host
run ahead through the small ops after it. With the batch copied from the host every step, the copy (at the
host link's bandwidth) is added: a pageable copy waits for the GPU, which ends the host's lead.

Which peak: matmuls in float32 run at the plain FP32 rate by default (PyTorch's
``float32_matmul_precision='highest'``) and at the TF32 rate with ``precision='tf32'``; convolutions in float32
use TF32 in both (cuDNN's ``allow_tf32`` defaults to True), and so do cuDNN's recurrent layers (LSTM, GRU);
attention kernels in float32 run on CUDA cores.
bfloat16 (autocast) uses the part's bf16 tensor-core rate, or its fp16 rate on parts without bf16 (T4), as fp16
autocast would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tangtoc.advise.count import OpCall, StepCount
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec
from tangtoc.step import peak_key as step_peak_key


@dataclass(frozen=True, slots=True)
class Link:
    """A host-to-device link and its effective bandwidth for pinned-memory copies (bytes/s)."""

    name: str
    bandwidth: float
    source: str


_PCIE_SRC = (
    "PCI-SIG: x16 carries 15.75 (Gen3), 31.5 (Gen4), 63 (Gen5) GB/s per direction; effective pinned copies "
    "reach about 80% of that (assumed)"
)
PCIE3 = Link("PCIe Gen3 x16", 12e9, _PCIE_SRC)
PCIE4 = Link("PCIe Gen4 x16", 25e9, _PCIE_SRC)
PCIE5 = Link("PCIe Gen5 x16", 50e9, _PCIE_SRC)

# The host interface each part's datasheet names (H100/H200: PCIe Gen5; A100, L4, A10G, RTX 4090: Gen4; T4: Gen3).
_LINK_BY_FAMILY = (("h100", PCIE5), ("h200", PCIE5), ("t4", PCIE3))


def host_link(spec: HardwareSpec) -> Link:
    """The usual host link of ``spec``'s part (an assumption about the host it sits in)."""
    name = spec.name.lower()
    for family, link in _LINK_BY_FAMILY:
        if family in name.split():
            return link
    return PCIE4


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What a prediction assumes, each overridable. Efficiencies are fractions of the published peak."""

    matmul_efficiency: float = 0.6  # large cuBLAS GEMMs reach 60-75% of the dense peak; small ones less
    memory_efficiency: float = 0.7  # elementwise kernels on large tensors reach 70-90% of HBM bandwidth
    # Host time per counted kernel of an eager training step: Python, dispatcher, autograd, cudaLaunchKernel, and
    # the host work the count does not see (views, autograd bookkeeping, the optimizer's Python), spread over the
    # kernels. Calibrated on the H200 (benchmarks/RESULTS.md, "GPU: the first measurements", the `advise` rows;
    # a 16-core Xeon host, torch 2.11): the MLP and CNN steps there are launch-bound, so each was predicted as
    # kernels x 10 us, and 10 us / (predicted / measured) is the host time per kernel they really took. RESULTS.md
    # gives the ratios' ranges, MLP 0.17-0.26 and CNN 0.18-0.23 (38-59 us per kernel); that run's
    # benchmarks/gpu/2026-11-30-h200/advise_check.json has the six resident rows, MLP fp32/TF32/bf16
    # 0.201/0.201/0.263 and CNN 0.178/0.178/0.193 (22, 22, 37 and 40, 40, 53 kernels): 38-56 us, median 51 us.
    # With 50 us those rows come out at 0.89-1.32x measured, and GPT-2 124M bf16 (645 kernels: launch-bound at
    # 32 ms) at 0.85x instead of 0.63x; GPT-2's fp32 and TF32 steps stay compute-bound, unchanged. Fitted to the
    # rows it is checked against, on one host: a slower host or an older PyTorch costs more per op, a faster one
    # less (--launch-us).
    launch_overhead_s: float = 50e-6
    min_kernel_s: float = 2e-6  # the shortest a kernel occupies the GPU, the gap to the next included
    copy_latency_s: float = 10e-6  # fixed cost of each host-to-device copy (one per batch tensor)
    link_bandwidth: float | None = None  # bytes/s of host-to-device copies; None: the part's usual link
    link_name: str | None = None  # what link_bandwidth is, e.g. "measured here, pinned"

    def __post_init__(self) -> None:
        for name in ("matmul_efficiency", "memory_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"Assumptions.{name} must be in (0, 1], got {value!r}.")
        for name in ("launch_overhead_s", "min_kernel_s", "copy_latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Assumptions.{name} must be >= 0, got {getattr(self, name)!r}.")
        if self.link_bandwidth is not None and self.link_bandwidth <= 0:
            raise ValueError(f"Assumptions.link_bandwidth must be positive (bytes/s), got {self.link_bandwidth!r}.")

    def link(self, spec: HardwareSpec) -> Link:
        if self.link_bandwidth is None:
            return host_link(spec)
        return Link(self.link_name or "given", self.link_bandwidth, "measured" if self.link_name else "given")

    def lines(self, spec: HardwareSpec) -> list[str]:
        link = self.link(spec)
        return [
            f"matmul/conv/attention kernels reach {self.matmul_efficiency:.0%} of the published dense peak",
            f"memory-bound kernels reach {self.memory_efficiency:.0%} of the published memory bandwidth",
            f"eager PyTorch spends {self.launch_overhead_s * 1e6:g} us of host time per op, and no kernel takes "
            f"under {self.min_kernel_s * 1e6:g} us on the GPU",
            f"host-to-device copies: {link.name} at {link.bandwidth / 1e9:g} GB/s plus "
            f"{self.copy_latency_s * 1e6:g} us per tensor ({link.source})",
            "fp32 = PyTorch's defaults (matmuls in plain FP32, cuDNN convolutions in TF32); tf32 = "
            "torch.set_float32_matmul_precision('high'); bf16 = torch.autocast(dtype=torch.bfloat16)",
            "the GPU runs what the CPU-side count saw: fused attention, AdamW foreach; cuDNN/cuBLAS algorithm "
            "choices, fusions and caching effects are not modelled",
        ]


def low_precision(spec: HardwareSpec) -> str:
    """``"bf16"``, or ``"fp16"`` on parts without bfloat16 tensor cores (the T4), where fp16 autocast is the
    fast option; the counted step is the same, both being 2-byte types."""
    return "bf16" if "bfloat16" in spec.peak_flops else "fp16"


def peak_key(call: OpCall, precision: str, spec: HardwareSpec) -> str:
    """The key of ``spec.peak_flops`` that bounds ``call`` under ``precision``: :func:`tangtoc.step.peak_key` for
    the op's kind and dtype (see the module docstring)."""
    # cuDNN runs recurrent layers under the flag it runs convolutions under (torch.backends.cudnn.allow_tf32, True
    # by default), so a float32 LSTM takes the TF32 rate as a float32 convolution does.
    kind = "conv" if call.kind == "rnn" else call.kind
    return step_peak_key(precision, spec.peak_flops, dtype=call.dtype, kind=kind)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A *predicted* training step on ``hardware`` (never measured). Seconds per step.

    ``resident_s``: the data already on the GPU. ``copied_s``: the batch copied from the host every step.
    ``bound_s`` splits ``device_s`` by what bounds each op: ``compute``, ``memory`` or ``kernel floor``.
    """

    target: str
    hardware: str
    precision: str
    batch_size: int
    flops: float
    bytes: float
    kernels: int
    device_s: float
    host_s: float
    transfer_s: float
    bound_s: dict[str, float]
    link: Link
    source: str
    assumptions: tuple[str, ...] = field(default=())

    @property
    def resident_s(self) -> float:
        return max(self.device_s, self.host_s)

    @property
    def copied_s(self) -> float:
        return self.resident_s + self.transfer_s

    @property
    def limited_by(self) -> str:
        """What sets the resident step's time: ``"launch overhead"``, ``"compute"`` or ``"memory bandwidth"``."""
        if self.host_s >= self.device_s:
            return "launch overhead"
        if self.bound_s.get("kernel floor", 0.0) >= max(self.bound_s.get("compute", 0.0), self.bound_s["memory"]):
            return "launch overhead"
        return "compute" if self.bound_s.get("compute", 0.0) >= self.bound_s["memory"] else "memory bandwidth"

    def step_s(self, data: str) -> float:
        if data not in ("copied", "resident"):
            raise ValueError(f"data must be 'copied' or 'resident', got {data!r}.")
        return self.copied_s if data == "copied" else self.resident_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "predicted",
            "target": self.target,
            "hardware": self.hardware,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "resident_s": self.resident_s,
            "copied_s": self.copied_s,
            "device_s": self.device_s,
            "host_s": self.host_s,
            "transfer_s": self.transfer_s,
            "bound_s": dict(self.bound_s),
            "limited_by": self.limited_by,
            "flops": self.flops,
            "bytes": self.bytes,
            "kernels": self.kernels,
            "link": {"name": self.link.name, "bandwidth_Bps": self.link.bandwidth, "source": self.link.source},
            "source": self.source,
            "assumptions": list(self.assumptions),
        }


def op_seconds(call: OpCall, precision: str, spec: HardwareSpec, assumptions: Assumptions) -> tuple[float, str]:
    """Predicted GPU time of one op and what bounds it (``"compute"``, ``"memory"`` or ``"kernel floor"``)."""
    compute = call.flops / (spec.peak_flops[peak_key(call, precision, spec)] * assumptions.matmul_efficiency)
    memory = call.bytes / (spec.memory_bandwidth * assumptions.memory_efficiency)
    floor = call.kernels * assumptions.min_kernel_s
    seconds = max(compute, memory, floor)
    bound = "compute" if seconds == compute and compute > 0 else "memory" if seconds == memory else "kernel floor"
    return seconds, bound


def transfer_seconds(nbytes: float, tensors: int, link: Link, assumptions: Assumptions) -> float:
    """A batch's host-to-device copy: a fixed latency per tensor plus its bytes at the link's bandwidth."""
    return tensors * assumptions.copy_latency_s + nbytes / link.bandwidth


def predict(
    count: StepCount,
    spec: HardwareSpec | str,
    *,
    precision: str | None = None,
    assumptions: Assumptions | None = None,
    target: str | None = None,
) -> Prediction:
    """Predict the step ``count`` describes on ``spec`` (a :class:`HardwareSpec` or a short name like ``"h100"``).

    ``precision`` defaults to ``count.precision``; a bf16 count may be predicted as ``"bf16"`` or ``"fp16"``, an
    fp32 one as ``"fp32"`` or ``"tf32"``.
    """
    if isinstance(spec, str):
        name = spec.lower()
        if name not in BY_SHORT_NAME:
            raise ValueError(f"unknown GPU {spec!r}; known: {', '.join(BY_SHORT_NAME)}.")
        target, spec = target or name, BY_SHORT_NAME[name]
    assumptions = assumptions or Assumptions()
    precision = precision or count.precision
    allowed = ("fp32", "tf32") if count.precision == "fp32" else ("bf16", "fp16")
    if precision not in allowed:
        raise ValueError(
            f"a step counted in {count.precision} predicts {' or '.join(allowed)}, not {precision!r}; count the step "
            f"with precision={'bf16' if precision in ('bf16', 'fp16') else 'fp32'!r} instead."
        )
    bound_s = {"compute": 0.0, "memory": 0.0, "kernel floor": 0.0}
    for call in count.calls:
        seconds, bound = op_seconds(call, precision, spec, assumptions)
        bound_s[bound] += seconds
    link = assumptions.link(spec)
    return Prediction(
        target=target or spec.name,
        hardware=spec.name,
        precision=precision,
        batch_size=count.batch_size,
        flops=count.flops,
        bytes=count.bytes,
        kernels=count.kernels,
        device_s=math.fsum(bound_s.values()),
        host_s=count.kernels * assumptions.launch_overhead_s,
        transfer_s=transfer_seconds(count.batch_bytes, count.batch_tensors, link, assumptions),
        bound_s=bound_s,
        link=link,
        source=spec.source,
        assumptions=tuple(assumptions.lines(spec)),
    )

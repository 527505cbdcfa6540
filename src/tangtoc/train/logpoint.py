"""The log point: where a log interval's losses, gradient norms and work counts are read on the host, in one fetch.

The hot loop keeps each micro-batch's loss on the device (detached, 0-dim) and, with ``clip_grad``, each step's
gradient norm. :func:`read_interval` stacks them, finds the first non-finite step loss and averages on the device,
and reads everything with one :func:`tangtoc.fetch`: one transfer and one sync per log interval. In a distributed
run, the per-step losses, the work counts and the preemption flag ride one all-reduce.

On a CUDA device, :class:`GpuUsage` adds NVML's view of the GPU at the same point (utilisation, memory used): NVML
reads no tensor and queues no work, so it adds no sync.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from tangtoc.move import fetch
from tangtoc.telemetry import _handle, _nvml
from tangtoc.train.distributed import Distributed
from tangtoc.train.metrics import Interval


@dataclass(frozen=True, slots=True)
class Reading:
    """What a log point read: the interval's mean loss, the loss of its last step (read in the same fetch), its
    first non-finite step loss (index within the interval's steps, value), the mean gradient norm, and whether
    any rank asked to stop."""

    loss: float | None
    last_loss: float | None
    first_bad: tuple[int, float] | None
    grad_norm: float | None
    stop: bool


def read_interval(
    losses: list[torch.Tensor],
    grad_norms: list[torch.Tensor],
    grad_accum: int,
    work: Interval,
    stop_requested: bool,
    parallel: Distributed | None,
    device: torch.device,
) -> Reading:
    """Reduce and read one interval (see the module docstring). ``work``'s counts are made host numbers in place:
    a token count kept on the device (padding left out) is read here, and in a distributed run every count
    becomes the sum over the ranks."""
    values: list[torch.Tensor] = []
    per_step = None
    if losses:
        stacked = torch.stack(losses).float()
        per_step = stacked.view(-1, grad_accum).sum(1) if grad_accum > 1 else stacked
    device_tokens = isinstance(work.tokens, torch.Tensor)
    if parallel is not None:
        host = [work.samples, 0 if device_tokens else work.tokens, work.flops, float(stop_requested)]
        counts = torch.tensor(host, dtype=torch.float64).to(device)
        if device_tokens:
            counts[1] += work.tokens  # type: ignore[operator]
        summed = parallel.sum(torch.cat([per_step.double(), counts]) if per_step is not None else counts)
        if per_step is not None:
            per_step = summed[: per_step.numel()] / parallel.world_size  # the mean of the ranks' mean losses
        values += list(summed[-len(host) :].unbind())
    elif device_tokens:
        values.append(work.tokens)  # type: ignore[arg-type]
    n = per_step.numel() if per_step is not None else 0
    if per_step is not None:
        first_bad = torch.where(torch.isfinite(per_step), n, torch.arange(n, device=per_step.device)).min()
        # gather, not per_step[first_bad]: indexing with a 0-dim tensor can turn it into a Python int (a sync).
        values += [per_step.mean(), first_bad, per_step.gather(0, first_bad.clamp(max=n - 1).view(1)), per_step[-1]]
    if grad_norms:
        values.append(torch.stack(grad_norms).float().mean())
    fetched = fetch(*values)  # the one transfer and sync of the interval
    stop = stop_requested
    if parallel is not None:  # the sums over the ranks replace this rank's counts
        samples, tokens, flops, stops = fetched[:4]
        work.samples, work.tokens, work.flops = int(samples), int(tokens), float(flops)
        stop = stops > 0
        fetched = fetched[4:]
    elif device_tokens:
        work.tokens = int(fetched[0])
        fetched = fetched[1:]
    loss = last = bad = None
    if per_step is not None:
        mean, bad_index, bad_value, last_value = fetched[:4]
        loss, last = float(mean), float(last_value)
        if bad_index < n:  # only with on_nonfinite="raise": "skip" never keeps a non-finite loss
            bad = (int(bad_index), float(bad_value))
    return Reading(loss, last, bad, float(fetched[-1]) if grad_norms else None, bool(stop))


class GpuUsage:
    """NVML's utilisation and memory of fit's GPU, for each log record: ``gpu_util_pct`` (the share of NVML's last
    sample period, up to a second, in which a kernel ran) and ``gpu_memory_used_bytes`` (the device's, every
    process's, as ``nvidia-smi`` shows it; ``peak_memory_bytes`` is this process's tensors). Nothing on a device
    that is not CUDA, without ``nvidia-ml-py`` or without a driver; a value this GPU does not report is left out.

    NVML is initialised at the first read and shut down by :meth:`close`, not at every log point (initialising it
    can take milliseconds). ``nvml`` replaces ``pynvml`` (tests).
    """

    def __init__(self, device: torch.device, nvml: Any = None) -> None:
        self._device = device
        self._nvml = nvml
        self._handle: Any = None
        self._off = device.type != "cuda"

    def read(self) -> dict[str, int]:
        if self._off:
            return {}
        if self._handle is None and not self._open():
            return {}
        nvml, handle, out = self._nvml, self._handle, {}
        with contextlib.suppress(Exception):  # NVMLError_NotSupported and kin: this GPU does not report it
            out["gpu_util_pct"] = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        with contextlib.suppress(Exception):
            out["gpu_memory_used_bytes"] = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        return out

    def _open(self) -> bool:
        self._off = True  # unless NVML answers below: then never asked again
        nvml = self._nvml or _nvml()
        if nvml is None:
            return False
        try:
            nvml.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usage, nothing else changes
            return False
        index = self._device.index if self._device.index is not None else torch.cuda.current_device()
        try:
            self._handle = _handle(nvml, index)
        except Exception:  # a GPU that NVML does not list
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            return False
        self._nvml, self._off = nvml, False
        return True

    def close(self) -> None:
        """Shut NVML down if a read initialised it."""
        if self._handle is not None:
            self._handle = None
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

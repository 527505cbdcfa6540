"""The FLOPs of a training step and the peak that MFU divides them by: one rule for fit and the trainer callbacks.

**FLOPs.** A model that declares them (``flops_per_token`` / ``flops_per_sample``) is taken at its word by
:func:`tangtoc.step.work_counter`. For any other model, :class:`ShapeFlops` runs the first micro-batch of each new
batch shape under PyTorch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: forward and backward,
every matmul, convolution and attention; elementwise ops count nothing, as in every MFU convention) and caches the
count by shape (every tensor's path and shape in the batch): a later micro-batch of that shape costs one walk of
the batch's structure and one dictionary lookup. The counter is Python code on every operator, so a counted step
runs slower than the others: fit and the callbacks leave it out of their rates. At most 16 shapes of one kind of
batch are counted; the FLOPs of further shapes (dynamic padding) are estimated from the nearest counted one.

**The peak.** :func:`resolve_peak`: ``peak_flops=`` if given, else ``$TANGTOC_PEAK_TFLOPS`` (TFLOP/s), else
tangtoc's hardware table (:mod:`tangtoc.hardware`, every part with its datasheet) for the device and precision.
Where none is known, MFU is not reported and :attr:`Peak.source` says why. The peak and its source are shown
beside every MFU: nanoGPT's hard-coded A100 peak gave "104% MFU" on an H100.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tangtoc.device import DeviceInfo, describe
from tangtoc.move import named_tensors
from tangtoc.step import Precision, peak_key
from tangtoc.units import fmt_flops

PEAK_ENV = "TANGTOC_PEAK_TFLOPS"
PRECISIONS = ("bf16", "fp16", "tf32", "fp32", "fp64")
_SHORT = {"bfloat16": "bf16", "float16": "fp16", "tf32": "tf32", "float32": "fp32", "float64": "fp64", "float8": "fp8"}
_GIVE = "give peak_flops= or $TANGTOC_PEAK_TFLOPS to report it"
Shape = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Peak:
    """The peak FLOP/s that MFU divides by, and where it comes from.

    ``source`` names it in a few words, shown beside every MFU: ``"bf16 peak of NVIDIA H100 SXM, NVIDIA H100
    Tensor Core GPU datasheet"``, ``"peak_flops= given by the user"``, ``"$TANGTOC_PEAK_TFLOPS=989.5"``. When no
    peak is known, ``flops`` is ``None`` and ``source`` says why. ``line`` is the sentence said once, when training
    starts (with the datasheet's address).
    """

    flops: float | None
    source: str
    line: str


def resolve_peak(
    device: torch.device,
    precision: str | Precision | None,
    override: float | None = None,
    *,
    info: DeviceInfo | None = None,
) -> Peak:
    """The peak for ``precision`` on ``device``: ``override`` (FLOP/s) if given, else ``$TANGTOC_PEAK_TFLOPS``
    (TFLOP/s), else tangtoc's hardware table, which cites each part's datasheet.

    ``precision``: fit's resolved :class:`~tangtoc.step.Precision` (its float32 runs on TF32 on CUDA, and take the
    TF32 peak), or a trainer's, named ``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"`` or ``"fp64"``; ``None`` for
    one the table has no peak for (FP8). ``info``: the device's description (default :func:`tangtoc.describe`).
    """
    if isinstance(precision, str) and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if override is None and os.environ.get(PEAK_ENV):
        raw = os.environ[PEAK_ENV]
        try:
            override = float(raw) * 1e12
        except ValueError as e:
            raise ValueError(f"{PEAK_ENV} must be a number of TFLOP/s, e.g. 989.5, got {raw!r}.") from e
        source = f"${PEAK_ENV}={raw}"
    else:
        source = "peak_flops= given by the user"
    if override is not None:
        valid = isinstance(override, (int, float)) and not isinstance(override, bool) and math.isfinite(override)
        if not valid or override <= 0:
            raise ValueError(
                f"the peak must be a positive number of FLOP/s (e.g. 989.5e12 for an H100's bf16), got {override!r}."
            )
        return Peak(float(override), source, f"MFU against {fmt_flops(override)} ({source}).")
    if precision is None:
        return _none("the trainer's precision has no peak in tangtoc's table")
    info = info if info is not None else describe(device)
    peaks = info.peak_flops
    if isinstance(precision, Precision):
        name, key = precision.name, precision.peak_key(peaks)
    else:
        fp64 = precision == "fp64"
        name, key = precision, peak_key("fp32" if fp64 else precision, peaks, dtype="float64" if fp64 else None)
    flops = peaks.get(key) if peaks else None
    if flops is None or info.spec_source is None:
        return _none(f"no published {name} peak for {info.name} ({device}) in tangtoc's hardware table")
    document = info.spec_source.split(" (", 1)[0]  # the document's name; its address stays in `line`
    line = f"MFU against {fmt_flops(flops)}, the {key} peak of {info.name} (source: {info.spec_source})."
    return Peak(flops, f"{_SHORT.get(key, key)} peak of {info.name}, {document}", line)


def _none(reason: str) -> Peak:
    return Peak(None, reason, f"{reason}: MFU is not reported ({_GIVE}).")


def mfu_text(mfu: float | None, peak_flops: float | None, peak_source: str) -> str:
    """How MFU is shown: ``"MFU 41.2% of 989.5 TFLOP/s (bf16 peak of NVIDIA H100 SXM, ...)"``, or why it is not
    (``"MFU n/a: no published fp32 peak for ..."``; ``"MFU n/a this interval: ..."`` when a peak is known but no
    step of the interval was timed with FLOPs)."""
    if peak_flops is None:
        return f"MFU n/a: {peak_source}"
    if mfu is None:  # e.g. every step of the interval counted its FLOPs, and was left out of the rates
        return f"MFU n/a this interval: no step was timed with its FLOPs (peak {fmt_flops(peak_flops)}, {peak_source})"
    return f"MFU {mfu:.1%} of {fmt_flops(peak_flops)} ({peak_source})"


def shape_of(batch: Any) -> Shape:
    """What the FLOPs of a step depend on: every tensor's path and shape."""
    if type(batch) in (tuple, list) and all(type(t) is torch.Tensor for t in batch):
        # The common (inputs, targets), without the walk (a third of its time; this runs for every micro-batch):
        # the same paths and shapes the walk gives.
        return tuple((f"[{i}]", tuple(t.shape)) for i, t in enumerate(batch))
    return tuple((path, tuple(t.shape)) for path, t in named_tensors(batch))


#: Batch shapes counted under PyTorch's FLOP counter, at most, per kind of batch; see :class:`ShapeFlops`.
MAX_COUNTED_SHAPES = 16


class ShapeFlops:
    """The FLOPs of one micro-batch (forward and backward) per batch shape: counted by PyTorch's FLOP counter the
    first time a shape is seen, then taken from :attr:`by_shape`. See the module docstring.

    With shapes that rarely repeat (dynamic padding: a new sequence length in most batches) counting each one
    would slow most steps and leave them out of the rates. So at most ``max_counted`` shapes of one kind of batch
    (the same tensors, with the same number of dimensions) are counted; the FLOPs of a further shape are estimated
    from the counted shape nearest in size, in proportion to the batch's elements (exact for a batch size or
    for layers linear in the sequence length; attention's quadratic part is scaled linearly).
    :attr:`estimated_shapes` says how many shapes were estimated."""

    def __init__(self, max_counted: int = MAX_COUNTED_SHAPES) -> None:
        if max_counted < 1:
            raise ValueError(f"max_counted must be at least 1, got {max_counted}.")
        self.by_shape: dict[Shape, float] = {}
        self.max_counted = max_counted
        self.estimated_shapes = 0
        self._counted: dict[tuple[tuple[str, int], ...], dict[Shape, float]] = {}  # kind of batch -> counted
        self._open: tuple[FlopCounterMode, Shape] | None = None

    @property
    def counting(self) -> bool:
        """Whether the counter runs (the micro-batch under way has a shape not seen before)."""
        return self._open is not None

    def start(self, batch: Any) -> float | None:
        """The FLOPs of a micro-batch shaped like ``batch``, when that shape was counted before. ``None`` for a new
        shape: the counter then runs, from now until :meth:`stop` (call it once the micro-batch's backward is
        done). While the counter runs, no second one starts."""
        shape = shape_of(batch)
        known = self.by_shape.get(shape)
        if known is None and self._open is None:
            known = self._estimate(shape)
            if known is not None:
                return known
            mode = FlopCounterMode(display=False)
            mode.__enter__()
            self._open = (mode, shape)
        return known

    def _estimate(self, shape: Shape) -> float | None:
        """FLOPs of a new ``shape`` scaled from the nearest counted one of its kind, once that kind has
        ``max_counted`` counted shapes (cached, like a count); ``None`` while it should be counted."""
        counted = self._counted.get(_kind(shape), {})
        if len(counted) < self.max_counted:
            return None
        size = _elements(shape)
        nearest = min(counted, key=lambda s: abs(_elements(s) - size))
        self.by_shape[shape] = flops = counted[nearest] * size / max(_elements(nearest), 1)
        self.estimated_shapes += 1
        return flops

    def stop(self) -> float | None:
        """Stop the counter, and cache and return its count; ``None`` when it was not running."""
        if self._open is None:
            return None
        (mode, shape), self._open = self._open, None
        mode.__exit__(None, None, None)
        self.by_shape[shape] = flops = float(mode.get_total_flops())
        self._counted.setdefault(_kind(shape), {})[shape] = flops
        return flops

    def close(self) -> None:
        """Stop the counter without keeping its count: a micro-batch cut short (an error) counted only part."""
        if self._open is not None:
            mode, self._open = self._open[0], None
            mode.__exit__(None, None, None)


def _kind(shape: Shape) -> tuple[tuple[str, int], ...]:
    """A batch's kind: its tensors' paths and numbers of dimensions (the sizes left out)."""
    return tuple((path, len(dims)) for path, dims in shape)


def _elements(shape: Shape) -> int:
    return sum(math.prod(dims) for _, dims in shape)

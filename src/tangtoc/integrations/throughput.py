"""Tokens/s, samples/s and MFU of a training loop that tangtoc does not run (the transformers ``Trainer``, Lightning).

The loop tells :class:`Meter` where its steps and micro-batches begin and end; the meter counts the work from the
batches' shapes (:func:`tangtoc.step.work_counter`, the rule ``fit`` counts with) and reads the clock at step
boundaries. **FLOPs** come from the model's own ``flops_per_token`` / ``flops_per_sample`` when it declares them;
otherwise the first micro-batch of each new batch shape runs under PyTorch's FLOP counter, and the count is cached
by shape (:class:`tangtoc.flops.ShapeFlops`, as in ``fit``). **MFU** is those FLOPs per second over the device's
published peak for the precision, with the peak's source (:func:`tangtoc.flops.resolve_peak`); where no peak is
published, MFU is not reported.

Timing: each clean step adds the time since the previous step's end (data loading and the loop's own overhead
included). Steps that were instrumented (audited, FLOP-counted) are left out, with their work, as is time spent
outside training (evaluation, checkpoints). :meth:`Meter.read`, at the loop's log point, synchronizes the device
once (fetching any token count kept on it), so the interval covers the work done, not just the work launched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tangtoc.clock import now
from tangtoc.device import synchronize
from tangtoc.flops import PEAK_ENV, Peak, Shape, ShapeFlops, resolve_peak
from tangtoc.move import fetch
from tangtoc.step import Counter, work_counter

# The peak's rule lives in tangtoc.flops, shared with fit; it is named here too, where the callbacks import it.
__all__ = ["PEAK_ENV", "Meter", "Peak", "resolve_peak"]


@dataclass(slots=True)
class _Work:
    samples: int = 0
    tokens: int | torch.Tensor = 0  # a 0-dim device tensor when padding is left out: read at the log point
    flops: float = 0.0
    steps: int = 0

    def add(self, other: _Work) -> None:
        self.samples += other.samples
        self.tokens = self.tokens + other.tokens
        self.flops += other.flops
        self.steps += other.steps


class Meter:
    """Counts one loop's work and time; see the module docstring. ``peak`` from
    :func:`~tangtoc.flops.resolve_peak`; ``clock`` is injectable for tests."""

    def __init__(self, device: torch.device, peak: Peak, clock: Callable[[], float] = now) -> None:
        self.device = device
        self.peak = peak
        self.clock = clock
        self.shapes = ShapeFlops()
        self._counter: Counter | None = None
        self._counted = False  # a micro-batch of the step under way ran under the counter
        self._step = _Work()  # the micro-batches of the step under way
        self._interval = _Work()
        self._seconds = 0.0
        self._since: float | None = None  # the step boundary the next step's time counts from

    @property
    def flops_by_shape(self) -> dict[Shape, float]:
        """The FLOPs counted so far, per batch shape."""
        return self.shapes.by_shape

    @property
    def counting(self) -> bool:
        """Whether the FLOP counter is running (the micro-batch under way has a shape not seen before)."""
        return self.shapes.counting

    def step_start(self) -> None:
        if self._since is None:  # the first step, or the first after evaluation, a checkpoint or an instrumented one
            self._since = self.clock()

    def batch_start(self, model: nn.Module, batch: Any) -> None:
        """Count a micro-batch; start the FLOP counter when its shape is new and the model declares no FLOPs."""
        if self._counter is None:
            self._counter = work_counter(model, batch)
        samples, tokens, flops = self._counter(batch)
        self._step.add(_Work(samples, tokens, flops))
        if flops or self.peak.flops is None or self.shapes.counting:
            return  # declared by the model; or no peak, so no MFU to count for; or already counting
        known = self.shapes.start(batch)
        if known is None:  # a new shape: the counter runs until batch_end
            self._counted = True
        else:
            self._step.flops += known

    def batch_end(self) -> None:
        """The micro-batch's backward is done: stop the FLOP counter if it runs, and cache its count."""
        counted = self.shapes.stop()
        if counted is not None:
            self._step.flops += counted

    def step_end(self, instrumented: bool) -> None:
        """One optimizer step done. A step that was ``instrumented`` (audited) or FLOP-counted is left out of the
        rates: the device is synchronized so that the next step's time starts once its work is done."""
        self.batch_end()
        step, self._step = self._step, _Work()
        if instrumented or self._counted:
            self._counted = False
            synchronize(self.device)
            self._since = self.clock()
            return
        now = self.clock()
        if self._since is not None:
            step.steps = 1
            self._interval.add(step)
            self._seconds += now - self._since
        self._since = now

    def idle(self) -> None:
        """Time since the last step is not training (evaluation, a checkpoint): the next step starts the clock."""
        self._since = None

    def read(self) -> dict[str, float]:
        """The rates since the last read, at a log point (one sync), then start a new interval. Keys are
        ``tangtoc/step_time_s``, ``tangtoc/samples_per_s``, ``tangtoc/tokens_per_s`` (batches of token ids) and
        ``tangtoc/mfu`` with ``tangtoc/peak_flops`` (FLOPs and a peak known); empty when no clean step was timed."""
        work, self._interval = self._interval, _Work()
        tokens = work.tokens
        if isinstance(tokens, torch.Tensor):
            (tokens,) = fetch(tokens)  # the one sync of the interval
        else:
            synchronize(self.device)
        if self._since is not None:  # the work launched before the sync finished by now: it belongs to this interval
            now = self.clock()
            self._seconds += now - self._since
            self._since = now
        seconds, self._seconds = self._seconds, 0.0
        if not work.steps or seconds <= 0:
            return {}
        out = {"tangtoc/step_time_s": seconds / work.steps, "tangtoc/samples_per_s": work.samples / seconds}
        if tokens:
            out["tangtoc/tokens_per_s"] = float(tokens) / seconds
        if work.flops and self.peak.flops:
            out["tangtoc/mfu"] = work.flops / seconds / self.peak.flops
            out["tangtoc/peak_flops"] = self.peak.flops
        return out

    def close(self) -> None:
        """Stop the FLOP counter if a step was cut short (an error)."""
        self.shapes.close()

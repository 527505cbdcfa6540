"""Should this training run on a GPU? Measure what is here, predict what is not, and say so in one sentence.

:func:`advise` measures a real training step (forward, loss, backward, optimizer step) with
:func:`tangtoc.bench.measure` on the CPU and on every accelerator present, with the batch copied from the host
every step and with the data resident on the device; counts the step once on fake tensors
(:func:`~tangtoc.advise.count.count_step`) and predicts it on named GPUs (:func:`~tangtoc.advise.predict.predict`);
finds the batch size where the answer flips; and turns it all into an :class:`Advice`: a recommendation with
numbers and the changes that matter most. Measured numbers and predicted ones are kept apart and labelled.

The decision itself (:func:`decide`, :func:`find_crossover`) is a pure function of the numbers, so it is tested
on constructed timings without a clock or a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from tangtoc.advise.count import (
    CountError,
    LossFn,
    OptimizerFactory,
    StepCount,
    batch_size_of,
    check_loss,
    compute_loss,
    count_step,
    default_optimizer,
    resize_batch,
)
from tangtoc.advise.predict import Assumptions, Prediction, low_precision, predict
from tangtoc.bench.measure import Measurement, measure
from tangtoc.device import available_devices, cpu_cores, cpu_model, describe, float32_math, resolve
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec, lookup
from tangtoc.move import to_device

#: A GPU must be at least this much faster per step to be worth moving to (renting, copying data, waiting for a
#: machine): below it, the answer is "stay on the CPU".
WORTH_IT = 1.5
#: The crossover search looks at batch sizes up to this multiple of the example's.
CROSSOVER_FACTOR = 64
#: A job the CPU finishes within this many seconds stays there when the GPU would have to be rented: starting a
#: machine and copying code and data onto it takes longer than the job saves (seed 7.1: "quick experiments").
SHORT_JOB_S = 600.0
#: A change is suggested when it saves at least this fraction of the GPU step.
SUGGEST_SAVING = 0.10


# -- formatting shared with the CLI -----------------------------------------------------------------------------


def fmt_seconds(s: float) -> str:
    """A step time with its unit: ``"1.23 ms"``, ``"450 us"``, ``"2.1 s"``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= 0.9995 * scale:  # what rounds to 1 of a unit is shown in it: "1 ms", not "1e+03 us"
            value = s / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_ratio(x: float) -> str:
    """A speed-up to two significant figures (a prediction is no more precise): ``"1.6x"``, ``"42x"``, ``"1,100x"``."""
    return f"{float(f'{x:.2g}'):,.0f}x" if x >= 10 else f"{x:.2g}x"


def fmt_duration(s: float) -> str:
    """A job's wall time, to the precision anyone plans with: ``"3 h 10 min"``, ``"5 min"``, ``"42 s"``."""
    if s < 1:
        return fmt_seconds(s)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{s / 86400:.1f} days"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# -- what was measured ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeasuredStep:
    """A *measured* training step: median seconds of ``measurement``, on ``device`` here.

    ``data`` is ``"copied"`` (the batch starts on the host every step) or ``"resident"`` (it is already on the
    device; on the CPU the two are the same and are reported as resident).
    """

    device: str
    hardware: str
    precision: str
    data: str
    batch_size: int
    measurement: Measurement

    @property
    def step_s(self) -> float:
        return self.measurement.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "measured",
            "device": self.device,
            "hardware": self.hardware,
            "precision": self.precision,
            "data": self.data,
            "batch_size": self.batch_size,
            "step_s": self.step_s,
            "measurement": self.measurement.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class LinearFit:
    """CPU seconds per step as ``fixed_s + per_sample_s * batch``, fitted to measured ``(batch, seconds)`` points."""

    fixed_s: float
    per_sample_s: float
    points: tuple[tuple[int, float], ...]

    @classmethod
    def through(cls, points: Sequence[tuple[int, float]]) -> LinearFit:
        """The line through two measured points (a single point: proportional to the batch)."""
        pts = sorted(points)
        if not pts or any(b < 1 or s <= 0 for b, s in pts):
            raise ValueError(f"need (batch >= 1, seconds > 0) points, got {points!r}.")
        (b1, s1), (b2, s2) = pts[0], pts[-1]
        slope = (s2 - s1) / (b2 - b1) if b2 != b1 else 0.0
        fixed = s1 - slope * b1
        if slope < 0 or fixed < 0 or b1 == b2:  # noise (or one point): fall back to proportional
            fixed, slope = 0.0, s2 / b2
        return cls(fixed, slope, tuple(pts))

    def at(self, batch: int) -> float:
        return self.fixed_s + self.per_sample_s * batch


# -- the decision -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuOption:
    """One GPU's step times, measured or predicted, by ``(precision, data)``; the basis of a recommendation.

    ``steps`` holds at least ``("fp32", "copied")`` (the loop as written: fp32, batch copied every step) and
    ``("fp32", "resident")``; ``low`` is the half-precision option the GPU has (``"bf16"`` or ``"fp16"``).
    """

    label: str  # "h100, predicted" / "cuda:0 (NVIDIA H200), measured"
    how: str  # "measured" | "predicted"
    steps: Mapping[tuple[str, str], float]
    limited_by: str = ""  # what bounds the resident fp32 step, where known: "launch overhead", "compute", ...
    kernels: int | None = None
    launch_overhead_s: float | None = None
    low: str = "bf16"

    @property
    def baseline_s(self) -> float:
        return self.steps[("fp32", "copied")]

    @property
    def best(self) -> tuple[tuple[str, str], float]:
        return min(self.steps.items(), key=lambda kv: kv[1])


@dataclass(frozen=True, slots=True)
class Crossover:
    """Where the GPU overtakes the CPU as the batch grows.

    ``points`` are ``(batch, cpu_s, gpu_s)``: CPU seconds from the linear fit of measured points, GPU seconds
    from ``gpu_how`` (predicted from a count at that batch size). ``batch_size`` is the smallest checked batch
    from which on the GPU is faster at every checked size, ``None`` when it never is.
    """

    batch_size: int | None
    points: tuple[tuple[int, float, float], ...]
    gpu_how: str = "predicted"

    @property
    def largest_checked(self) -> int:
        return max(b for b, _, _ in self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "gpu_how": self.gpu_how,
            "points": [{"batch": b, "cpu_s": c, "gpu_s": g} for b, c, g in self.points],
        }


def find_crossover(cpu: LinearFit, gpu_s: Mapping[int, float], how: str = "predicted") -> Crossover:
    """The smallest checked batch size from which the GPU step beats the CPU step at every larger checked size."""
    points = tuple((b, cpu.at(b), gpu_s[b]) for b in sorted(gpu_s))
    found: int | None = None
    for b, c, g in reversed(points):
        if g < c:
            found = b
        else:
            break
    return Crossover(found, points, how)


@dataclass(frozen=True, slots=True)
class Recommendation:
    verdict: str  # "gpu" | "gpu-with-changes" | "cpu" | "unknown"
    sentence: str
    changes: tuple[str, ...]


_CHANGE_TEXT = {
    ("fp32", "resident"): "keep the data on the GPU (copy the data set there once and slice batches on the device)",
    ("tf32", "resident"): "allow TF32 matmuls (torch.set_float32_matmul_precision('high'))",
    ("bf16", "resident"): "train under bf16 autocast (torch.autocast('cuda', dtype=torch.bfloat16))",
    ("fp16", "resident"): "train under fp16 autocast with a GradScaler (this GPU has no bf16 tensor cores)",
}


def _changes(gpu: GpuOption, crossover: Crossover | None, batch_size: int) -> list[str]:
    """What to change first on the GPU, most time saved first, with the numbers."""
    base = gpu.baseline_s
    found: list[tuple[float, str]] = []
    resident = gpu.steps.get(("fp32", "resident"))
    if resident is not None and base - resident >= SUGGEST_SAVING * base:
        share = (base - resident) / base
        found.append(
            (
                base - resident,
                f"{_CHANGE_TEXT[('fp32', 'resident')]}: copying the batch is {share:.0%} of the step; "
                f"{fmt_seconds(base)} -> {fmt_seconds(resident)} per step",
            )
        )
    if resident is not None:
        for precision in ("tf32", gpu.low):
            t = gpu.steps.get((precision, "resident"))
            if t is not None and resident - t >= SUGGEST_SAVING * resident:
                found.append(
                    (
                        resident - t,
                        f"{_CHANGE_TEXT[(precision, 'resident')]}: {fmt_seconds(resident)} -> {fmt_seconds(t)} "
                        "per step with resident data",
                    )
                )
    if gpu.limited_by == "launch overhead" and crossover is not None:
        bigger = [(b, g) for b, _, g in crossover.points if b > batch_size]
        if bigger:
            b, g = bigger[-1]
            per_now, per_big = base / batch_size, g / b
            if per_big <= (1 - SUGGEST_SAVING) * per_now:
                found.append(
                    (
                        (per_now - per_big) * batch_size,
                        f"a bigger batch: the launch overhead is paid per step, not per sample; {fmt_seconds(per_now)}"
                        f" per sample at batch {batch_size}, {fmt_seconds(per_big)} at batch {b} ({gpu.how})",
                    )
                )
        found.append(
            (
                0.0,
                "fewer launches: CUDA graphs or torch.compile fuse the many small kernels of a step",
            )
        )
    return [text for _, text in sorted(found, key=lambda x: -x[0])]


def _why_slow(gpu: GpuOption) -> str:
    base = gpu.baseline_s
    resident = gpu.steps.get(("fp32", "resident"), base)
    if base - resident >= 0.5 * base:
        return f"copying each batch to the GPU is {(base - resident) / base:.0%} of its step"
    if gpu.limited_by == "launch overhead":
        if gpu.kernels and gpu.launch_overhead_s:
            return (
                f"launch overhead dominates at this size ({gpu.kernels} kernels x "
                f"{gpu.launch_overhead_s * 1e6:g} us per step)"
            )
        return "launch overhead dominates at this size"
    if gpu.limited_by:
        return f"the GPU step is {gpu.limited_by}-bound and still slower"
    return "the GPU step is slower"


def _job(seconds: float, job_steps: int | None) -> str:
    return fmt_duration(seconds * job_steps) if job_steps else ""


def decide(
    cpu_s: float,
    gpu: GpuOption | None,
    *,
    batch_size: int,
    crossover: Crossover | None = None,
    job_steps: int | None = None,
    no_gpu_reason: str = "",
) -> Recommendation:
    """The recommendation: which device, how much faster per step and for the whole job, and what to change.

    ``cpu_s`` is the CPU's measured step at ``batch_size``; ``gpu`` the GPU to compare with (measured if one is
    here, else predicted). The GPU is recommended when the loop as written (fp32, batch copied every step) is
    at least :data:`WORTH_IT` times faster on it; "with changes" when only the best option is; and not at all for a
    job the CPU finishes within :data:`SHORT_JOB_S` when the GPU is not here but would have to be rented.
    """
    if gpu is None:
        return Recommendation(
            "unknown",
            f"cannot tell: {no_gpu_reason or 'no GPU is here to measure and none was predicted'}; the CPU takes "
            f"{fmt_seconds(cpu_s)} per step" + (f" ({_job(cpu_s, job_steps)} for the job)." if job_steps else "."),
            (),
        )
    base = gpu.baseline_s
    speedup = cpu_s / base
    (best_precision, best_data), best_s = gpu.best
    best_speedup = cpu_s / best_s
    changes = tuple(_changes(gpu, crossover, batch_size))
    job = ""
    if job_steps and gpu.how == "predicted" and cpu_s * job_steps < SHORT_JOB_S and best_speedup >= WORTH_IT:
        sentence = (
            f"stay on the CPU: the whole job ({job_steps:,} steps) takes {_job(cpu_s, job_steps)} here, less than "
            f"renting and setting up a GPU machine; the GPU ({gpu.label}) would be ~{fmt_ratio(speedup)} faster per "
            f"step ({fmt_seconds(base)} vs {fmt_seconds(cpu_s)}), {_job(base, job_steps)} for the job."
        )
        return Recommendation("cpu", sentence, changes)
    if speedup >= WORTH_IT:
        if job_steps:
            job = f"; the job ({job_steps:,} steps) drops from {_job(cpu_s, job_steps)} to {_job(base, job_steps)}"
        sentence = (
            f"use the GPU ({gpu.label}): ~{fmt_ratio(speedup)} faster per step ({fmt_seconds(cpu_s)} on the CPU, "
            f"{fmt_seconds(base)} on the GPU as written){job}."
        )
        if best_speedup >= 1.2 * speedup:
            sentence += f" With the changes below, ~{fmt_ratio(best_speedup)} ({fmt_seconds(best_s)} per step)."
        return Recommendation("gpu", sentence, changes)
    if best_speedup >= WORTH_IT:
        if job_steps:
            job = f"; the job ({job_steps:,} steps) drops from {_job(cpu_s, job_steps)} to {_job(best_s, job_steps)}"
        data = "data resident on the GPU" if best_data == "resident" else "the batch copied every step"
        sentence = (
            f"use the GPU ({gpu.label}) only with changes: as written (fp32, batch copied every step) it is "
            f"{fmt_ratio(speedup)} the CPU's speed ({fmt_seconds(base)} vs {fmt_seconds(cpu_s)} per step), but with "
            f"{best_precision} and {data} it is ~{fmt_ratio(best_speedup)} faster ({fmt_seconds(best_s)}){job}."
        )
        return Recommendation("gpu-with-changes", sentence, changes)
    reason = (
        _why_slow(gpu) if speedup < 1 else f"the GPU is only {fmt_ratio(speedup)} faster per step, not worth a move"
    )
    sentence = (
        f"stay on the CPU: {reason} ({gpu.label}: {fmt_seconds(base)} per step as written, best "
        f"{fmt_seconds(best_s)}, vs {fmt_seconds(cpu_s)} on the CPU)"
    )
    if crossover is not None:
        if crossover.batch_size is not None and crossover.batch_size > batch_size:
            sentence += f"; the GPU wins from batch size >= {crossover.batch_size} ({crossover.gpu_how})"
        elif crossover.batch_size is None:
            sentence += f"; no batch size up to {crossover.largest_checked:,} makes the GPU faster"
    return Recommendation("cpu", sentence + ".", changes if best_speedup >= 1 else ())


# -- measuring --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cuda_math(device: torch.device, precision: str) -> Iterator[None]:
    """PyTorch's fp32 defaults (FP32 matmuls, TF32 cuDNN convolutions), or TF32 matmuls for ``"tf32"``, during a
    measurement on CUDA; the user's settings are restored on exit. No-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    with float32_math(tf32_matmul=precision == "tf32"):
        yield


def measure_step(
    model: nn.Module,
    batch: Any,
    device: torch.device | str,
    *,
    precision: str = "fp32",
    data: str = "resident",
    loss_fn: LossFn | None = None,
    optimizer: OptimizerFactory | None = None,
    min_time: float = 0.3,
    max_time: float = 3.0,
    threads: int | None = None,
) -> Measurement:
    """Time real training steps of a copy of ``model`` on ``device`` (``model`` itself is not changed).

    ``data="copied"`` copies the batch from host memory every step, as a loop over a CPU data set does;
    ``"resident"`` puts it on the device once. ``precision`` is ``"fp32"``, ``"tf32"`` or ``"bf16"`` (autocast).
    ``threads`` sets torch's CPU threads for the measurement (restored afterwards).
    """
    dev = resolve(device)
    if data not in ("copied", "resident"):
        raise ValueError(f"data must be 'copied' or 'resident', got {data!r}.")
    if precision not in ("fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, tf32, bf16 or fp16, got {precision!r}.")
    net = copy.deepcopy(model).to(dev).train()
    opt = (optimizer or default_optimizer)([p for p in net.parameters() if p.requires_grad])
    host_batch = to_device(batch, "cpu")
    resident = to_device(host_batch, dev) if data == "resident" else None
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        b = resident if resident is not None else to_device(host_batch, dev)
        with torch.autocast(dev.type, dtype=half) if half is not None else contextlib.nullcontext():
            loss = check_loss(compute_loss(net, b, loss_fn), loss_fn)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    label = f"train step {precision} {data} on {dev}"
    with cuda_math(dev, precision):
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


def measure_link(device: torch.device | str, nbytes: int = 64 << 20) -> float:
    """Measured host-to-device bandwidth (bytes/s) of a pinned copy of ``nbytes`` to a CUDA ``device``."""
    dev = resolve(device)
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    m = measure(lambda: dst.copy_(src, non_blocking=True), device=dev, label="pinned host-to-device copy", min_time=0.1)
    return nbytes / m.median


# -- the advice -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """A GPU that is here, predicted and measured at the same settings: how far the model is off."""

    device: str
    precision: str
    data: str
    predicted_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        """predicted / measured: above 1 the model is pessimistic, below 1 optimistic."""
        return self.predicted_s / self.measured_s


@dataclass(frozen=True, slots=True)
class Advice:
    """The answer of :func:`advise`: what was measured, what was predicted, and the recommendation.

    Measured and predicted step times are kept apart (``measured`` / ``predicted``); every prediction carries its
    assumptions and the source of the peaks it used.
    """

    verdict: str  # "gpu" | "gpu-with-changes" | "cpu" | "unknown"
    recommendation: str
    changes: tuple[str, ...]
    batch_size: int
    job_steps: int | None
    job: str  # how job_steps was reached, e.g. "3 epochs x 50,000 samples / batch 64 = 2,346 steps"
    measured: tuple[MeasuredStep, ...]
    predicted: tuple[Prediction, ...]
    checks: tuple[Check, ...]
    cpu_fit: LinearFit
    crossover: Crossover | None
    count: StepCount | None
    notes: tuple[str, ...] = ()
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_step_s(self) -> float:
        return next(m.step_s for m in self.measured if m.device == "cpu" and m.batch_size == self.batch_size)

    def job_s(self, step_s: float) -> float | None:
        return step_s * self.job_steps if self.job_steps else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "recommendation": self.recommendation,
            "changes": list(self.changes),
            "batch_size": self.batch_size,
            "job_steps": self.job_steps,
            "job": self.job,
            "measured": [m.to_dict() for m in self.measured],
            "predicted": [p.to_dict() for p in self.predicted],
            "checks": [
                {
                    "device": c.device,
                    "precision": c.precision,
                    "data": c.data,
                    "predicted_s": c.predicted_s,
                    "measured_s": c.measured_s,
                    "predicted_over_measured": c.ratio,
                }
                for c in self.checks
            ],
            "cpu_fit": {
                "fixed_s": self.cpu_fit.fixed_s,
                "per_sample_s": self.cpu_fit.per_sample_s,
                "points": [list(p) for p in self.cpu_fit.points],
            },
            "crossover": self.crossover.to_dict() if self.crossover else None,
            "count": self.count.to_dict() if self.count else None,
            "notes": list(self.notes),
            "machine": dict(self.machine),
        }


def job_steps_of(
    batch_size: int, steps: int | None, epochs: float | None, dataset_size: int | None
) -> tuple[int | None, str]:
    """The job's number of steps and how it was reached, from ``steps`` or ``epochs`` x ``dataset_size``."""
    if steps is not None and (epochs is not None or dataset_size is not None):
        raise ValueError("give either steps, or epochs and dataset_size, not both.")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}.")
        return steps, f"{steps:,} steps"
    if (epochs is None) != (dataset_size is None):
        raise ValueError("epochs and dataset_size go together: the job is epochs x dataset_size / batch_size steps.")
    if epochs is None or dataset_size is None:
        return None, ""
    if not epochs > 0 or isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(
            f"need epochs > 0 and dataset_size >= 1, got epochs={epochs!r}, dataset_size={dataset_size!r}."
        )
    n = math.ceil(epochs * math.ceil(dataset_size / batch_size))
    return n, f"{epochs:g} epochs x {dataset_size:,} samples / batch {batch_size} = {n:,} steps"


def resolve_targets(targets: Sequence[str], present: Sequence[HardwareSpec]) -> list[tuple[str, HardwareSpec]]:
    """``[(label, spec)]`` for target names; ``"auto"`` is each GPU here that the hardware table knows, else h100."""
    out: list[tuple[str, HardwareSpec]] = []
    for name in targets:
        key = name.strip().lower()
        if key == "auto":
            out += [(spec.name, spec) for spec in present] or [("h100", BY_SHORT_NAME["h100"])]
        elif key in BY_SHORT_NAME:
            out.append((key, BY_SHORT_NAME[key]))
        else:
            raise ValueError(f"unknown target GPU {name!r}; known: auto, {', '.join(BY_SHORT_NAME)}.")
    return list({label: (label, spec) for label, spec in out}.values())


def _option(label: str, how: str, preds: Mapping[str, Prediction], assumptions: Assumptions) -> GpuOption:
    steps = {(p.precision, data): p.step_s(data) for p in preds.values() for data in ("copied", "resident")}
    base = preds["fp32"]
    low = next((p for p in preds if p in ("bf16", "fp16")), "bf16")
    return GpuOption(label, how, steps, base.limited_by, base.kernels, assumptions.launch_overhead_s, low)


def _predict_all(
    counts: Mapping[str, StepCount], spec: HardwareSpec, label: str, assumptions: Assumptions
) -> dict[str, Prediction]:
    preds = {"fp32": predict(counts["fp32"], spec, precision="fp32", assumptions=assumptions, target=label)}
    if "tf32" in spec.peak_flops and spec.peak_flops["tf32"] > spec.peak_flops["float32"]:
        preds["tf32"] = predict(counts["fp32"], spec, precision="tf32", assumptions=assumptions, target=label)
    if "bf16" in counts:
        low = low_precision(spec)
        preds[low] = predict(counts["bf16"], spec, precision=low, assumptions=assumptions, target=label)
    return preds


def advise(
    model: nn.Module,
    example_batch: Any,
    *,
    loss_fn: LossFn | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    dataset_size: int | None = None,
    targets: Sequence[str] = ("auto",),
    optimizer: OptimizerFactory | None = None,
    devices: Sequence[torch.device | str] | None = None,
    assumptions: Assumptions | None = None,
    min_time: float = 0.3,
    max_time: float = 3.0,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Advice:
    """Should ``model`` train on a GPU? Measure here, predict for ``targets``, and recommend.

    Args:
        model: the model; it is copied for every measurement and never changed.
        example_batch: one batch as the training loop sees it (tensors, NumPy arrays, or containers of them),
            batch size first. With ``loss_fn`` it is ``(inputs, targets)``; without, ``model(*batch)`` returns
            the loss (as in :func:`tangtoc.fit`).
        steps: the job's optimizer steps; or ``epochs`` over ``dataset_size`` samples. Either gives wall times.
        targets: GPUs to predict for, by short name (``"h100"``, ``"a100"``, ``"t4"``, ``"l4"``...; see
            :data:`tangtoc.hardware.BY_SHORT_NAME`). ``"auto"``: each GPU here (to check the model against a
            measurement), or the H100 when there is none.
        optimizer: builds the optimizer from a list of parameters (default: AdamW).
        devices: accelerators to measure on (default: every one present). The CPU is always measured.
        assumptions: the prediction's efficiencies, launch overhead and link (default :class:`Assumptions`).
        min_time, max_time: seconds measured per configuration, at least / at most (see :func:`measure`).
        threads: torch's CPU threads while measuring (default: torch's own choice). On a shared machine, fewer
            threads than cores avoid waiting for a descheduled one.
        progress: called with a short description before each stage (the CLI shows it).
    """
    say = progress or (lambda _msg: None)
    assumptions = assumptions or Assumptions()
    batch_size = batch_size_of(example_batch)
    job_steps, job = job_steps_of(batch_size, steps, epochs, dataset_size)
    accelerators = [resolve(d) for d in devices] if devices is not None else available_devices()[1:]
    accelerators = [d for d in dict.fromkeys(accelerators) if d.type != "cpu"]
    present: dict[str, HardwareSpec | None] = {
        str(d): lookup(torch.cuda.get_device_name(d)) if d.type == "cuda" else None for d in accelerators
    }
    target_specs = resolve_targets(targets, [s for s in present.values() if s is not None])
    notes: list[str] = []

    # 1. Measure the CPU at two batch sizes (for the crossover's linear fit). First, so that a step that fails
    #    fails for real, with PyTorch's own message, not inside the fake tensors of the count.
    measured: list[MeasuredStep] = []
    cpu_name = cpu_model()
    second = batch_size // 4 if batch_size >= 4 else 2 * batch_size
    for b in (batch_size, second):
        say(f"measuring a training step on the CPU at batch {b}")
        batch_b = example_batch if b == batch_size else resize_batch(to_device(example_batch, "cpu"), batch_size, b)
        m = measure_step(
            model,
            batch_b,
            "cpu",
            loss_fn=loss_fn,
            optimizer=optimizer,
            min_time=min_time,
            max_time=max_time,
            threads=threads,
        )
        measured.append(MeasuredStep("cpu", cpu_name, "fp32", "resident", b, m))
    cpu_fit = LinearFit.through([(m.batch_size, m.step_s) for m in measured])
    cpu_s = measured[0].step_s

    # 2. Count the step on fake tensors: at the example's batch size, in fp32 and bf16.
    counts: dict[str, StepCount] = {}
    count_error = ""
    try:
        say("counting one training step (fake tensors)")
        counts["fp32"] = count_step(model, example_batch, loss_fn=loss_fn, optimizer=optimizer)
        counts["bf16"] = count_step(model, example_batch, loss_fn=loss_fn, optimizer=optimizer, precision="bf16")
    except CountError as e:
        count_error = str(e)
        notes.append(f"no prediction: {e}")

    # Then every accelerator, the batch copied every step and resident.
    link_bw: dict[str, float] = {}
    for d in accelerators:
        name = describe(d).name
        variants = [("fp32", "copied"), ("fp32", "resident")]
        if d.type == "cuda":
            variants += [("tf32", "resident"), ("bf16" if torch.cuda.is_bf16_supported() else "fp16", "resident")]
            say(f"measuring the host-to-device link of {d}")
            link_bw[str(d)] = measure_link(d)
        for precision, data in variants:
            say(f"measuring a training step on {d} ({precision}, data {data})")
            try:
                m = measure_step(
                    model,
                    example_batch,
                    d,
                    precision=precision,
                    data=data,
                    loss_fn=loss_fn,
                    optimizer=optimizer,
                    min_time=min_time,
                    max_time=max_time,
                )
            except RuntimeError as e:  # out of memory in one configuration must not hide the others
                notes.append(f"could not measure {d} ({precision}, data {data}): {type(e).__name__}: {e}")
                if d.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            measured.append(MeasuredStep(str(d), name, precision, data, batch_size, m))

    # 3. Predict for every target and for every GPU here that the table knows (checked against its measurement).
    predicted: list[Prediction] = []
    checks: list[Check] = []
    options: list[tuple[GpuOption, HardwareSpec | None]] = []  # measured GPUs first, then the targets
    predicted_options: list[tuple[GpuOption, HardwareSpec]] = []
    if counts:
        for label, spec in target_specs:
            own = next((dev for dev, s in present.items() if s is spec), None)
            a = assumptions
            if own is not None and own in link_bw:
                a = replace(assumptions, link_bandwidth=link_bw[own], link_name=f"measured on {own}, pinned")
            preds = _predict_all(counts, spec, label, a)
            predicted += preds.values()
            predicted_options.append((_option(f"{label}, predicted", "predicted", preds, a), spec))
            if own is not None:
                checks += [
                    Check(own, m.precision, m.data, preds[m.precision].step_s(m.data), m.step_s)
                    for m in measured
                    if m.device == own and m.precision in preds
                ]
    for d in accelerators:
        rows = {(m.precision, m.data): m.step_s for m in measured if m.device == str(d)}
        if ("fp32", "copied") not in rows or ("fp32", "resident") not in rows:
            continue  # the loop as written could not be measured there (see the notes)
        spec = present[str(d)]
        twin = next((o for o, s in predicted_options if spec is not None and s is spec), None)
        options.append(
            (
                GpuOption(
                    f"{d} ({describe(d).name}), measured",
                    "measured",
                    rows,
                    twin.limited_by if twin else "",
                    twin.kernels if twin else None,
                    twin.launch_overhead_s if twin else None,
                    "bf16" if ("bf16", "resident") in rows else "fp16",
                ),
                spec,
            )
        )
    options += predicted_options

    # 4. The crossover batch size, for the GPU the recommendation is about (predicted at each batch size).
    chosen, chosen_spec = options[0] if options else (None, None)
    crossover = None
    if chosen is not None and chosen_spec is not None and counts:
        say("searching the batch size where the answer flips (counting at other batch sizes)")
        crossover = _search_crossover(
            model,
            example_batch,
            batch_size,
            cpu_fit,
            chosen_spec,
            counts["fp32"],
            loss_fn,
            optimizer,
            assumptions,
            measured_s=chosen.baseline_s if chosen.how == "measured" else None,
        )
    no_gpu = count_error or ("no GPU is here to measure and no target was given" if not options else "")
    rec = decide(cpu_s, chosen, batch_size=batch_size, crossover=crossover, job_steps=job_steps, no_gpu_reason=no_gpu)
    if chosen is not None and chosen.how == "predicted":
        notes.append(
            f"the GPU figures are predictions for {chosen.label.split(',')[0]}, not measurements: no such GPU is here."
        )
    return Advice(
        verdict=rec.verdict,
        recommendation=rec.sentence,
        changes=rec.changes,
        batch_size=batch_size,
        job_steps=job_steps,
        job=job,
        measured=tuple(measured),
        predicted=tuple(predicted),
        checks=tuple(checks),
        cpu_fit=cpu_fit,
        crossover=crossover,
        count=counts.get("fp32"),
        notes=tuple(notes),
        machine={
            "cpu_model": cpu_name,
            "cpu_cores": cpu_cores(),
            "torch_threads": threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "accelerators": {dev: describe(dev).name for dev in present},
        },
    )


def _search_crossover(
    model: nn.Module,
    batch: Any,
    batch_size: int,
    cpu_fit: LinearFit,
    spec: HardwareSpec,
    count: StepCount,
    loss_fn: LossFn | None,
    optimizer: OptimizerFactory | None,
    assumptions: Assumptions,
    measured_s: float | None = None,
) -> Crossover:
    """Predict the GPU's step (as written: fp32, batch copied) at batch sizes doubling away from the example's,
    towards where the answer would flip, and stop once it has; the CPU side is the linear fit. With the GPU here
    (``measured_s``, its measured step at the example's batch size), the predictions are scaled to agree with it."""
    first = predict(count, spec, precision="fp32", assumptions=assumptions)
    scale = measured_s / first.copied_s if measured_s else 1.0
    gpu_s = {batch_size: measured_s or first.copied_s}

    def at(b: int) -> float:
        c = count_step(model, batch, loss_fn=loss_fn, optimizer=optimizer, batch_size=b)
        return scale * predict(c, spec, precision="fp32", assumptions=assumptions).copied_s

    faster_now = gpu_s[batch_size] < cpu_fit.at(batch_size)
    b = batch_size
    while True:
        b = b // 2 if faster_now else b * 2
        if b < 1 or b > CROSSOVER_FACTOR * batch_size:
            break
        gpu_s[b] = at(b)
        if (gpu_s[b] < cpu_fit.at(b)) != faster_now:
            break
    if first.limited_by == "launch overhead" and 8 * batch_size not in gpu_s:
        # A launch-bound step costs about the same at a larger batch: show what a bigger batch would buy.
        gpu_s[8 * batch_size] = at(8 * batch_size)
    how = f"predicted, scaled to the step measured at batch {batch_size}" if measured_s else "predicted"
    return find_crossover(cpu_fit, gpu_s, how)

"""The decision of :func:`~tangtoc.advise.recommend.advise`, as a pure function of measured and predicted numbers.

:func:`decide` and :func:`find_crossover` take step times (never a clock or a GPU), so every branch of the advice
is tested on constructed timings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tangtoc.bench.measure import Measurement
from tangtoc.units import fmt_duration, fmt_ratio, fmt_seconds

#: A GPU must be at least this much faster per step to be worth moving to (renting, copying data, waiting for a
#: machine): below it, the answer is "stay on the CPU".
WORTH_IT = 1.5
#: A job the CPU finishes within this many seconds stays there when the GPU would have to be rented: starting a
#: machine and copying code and data onto it takes longer than the job saves (seed 7.1: "quick experiments").
SHORT_JOB_S = 600.0
#: A change is suggested when it saves at least this fraction of the GPU step.
SUGGEST_SAVING = 0.10


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

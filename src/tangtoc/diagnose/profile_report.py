"""What a profile found: each step's wall time split into phases, and the verdict on what bounds the step.

The verdict is a pure function of the measured times (:func:`judge`), so that its rules are tested on made-up
timings. It names one bound, the evidence for it in shares of the step, and the first change to make, with the
gain that the measurement supports (the share of the step that the change could hide, at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tangtoc.units import fmt_seconds

# The order in which a step's time is shown: the host waits for data, copies it, runs the model, then the rest.
PHASES = ("data", "copy", "forward", "backward", "optimizer", "sync", "other")
PHASE_NAMES = {
    "data": "waiting for data",
    "copy": "host→device copies",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer",
    "sync": "syncs (host waits for the device)",
    "other": "other host time",
}
Bound = Literal["input-bound", "transfer-bound", "sync-bound", "host-bound", "compute-bound"]

# A waiting phase is the bound when it takes at least this share of the step (and the device, if any, is not
# busy anyway): the change that removes it gains at least a quarter, measured, where a gain on the compute is not.
WAIT_SHARE = 0.25
# On an accelerator busy at least this share of the step, the arithmetic is the bound, whatever the host did.
BUSY_SHARE = 0.8
# Host-bound on the CPU: the model's operations average less than this much each. Below it, a step is mostly
# the cost of dispatching each operation (a few µs in PyTorch eager, and a GPU kernel launch costs 5-10 µs on
# top), not arithmetic; a larger batch or fewer, bigger operations would do more work for the same cost.
SMALL_OP_SECONDS = 20e-6
# Host-bound whatever the operations: Python between the phases takes at least this share of the step.
PYTHON_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class StepTimes:
    """One step: seconds in each phase (keys of :data:`PHASES`), the wall time from the previous step's end,
    and what was counted in it (syncs and copies between devices; aten operations in the counting step)."""

    index: int
    seconds: dict[str, float]
    wall: float
    syncs: int = 0
    copies: int = 0
    copy_bytes: int = 0
    ops: int | None = None
    warmup: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.index,
            "warmup": self.warmup,
            "wall_seconds": self.wall,
            "seconds": dict(self.seconds),
            "syncs": self.syncs,
            "copies": self.copies,
            "copy_bytes": self.copy_bytes,
            "ops": self.ops,
        }


@dataclass(frozen=True, slots=True)
class DeviceTimes:
    """What the accelerator did in the steps profiled on it (PyTorch's profiler, after the timed steps)."""

    steps: int
    busy_seconds: float  # per step: the union of its kernels' intervals (copies are not compute)
    wall_seconds: float  # per timed step, on the host clock: more busy than that means the GPU sets the pace
    kernels: float  # kernel launches per step
    # Timed steps whose host wall time exceeded the GPU's busy time per step: there the GPU waited on the host.
    # An estimate: the busy time is the profiled steps' mean, not each timed step's own.
    waited_steps: int = 0
    timed_steps: int = 0

    @property
    def busy_share(self) -> float:
        return min(self.busy_seconds / self.wall_seconds, 1.0) if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "busy_seconds_per_step": self.busy_seconds,
            "idle_seconds_per_step": max(self.wall_seconds - self.busy_seconds, 0.0),
            "wall_seconds_per_step": self.wall_seconds,
            "busy_share": self.busy_share,
            "kernels_per_step": self.kernels,
            "steps_gpu_waited_on_host": self.waited_steps,
            "timed_steps": self.timed_steps,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    bound: Bound
    evidence: str
    change: str

    def to_dict(self) -> dict[str, str]:
        return {"bound": self.bound, "evidence": self.evidence, "first_change": self.change}


def device_times(steady: list[StepTimes], profiled_steps: int, busy: float, kernels: float) -> DeviceTimes:
    """What the GPU did, per step: ``busy`` seconds and ``kernels`` launches (means over ``profiled_steps``), set
    against the timed ``steady`` steps' wall time."""
    waited = sum(1 for s in steady if s.wall > busy)
    return DeviceTimes(profiled_steps, busy, mean_seconds(steady)[1], kernels, waited, len(steady))


def mean_seconds(steps: list[StepTimes]) -> tuple[dict[str, float], float]:
    """The mean seconds per step of each phase, and of the wall time, over ``steps`` (means add up; medians do not)."""
    n = max(len(steps), 1)
    return {p: sum(s.seconds.get(p, 0.0) for s in steps) / n for p in PHASES}, sum(s.wall for s in steps) / n


def _pct(x: float) -> str:
    return f"{x:.0%}".replace("%", " %")


def judge(
    seconds: dict[str, float],
    wall: float,
    *,
    ops: float | None = None,
    syncs: float = 0.0,
    device: DeviceTimes | None = None,
    loader_workers: int | None = None,
) -> Verdict:
    """What bounds a step that spends ``seconds`` per phase (keys of :data:`PHASES`) of ``wall`` seconds.

    ``ops``: aten operations per step (``None``: not counted); ``syncs``: host waits on the device per step;
    ``device``: what the accelerator did (``None`` on the CPU); ``loader_workers``: the DataLoader's
    ``num_workers``, when the data came from one.
    """
    share = {p: seconds.get(p, 0.0) / wall if wall > 0 else 0.0 for p in PHASES}
    model = seconds["forward"] + seconds["backward"] + seconds["optimizer"]
    waits = {"data": "input-bound", "copy": "transfer-bound", "sync": "sync-bound"}
    top = max(waits, key=lambda p: share[p])
    if device is not None and device.busy_share >= BUSY_SHARE:
        return _compute(share, device)
    if share[top] >= WAIT_SHARE:
        return _waiting(top, share, wall, syncs, device, loader_workers)
    if device is not None:
        return _host(share, model, ops, device)
    if share["other"] >= PYTHON_SHARE or (ops and model / ops < SMALL_OP_SECONDS):
        return _host(share, model, ops, None)
    return _compute(share, None)


def _split(share: dict[str, float]) -> str:
    return ", ".join(f"{PHASE_NAMES[p]} {_pct(share[p])}" for p in PHASES if share[p] >= 0.005)


def _waiting(
    phase: str, share: dict[str, float], wall: float, syncs: float, device: DeviceTimes | None, workers: int | None
) -> Verdict:
    s = share[phase]
    after = fmt_seconds(wall * (1 - s))
    gpu = f"; the GPU was busy {_pct(device.busy_share)} of the step" if device is not None else ""
    if phase == "data":
        workers_fix = (
            "DataLoader(num_workers=4) would prepare batches while the model runs"
            if not workers
            else f"more DataLoader workers than {workers} (if cores are free), or less work per sample in the Dataset"
        )
        return Verdict(
            "input-bound",
            f"waiting for data is {_pct(s)} of the step ({_split(share)}){gpu}",
            f"{workers_fix}: it would hide up to {_pct(s)} (a step of {after} instead of {fmt_seconds(wall)}); or "
            "keep the whole data set on the device with `tt.ResidentLoader`",
        )
    if phase == "copy":
        return Verdict(
            "transfer-bound",
            f"host→device copies are {_pct(s)} of the step ({_split(share)}){gpu}",
            f"keep the data on the device (`tt.ResidentLoader`), or pin it (`DataLoader(pin_memory=True)`) and copy "
            f"with `non_blocking=True` so that copies overlap the compute: up to {_pct(s)} (a step of {after})",
        )
    # The wait itself is the device working; what the syncs cost is the time the device then idles.
    gain = min(s, 1 - device.busy_share) if device is not None else s
    return Verdict(
        "sync-bound",
        f"the host waits for the device {_pct(s)} of the step, in {syncs:.0f} sync(s) per step ({_split(share)}){gpu}: "
        "host and device take turns instead of overlapping",
        f"read values at log intervals, several at once (`tt.fetch(loss, acc)` every 100 steps), not every step: "
        f"up to {_pct(gain)} (a step of {fmt_seconds(wall * (1 - gain))}); `tangtoc audit SCRIPT` names the line of "
        "each sync",
    )


def _host(share: dict[str, float], model: float, ops: float | None, device: DeviceTimes | None) -> Verdict:
    per_op = f"; {ops:.0f} operations per step, {fmt_seconds(model / ops)} each on average" if ops else ""
    fuse = (
        "give each operation more work: a larger batch at the same operation count, or fuse operations with "
        "`torch.compile(model)` (on a GPU also CUDA graphs: `torch.compile(model, mode='reduce-overhead')`)"
    )
    if device is not None:
        evidence = (
            f"the GPU is idle {_pct(1 - device.busy_share)} of the step, waiting for the host to launch "
            f"{device.kernels:.0f} kernels per step ({_split(share)}){per_op}"
        )
        return Verdict("host-bound", evidence, fuse)
    if share["other"] >= PYTHON_SHARE:
        return Verdict(
            "host-bound",
            f"Python between the phases is {_pct(share['other'])} of the step ({_split(share)}){per_op}: the model's "
            "own work is the smaller part",
            "find the Python that runs every step (`python -m cProfile -s cumtime SCRIPT`) and move it out of the "
            "loop, or do it every N steps (logging, metrics, checks)",
        )
    return Verdict(
        "host-bound", f"{_split(share)}{per_op}: the step is the cost of running many small operations", fuse
    )


def _compute(share: dict[str, float], device: DeviceTimes | None) -> Verdict:
    busy = ""
    if device is not None and device.busy_seconds > device.wall_seconds:
        busy = (
            f"the GPU needs {fmt_seconds(device.busy_seconds)} per step and the host {fmt_seconds(device.wall_seconds)}"
            ": the host runs ahead until the queue fills and the GPU sets the pace (the times below are the host's); "
        )
    elif device is not None:
        busy = f"the GPU is busy {_pct(device.busy_share)} of the step; "
    model = share["forward"] + share["backward"] + share["optimizer"]
    return Verdict(
        "compute-bound",
        f"{busy}forward, backward and optimizer are {_pct(model)} of the step ({_split(share)})",
        "the arithmetic is the step: compute in bf16 (`torch.autocast(device.type, dtype=torch.bfloat16)`), "
        "`torch.compile(model)`, or a faster device; data, copies and syncs are already hidden",
    )


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """What :class:`~tangtoc.diagnose.profile.Profile` measured.

    ``steps`` holds every step in order, warm-up ones flagged; the steady state is the others. The verdict is
    ``None`` when no step ended after the warm-up. ``device_times`` is ``None`` on the CPU (nothing runs apart
    from the host) and when the accelerator's own profile was not taken (``steps=None``). ``machine`` says what
    produced the numbers; ``unseen`` what the profile could not see in this run; ``notes`` what may have skewed it.
    """

    device: str
    machine: dict[str, Any]
    step_source: str | None
    steps: tuple[StepTimes, ...]
    verdict: Verdict | None
    device_times: DeviceTimes | None
    stopped: bool
    ops_per_step: int | None = None
    other_thread_steps: int = 0
    unseen: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what may have skewed the times (a busy machine)

    @property
    def steady(self) -> list[StepTimes]:
        return [s for s in self.steps if not s.warmup]

    def mean(self) -> tuple[dict[str, float], float]:
        """Mean seconds per steady step of each phase, and of the wall time."""
        return mean_seconds(self.steady)

    def to_dict(self) -> dict[str, Any]:
        seconds, wall = self.mean()
        return {
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "device": self.device,
            "machine": self.machine,
            "step_source": self.step_source,
            "stopped_at_limit": self.stopped,
            "steady_steps": len(self.steady),
            "mean_seconds_per_step": {"wall": wall, **seconds},
            "ops_per_step": self.ops_per_step,
            "device_times": None if self.device_times is None else self.device_times.to_dict(),
            "other_thread_steps": self.other_thread_steps,
            "unseen": list(self.unseen),
            "notes": list(self.notes),
            "steps": [s.to_dict() for s in self.steps],
        }

    def __str__(self) -> str:
        """A plain-text summary: the split of a steady step, and the verdict."""
        steady = self.steady
        if not steady:
            return (
                f"tangtoc profile: no step ended after the warm-up ({len(self.steps)} step(s) seen); nothing to judge"
            )
        seconds, wall = self.mean()
        lines = [f"{len(steady)} step(s) on {self.device}, {fmt_seconds(wall)} per step (mean):"]
        lines += [f"  {PHASE_NAMES[p]:<34} {fmt_seconds(seconds[p]):>9}  {_pct(seconds[p] / wall):>5}" for p in PHASES]
        if self.verdict is not None:
            lines += [f"verdict: {self.verdict.bound}: {self.verdict.evidence}", f"first change: {self.verdict.change}"]
        return "\n".join(lines)

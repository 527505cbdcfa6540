"""Should this training run on a GPU? Measure what is here, predict what is not, and say so in one sentence.

:func:`advise` measures a real training step (forward, loss, backward, optimizer step) with
:func:`tangtoc.bench.measure` on the CPU and on every accelerator present, with the batch copied from the host
every step and with the data resident on the device; counts the step once on fake tensors
(:func:`~tangtoc.advise.count.count_step`) and predicts it on named GPUs (:func:`~tangtoc.advise.predict.predict`);
finds the batch size where the answer flips; and turns it all into an :class:`Advice`: a recommendation with
numbers and the changes that matter most. Measured numbers and predicted ones are kept apart and labelled.

The decision itself (:mod:`tangtoc.advise.decide`) is a pure function of the numbers, so it is tested on
constructed timings without a clock or a GPU.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from tangtoc.advise.count import StepCount, count_step, resize_batch
from tangtoc.advise.decide import (
    Crossover,
    GpuOption,
    LinearFit,
    MeasuredStep,
    decide,
    find_crossover,
)
from tangtoc.advise.measure import StepMeasurer, UncountedOp, measure_link, measure_step, time_uncounted
from tangtoc.advise.predict import Assumptions, Prediction, low_precision, predict
from tangtoc.device import available_devices, cpu_cores, cpu_model, describe, resolve
from tangtoc.errors import CountError
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec, lookup
from tangtoc.move import to_device
from tangtoc.step import LossFn, LossFrom, OptimizerFactory, batch_size_of

#: The crossover search looks at batch sizes up to this multiple of the example's.
CROSSOVER_FACTOR = 64


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
    assumptions and the source of the peaks it used. ``uncounted`` names the ops whose FLOPs the count misses,
    with their share of a CPU step: where it is large, the predictions are too fast.
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
    uncounted: tuple[UncountedOp, ...] = ()

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
            "uncounted": [u.to_dict() for u in self.uncounted],
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


def resolve_targets(
    targets: Sequence[str | HardwareSpec], present: Sequence[HardwareSpec]
) -> list[tuple[str, HardwareSpec]]:
    """``[(label, spec)]`` for target names (a :class:`HardwareSpec` is its own, labelled by its name); ``"auto"``
    is each GPU here that the hardware table knows, else h100."""
    out: list[tuple[str, HardwareSpec]] = []
    for name in targets:
        if isinstance(name, HardwareSpec):
            out.append((name.name, name))
            continue
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
    loss_from: LossFrom | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    dataset_size: int | None = None,
    targets: Sequence[str | HardwareSpec] = ("auto",),
    optimizer: OptimizerFactory | None = None,
    devices: Sequence[torch.device | str] | None = None,
    assumptions: Assumptions | None = None,
    min_time: float = 0.3,
    max_time: float = 3.0,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    measurer: StepMeasurer = measure_step,
) -> Advice:
    """Should ``model`` train on a GPU? Measure here, predict for ``targets``, and recommend.

    Args:
        model: the model; it is copied for every measurement and never changed.
        example_batch: one batch as the training loop sees it (tensors, NumPy arrays, or containers of them),
            batch size first. It becomes a loss as in :func:`tangtoc.fit` (:mod:`tangtoc.step`): with ``loss_fn``,
            ``(inputs, targets)`` or a mapping with ``"labels"``; without, the model returns the loss (a tensor,
            an output with ``.loss``, or ``(logits, loss)``), which ``loss_from`` locates where that is ambiguous.
        steps: the job's optimizer steps; or ``epochs`` over ``dataset_size`` samples. Either gives wall times.
        targets: GPUs to predict for, by short name (``"h100"``, ``"a100"``, ``"t4"``, ``"l4"``...; see
            :data:`tangtoc.hardware.BY_SHORT_NAME`) or as a :class:`~tangtoc.hardware.HardwareSpec` of your own.
            ``"auto"``: each GPU here (to check the model against a measurement), or the H100 when there is none.
        optimizer: builds the optimizer from a list of parameters (default: fit's, AdamW lr 1e-3, fused on CUDA).
        devices: accelerators to measure on (default: every one present). The CPU is always measured.
        assumptions: the prediction's efficiencies, launch overhead and link (default :class:`Assumptions`).
        min_time, max_time: seconds measured per configuration, at least / at most (see :func:`measure`).
        threads: torch's CPU threads while measuring (default: torch's own choice). On a shared machine, fewer
            threads than cores avoid waiting for a descheduled one.
        progress: called with a short description before each stage (the CLI shows it).
        measurer: times a training step, with :func:`~tangtoc.advise.measure.measure_step`'s signature (the
            default); tests pass one that returns constructed timings.
    """
    say = progress or (lambda _msg: None)
    assumptions = assumptions or Assumptions()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}.")
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
        m = measurer(
            model,
            batch_b,
            "cpu",
            loss_fn=loss_fn,
            loss_from=loss_from,
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
        how = {"loss_fn": loss_fn, "loss_from": loss_from, "optimizer": optimizer}
        counts["fp32"] = count_step(model, example_batch, **how)  # type: ignore[arg-type]
        counts["bf16"] = count_step(model, example_batch, **how, precision="bf16")  # type: ignore[arg-type]
    except CountError as e:
        count_error = str(e)
        notes.append(f"no prediction: {e}")
    # Ops the count has no FLOP formula for: their share of a CPU step says how much the predictions may miss.
    uncounted: tuple[UncountedOp, ...] = ()
    if "fp32" in counts and counts["fp32"].uncounted():
        say("timing the ops without a FLOP formula in one CPU step")
        uncounted = time_uncounted(model, example_batch, counts["fp32"], cpu_s, **how, threads=threads)  # type: ignore[arg-type]
        ops = ", ".join(f"{u.op} ({u.share:.0%} of a CPU step)" for u in uncounted)
        notes.append(
            f"no FLOP formula for {ops}: the predictions count only the bytes these ops move, so they are too fast "
            "by whatever those ops compute on the GPU."
        )

    # Then every accelerator, the batch copied every step and resident.
    link_bw: dict[str, float] = {}
    for d in accelerators:
        info = describe(d)
        name = info.name
        variants = [("fp32", "copied"), ("fp32", "resident")]
        if d.type == "cuda":
            variants += [("tf32", "resident"), ("bf16" if info.bf16_supported else "fp16", "resident")]
            say(f"measuring the host-to-device link of {d}")
            link_bw[str(d)] = measure_link(d)
        for precision, data in variants:
            say(f"measuring a training step on {d} ({precision}, data {data})")
            try:
                m = measurer(
                    model,
                    example_batch,
                    d,
                    precision=precision,
                    data=data,
                    loss_fn=loss_fn,
                    loss_from=loss_from,
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
                a = replace(assumptions, link_bandwidth=link_bw[own], link_name=f"measured on {own}, pageable")
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
            loss_from,
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
        uncounted=uncounted,
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
    loss_from: LossFrom | None,
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
        c = count_step(model, batch, loss_fn=loss_fn, loss_from=loss_from, optimizer=optimizer, batch_size=b)
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

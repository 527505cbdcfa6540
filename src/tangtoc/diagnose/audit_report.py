"""What an audit found: findings ranked by estimated cost per step, per-step totals, and the cost model.

The cost model ranks findings; it does not measure them. One sync, one copy and one byte are priced at
typical values for a GPU attached over PCIe 4.0, so that a line that syncs every step outranks a copy made
once, and a 100 MB copy outranks a 4-byte one. The report states the model next to its numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tangtoc.diagnose.frames import Location

Kind = Literal["sync", "copy", "cpu-tensor"]

# Cost model, for ranking only (the report says so): what one event costs on a PCIe-attached GPU.
SYNC_SECONDS = 20e-6  # the GPU's queue drains, then idles while Python launches the next kernels
COPY_LATENCY_SECONDS = 10e-6  # per cudaMemcpy call, before any byte moves
PAGEABLE_BYTES_PER_SECOND = 10e9  # pageable memory is staged through a pinned bounce buffer: ~1/3 of PCIe 4.0 x16
PINNED_BYTES_PER_SECOND = 25e9  # pinned memory: close to PCIe 4.0 x16's 32 GB/s per direction

_FRESH = "fetch values at log intervals, several at once: `if step % 100 == 0: loss_v, acc_v = tt.fetch(loss, acc)`"
_SHAPE = (
    "use a fixed-shape form that keeps the work on the device: `torch.where(mask, x, 0)`, `x.masked_fill(~mask, 0)`, "
    "`torch.nonzero_static(x, size=k)`, or pass `output_size=`"
)
_BACK = "bring results back at log intervals and together: `tt.to_cpu(results)` / `tt.to_numpy(results)`"
_READ = ("reads a value on the host, so the CPU waits for all queued GPU work", _FRESH)
_DATA_DEPENDENT = ("the result's size depends on the data, so the host waits to learn it", _SHAPE)
# op label -> (why it synchronizes, the fix)
_SYNC_WHY: dict[str, tuple[str, str]] = {
    **dict.fromkeys((".item()", "float(tensor)", "int(tensor)", "tensor as an index"), _READ),
    **dict.fromkeys(
        ("nonzero", "unique", "masked_select", "repeat_interleave", "bincount", "x[bool mask]", "x[bool mask] = v"),
        _DATA_DEPENDENT,
    ),
    "format(tensor) / f-string": ("formatting a tensor reads its value on the host", _FRESH),
    "print(tensor) / repr": ("printing a tensor copies it to the host and waits for the GPU", _FRESH),
    "bool(tensor) / if tensor:": (
        "a Python `if` on a tensor reads its value on the host",
        "keep the decision on the device (`torch.where`, masking), or check it every N steps",
    ),
    ".tolist()": ("copies the tensor to the host and waits for the GPU", _BACK),
    ".numpy()": ("needs the tensor on the host (on a GPU: a `.cpu()` first, which waits)", _BACK),
    "np.asarray(tensor)": ("needs the tensor on the host (on a GPU: a `.cpu()` first, which waits)", _BACK),
    "torch.equal / allclose": (
        "returns a Python bool, read on the host",
        "compare on the device (`(a - b).abs().max()`) and read it every N steps",
    ),
    "torch.cuda.synchronize()": (
        "waits for every queued kernel",
        "remove it from the training loop; it is needed only to time GPU work (`tt.measure` does it for you)",
    ),
}


@dataclass(frozen=True, slots=True)
class EventKey:
    """What makes two events the same finding: the operation, the line, and how the bytes moved."""

    kind: Kind
    op: str
    location: Location | None
    cpu_only: bool  # every tensor involved is on the CPU: nothing waited here, but on a GPU it would
    src: str | None = None  # device types of a copy
    dst: str | None = None
    pinned: bool | None = None
    non_blocking: bool | None = None
    explicit_device: bool | None = None  # cpu-tensor: device= was given

    @property
    def blocking(self) -> bool:
        """A copy the host waits for: any copy without non_blocking, and a non-blocking one from pageable memory."""
        return self.kind == "copy" and not (self.non_blocking and (self.pinned or self.src != "cpu"))

    @property
    def waits(self) -> bool:
        """A blocking copy back to the host: the host waits for the device, so it synchronizes too."""
        return self.blocking and self.dst == "cpu"


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One line of the user's code that syncs, copies or creates on the CPU, summed over the audited steps.

    ``cpu_only`` findings did not wait or move anything here (every tensor was on the CPU); they are what
    the same line does on a GPU. ``seconds_per_step`` is an estimate for ranking, from the cost model at
    the top of this module, not a measurement.
    """

    kind: Kind
    op: str
    location: Location | None
    detail: str
    cpu_only: bool
    count: int
    steps_seen: int
    bytes: int
    seconds_per_step: float
    why: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "op": self.op,
            "location": None if self.location is None else self.location.to_dict(),
            "detail": self.detail,
            "cpu_only": self.cpu_only,
            "count": self.count,
            "steps_seen": self.steps_seen,
            "bytes": self.bytes,
            "estimated_seconds_per_step": self.seconds_per_step,
            "why": self.why,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Counts and bytes of one step (``index`` from 1)."""

    index: int
    syncs: int
    copies: int
    copy_bytes: int
    cpu_tensors: int

    def to_dict(self) -> dict[str, int]:
        return {
            "step": self.index,
            "syncs": self.syncs,
            "copies": self.copies,
            "copy_bytes": self.copy_bytes,
            "cpu_tensors": self.cpu_tensors,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What :class:`Audit` found: per-step totals and the findings ranked by estimated cost per step.

    ``device`` is where the model computes (from the optimizer's parameters, or as given). When it is the
    CPU, ``cpu_only`` findings are included: the lines that would sync or copy once the model is on a GPU.
    Without step boundaries (``step_source`` is ``None``), the findings cover the whole run.
    """

    device: str
    step_source: str | None
    steps: tuple[StepSummary, ...]
    findings: tuple[AuditFinding, ...]
    stopped: bool
    events_after_last_step: int

    @property
    def cpu_only(self) -> bool:
        return self.device.split(":")[0] == "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "step_source": self.step_source,
            "stopped_at_limit": self.stopped,
            "events_after_last_step": self.events_after_last_step,
            "cost_model": {
                "sync_seconds": SYNC_SECONDS,
                "copy_latency_seconds": COPY_LATENCY_SECONDS,
                "pageable_bytes_per_second": PAGEABLE_BYTES_PER_SECOND,
                "pinned_bytes_per_second": PINNED_BYTES_PER_SECOND,
            },
            "steps": [s.to_dict() for s in self.steps],
            "findings": [f.to_dict() for f in self.findings],
        }


def build_report(
    steps: list[dict[EventKey, list[int]]],
    current: dict[EventKey, list[int]],
    source: str | None,
    stopped: bool,
    device: torch.device | None,
) -> AuditReport:
    """Rank the events of complete ``steps`` (without any, of ``current``: the whole run) into an AuditReport.

    ``steps`` and ``current`` map each event to ``[count, bytes]``; ``device`` is where the model computes
    (``None``: the accelerator that real copies went to, else the CPU).
    """
    counted = steps or ([current] if current else [])
    device = device or _busiest_device(counted) or torch.device("cpu")
    on_cpu = device.type == "cpu"

    def keep(key: EventKey) -> bool:
        if key.kind == "cpu-tensor":  # on the CPU, `device=device` would be the GPU in a GPU run
            return not (on_cpu and key.explicit_device)
        return on_cpu or not key.cpu_only

    totals: dict[EventKey, list[int]] = {}
    summaries = []
    for i, step in enumerate(counted, 1):
        counts = Counter[str]()
        for key, (n, nbytes) in step.items():
            if not keep(key):
                continue
            total = totals.setdefault(key, [0, 0, 0])
            total[0] += n
            total[1] += nbytes
            total[2] += 1
            counts[key.kind] += n
            if key.kind == "copy":
                counts["bytes"] += nbytes
                if key.waits:
                    counts["sync"] += n
        summaries.append(StepSummary(i, counts["sync"], counts["copy"], counts["bytes"], counts["cpu-tensor"]))
    n_steps = max(len(counted), 1)
    findings = [_finding(k, n, nbytes, seen, n_steps, str(device)) for k, (n, nbytes, seen) in totals.items()]
    # Lines that recur in the loop first (a one-off in the first step is set-up), then by estimated cost.
    findings.sort(key=lambda f: (n_steps > 1 and f.steps_seen == 1, -f.seconds_per_step, -f.count))
    return AuditReport(
        str(device),
        source,
        tuple(summaries) if steps else (),
        tuple(findings),
        stopped,
        sum(n for key, (n, _) in current.items() if keep(key)) if steps else 0,
    )


def _busiest_device(steps: list[dict[EventKey, list[int]]]) -> torch.device | None:
    """Without an optimizer or a given device: the accelerator that real copies went to."""
    targets = Counter(k.dst for step in steps for k in step if k.kind == "copy" and not k.cpu_only and k.dst != "cpu")
    return torch.device(targets.most_common(1)[0][0]) if targets else None


def _copy_seconds(key: EventKey, count: int, nbytes: int) -> float:
    rate = PINNED_BYTES_PER_SECOND if key.pinned else PAGEABLE_BYTES_PER_SECOND
    seconds = count * COPY_LATENCY_SECONDS + nbytes / rate
    return seconds + (count * SYNC_SECONDS if key.waits else 0.0)


def _finding(key: EventKey, count: int, nbytes: int, seen: int, n_steps: int, device: str) -> AuditFinding:
    if key.kind == "sync":
        why, fix = _SYNC_WHY[key.op]
        seconds, detail = count * SYNC_SECONDS, "synchronizes the host with the device"
    elif key.kind == "cpu-tensor":
        why = f"created on the CPU inside the step while the model computes on {device}: it must be copied there"
        if device.split(":")[0] == "cpu":
            why = "created without device=: on a GPU it is born on the CPU inside the step and must be copied over"
        fix = (
            f"create it on the device: `{key.op}(..., device=x.device)`; if it is the same every step, build it "
            "once, as a registered buffer or outside the loop"
        )
        seconds, detail = _copy_seconds(key, count, nbytes), "tensor created on the CPU"
    else:
        seconds = _copy_seconds(key, count, nbytes)
        memory = "" if key.pinned is None else ("pinned, " if key.pinned else "pageable, ")
        detail = f"{key.src}→{key.dst} copy, {memory}{'blocking' if key.blocking else 'non-blocking'}"
        if key.dst == "cpu":
            why, fix = "brings a result back to the host; a blocking copy waits for the device", _BACK
        elif key.src == "cpu":
            why = "copies host memory to the device every time it runs"
            fix = (
                "keep the data resident on the device and slice batches there (seed 6.3: data stays on the device)"
                if key.pinned and key.non_blocking
                else "keep the data resident on the device and slice batches there; otherwise pin the host memory "
                "(`DataLoader(pin_memory=True)`, `tt.pin(batch)`) and copy with `non_blocking=True`"
            )
        else:
            why, fix = "copies between two devices", "keep the tensors of one computation on one device"
    if key.cpu_only and key.kind != "cpu-tensor":
        detail = f"would {'synchronize' if key.kind == 'sync' else 'copy'} on a GPU (all on the CPU here)"
    return AuditFinding(
        key.kind, key.op, key.location, detail, key.cpu_only, count, seen, nbytes, seconds / n_steps, why, fix
    )

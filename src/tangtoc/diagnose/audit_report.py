"""What an audit found: findings ranked by estimated cost per step, per-step totals, and the cost model.

The cost model ranks findings; it does not measure them. One sync, one copy and one byte are priced at
typical values for a GPU attached over PCIe 4.0, so that a line that syncs every step outranks a copy made
once, and a 100 MB copy outranks a 4-byte one. The report states the model next to its numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from tangtoc.diagnose.frames import Location

Kind = Literal["sync", "copy", "cpu-tensor", "meet"]  # "meet": host tensors of a creation site met the device
# Which report an event belongs in, on a CPU-only run: "tracked" once the script names a device (the inference
# of what would be on the GPU), "fallback" when it never does (every host read listed), "both" either way.
Scope = Literal["both", "tracked", "fallback"]
# Where a tensor was created: the training code, data loading (Dataset.__getitem__, collate), a module's __init__.
Place = Literal["step", "data", "init"]
# How the report was made: real devices seen, device intent inferred on the CPU, or neither (no device named).
Mode = Literal["observed", "inferred", "unnamed"]

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
    via: str | None = None  # the library function that did it, on the user's behalf
    scope: Scope = "both"
    place: Place | None = None  # cpu-tensor: where it was created

    @property
    def blocking(self) -> bool:
        """A copy the host waits for: any copy without non_blocking, and a non-blocking one from pageable memory."""
        return self.kind == "copy" and not (self.non_blocking and (self.pinned or self.src != "cpu"))

    @property
    def waits(self) -> bool:
        """A blocking copy back to the host: the host waits for the device, so it synchronizes too."""
        return self.blocking and self.dst == "cpu"


Events = dict[EventKey, list[int]]  # event -> [count, bytes]


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One line of the user's code that syncs, copies or creates on the CPU, summed over the audited steps.

    ``cpu_only`` findings did not wait or move anything here (every tensor was on the CPU); they are what
    the same line does on a GPU. ``via`` names the library function that did it when the user's line only
    called it. ``count`` and ``steps_seen`` cover the audited steps; ``setup_count`` the set-up before the
    first step; ``first_step`` is the first step it was seen in (0: set-up only). ``seconds_per_step`` is an
    estimate for ranking, from the cost model at the top of this module, not a measurement.
    """

    kind: Kind
    op: str
    location: Location | None
    detail: str
    cpu_only: bool
    count: int
    steps_seen: int
    first_step: int
    setup_count: int
    bytes: int
    seconds_per_step: float
    why: str
    fix: str
    via: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "op": self.op,
            "via": self.via,
            "location": None if self.location is None else self.location.to_dict(),
            "detail": self.detail,
            "cpu_only": self.cpu_only,
            "count": self.count,
            "steps_seen": self.steps_seen,
            "first_step": self.first_step,
            "setup_count": self.setup_count,
            "bytes": self.bytes,
            "estimated_seconds_per_step": self.seconds_per_step,
            "why": self.why,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Counts and bytes of one step (``index`` from 1; 0 is the set-up before the first step)."""

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

    ``device`` is where the model computes (from the optimizer's parameters, or as given). ``mode`` says how
    the findings were made: ``"observed"`` on an accelerator; on the CPU, ``"inferred"`` when the script names
    a device (the tensors it moves or creates there, and what is computed from them, are taken to be on the
    GPU) and ``"unnamed"`` when it never does (every host read is listed as a would-be sync). Without step
    boundaries (``step_source`` is ``None``), the findings cover the whole run. ``setup`` counts what ran
    before the first step outside the training loop; of it only CPU-born tensors that later meet the device
    are listed as findings. ``other_thread_steps`` counts optimizer steps taken in other threads than the audited
    one: their syncs and copies were not seen.
    """

    device: str
    step_source: str | None
    steps: tuple[StepSummary, ...]
    findings: tuple[AuditFinding, ...]
    stopped: bool
    events_after_last_step: int
    mode: Mode = "observed"
    setup: StepSummary | None = None
    other_thread_steps: int = 0  # optimizer steps taken in threads other than the audited one: not seen

    @property
    def cpu_only(self) -> bool:
        return self.device.split(":")[0] == "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "mode": self.mode,
            "step_source": self.step_source,
            "stopped_at_limit": self.stopped,
            "events_after_last_step": self.events_after_last_step,
            "other_thread_steps": self.other_thread_steps,
            "cost_model": {
                "sync_seconds": SYNC_SECONDS,
                "copy_latency_seconds": COPY_LATENCY_SECONDS,
                "pageable_bytes_per_second": PAGEABLE_BYTES_PER_SECOND,
                "pinned_bytes_per_second": PINNED_BYTES_PER_SECOND,
            },
            "setup": None if self.setup is None else self.setup.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "findings": [f.to_dict() for f in self.findings],
        }


def _keeper(mode: Mode, met: set[EventKey]) -> Callable[[EventKey], bool]:
    """Which events a report in ``mode`` lists; ``met``: creation sites whose tensors met the device in a step."""

    def keep(key: EventKey) -> bool:
        if key.kind == "meet":
            return False
        if key.kind == "cpu-tensor":
            if mode == "unnamed":  # as before device intent: no `device=`, and not a module's own tensor
                return not key.explicit_device and key.place != "init"
            return _site(key) in met  # a host tensor that never meets the device stays on the host in a GPU run too
        if mode == "observed":
            return not key.cpu_only
        return key.scope != ("fallback" if mode == "inferred" else "tracked")

    return keep


def _site(key: EventKey) -> EventKey:
    """A creation site: the key of the creation (or of its "meet" events) without what varies between them."""
    return EventKey("cpu-tensor", key.op, key.location, True, place=key.place)


def _summary(index: int, events: Events, keep: Callable[[EventKey], bool]) -> StepSummary:
    counts = Counter[str]()
    for key, (n, nbytes) in events.items():
        if not keep(key):
            continue
        counts[key.kind] += n
        if key.kind == "copy":
            counts["bytes"] += nbytes
            if key.waits:
                counts["sync"] += n
    return StepSummary(index, counts["sync"], counts["copy"], counts["bytes"], counts["cpu-tensor"])


def build_report(
    steps: list[Events],
    current: Events,
    setup: Events,
    source: str | None,
    stopped: bool,
    device: torch.device | None,
    named: bool,
) -> AuditReport:
    """Rank the events of complete ``steps`` (without any, of ``current``: the whole run) into an AuditReport.

    ``device`` is where the model computes (``None``: the accelerator that real copies went to, else the CPU);
    ``named``: whether the script named a device (see :class:`~tangtoc.diagnose.intent.Intent`).
    """
    counted = steps or ([current] if current else [])
    device = device or _busiest_device(counted) or torch.device("cpu")
    mode: Mode = "observed" if device.type != "cpu" else ("inferred" if named else "unnamed")
    keep = _keeper(mode, {_site(k) for step in counted for k in step if k.kind == "meet"})

    # key without its scope -> [count, bytes, steps seen, first step, set-up count]
    totals: dict[EventKey, list[int]] = {}
    for key, (n, _) in setup.items():
        if keep(key) and key.kind == "cpu-tensor":
            totals.setdefault(replace(key, scope="both"), [0, 0, 0, 0, 0])[4] += n
    for i, step in enumerate(counted, 1):
        seen = set()
        for key, (n, nbytes) in step.items():
            if not keep(key):
                continue
            total = totals.setdefault(replace(key, scope="both"), [0, 0, 0, 0, 0])
            total[0] += n
            total[1] += nbytes
            if key not in seen:
                seen.add(key)
                total[2] += 1
                total[3] = total[3] or i
    n_steps = max(len(counted), 1)
    findings = [_finding(k, *t, n_steps, str(device)) for k, t in totals.items()]
    # What recurs in the loop first, then one-offs in a step, then set-up; each by estimated cost.
    findings.sort(key=lambda f: (_rank(f, n_steps), -f.seconds_per_step, -f.count))
    return AuditReport(
        str(device),
        source,
        tuple(_summary(i, step, keep) for i, step in enumerate(steps, 1)),
        tuple(findings),
        stopped,
        sum(n for key, (n, _) in current.items() if keep(key)) if steps else 0,
        mode,
        _summary(0, setup, keep) if setup else None,
    )


def _rank(f: AuditFinding, n_steps: int) -> int:
    if not f.steps_seen:
        return 2  # set-up only
    return 1 if n_steps > 1 and f.steps_seen == 1 else 0


def _busiest_device(steps: list[Events]) -> torch.device | None:
    """Without an optimizer or a given device: the accelerator that real copies went to."""
    targets = Counter(k.dst for step in steps for k in step if k.kind == "copy" and not k.cpu_only and k.dst != "cpu")
    return torch.device(targets.most_common(1)[0][0]) if targets else None


def _copy_seconds(key: EventKey, count: int, nbytes: int) -> float:
    rate = PINNED_BYTES_PER_SECOND if key.pinned else PAGEABLE_BYTES_PER_SECOND
    seconds = count * COPY_LATENCY_SECONDS + nbytes / rate
    return seconds + (count * SYNC_SECONDS if key.waits else 0.0)


# Known syncs and copies inside libraries, by (part of) the library function's name: the fix at the user's call.
_LIBRARY_FIXES = {
    "torch.nn.modules.transformer._detect_is_causal_mask": (
        "give the module the hint with the mask: `encoder(x, mask=mask, is_causal=True)` (False for a mask that "
        "is not causal); with `is_causal=None` it compares the whole mask with a causal one on the host at every call"
    ),
    "transformers.masking_utils": (
        "transformers reads the attention mask on the host in every forward to see whether it has padding (to "
        "drop the mask when it has none); batches without padding need no attention_mask; with padding this read "
        "is inside transformers, one per forward"
    ),
    "transformers.trainer.Trainer._run_epoch": (
        "the Trainer checks every micro-batch's loss for NaN/inf on the host (`logging_nan_inf_filter`, on by "
        "default): `TrainingArguments(logging_nan_inf_filter=False)` removes these syncs"
    ),
    "torch.nn.utils.rnn.pack_padded_sequence": (
        "with `enforce_sorted=False` it sorts the lengths on the CPU and copies the order to the device at every "
        "call: sort each batch by length where it is built (the collate function) and pass `enforce_sorted=True`"
    ),
    "tangtoc.move.fetch": (
        "this is the sync a log interval is meant to cost (on a GPU, one packed copy for all the values): keep "
        "the interval long enough that it does not show, e.g. every 100 steps"
    ),
    "tangtoc.move.to_": _BACK,  # tt.to_cpu, tt.to_numpy: bringing results back is their job
    "accelerate.data_loader": (
        "accelerate's prepared DataLoader copies every batch to the device as you iterate: pin the batches "
        "(`DataLoader(..., pin_memory=True)`) and let accelerate copy without blocking "
        "(`Accelerator(dataloader_config=DataLoaderConfiguration(non_blocking=True))`); if the data set fits in "
        "device memory, keep it resident there instead"
    ),
}


def _library_advice(key: EventKey, why: str, fix: str) -> tuple[str, str]:
    """Why and fix for a sync or copy that a library made on the user's behalf (``key.via``)."""
    assert key.via is not None
    why = f"inside {key.via}, which this line calls: {why}"
    known = next((text for name, text in _LIBRARY_FIXES.items() if name in key.via), None)
    if known is not None:
        return why, known
    if key.kind == "sync":
        fix = (
            "it happens inside the library: look for an argument of this call that spares the read (a hint that "
            "tells the library what it would check), or make the call less often"
        )
    return why, fix


def _creation_advice(key: EventKey, device: str, in_steps: bool) -> tuple[str, str]:
    """Why a tensor created on the CPU costs, and the fix that fits where it was created."""
    if key.place == "data":
        return (
            "created while loading data (Dataset.__getitem__ or a collate function), which runs in DataLoader "
            "workers on the CPU: every batch is then copied to the device",
            "keep it on the CPU there and load in parallel: `DataLoader(..., num_workers=4, pin_memory=True)`, then "
            "`batch.to(device, non_blocking=True)`; if the whole data set fits in device memory, keep it resident "
            "there instead (`tt.ResidentLoader`)",
        )
    if key.place == "init":
        return (
            "created in a module's __init__ as a plain tensor attribute: `model.to(device)` does not move it, so "
            "the module's device tensors meet it on the CPU",
            "register it as a buffer, so that `model.to(device)` moves it: `self.register_buffer(name, tensor, "
            "persistent=False)`",
        )
    if not in_steps:
        return (
            "created on the CPU in set-up, and tensors made from it are copied to the device in every step",
            f"create it on the device once, in set-up (`{key.op}(..., device=device)`), and slice or index it there: "
            "no copy per step (seed 6.3: data stays on the device)",
        )
    why = f"created on the CPU inside the step while the model computes on {device}: it must be copied there"
    if device.split(":")[0] == "cpu":
        why = "created without device=: on a GPU it is born on the CPU inside the step and must be copied over"
    return why, (
        f"create it on the device: `{key.op}(..., device=x.device)`; if it is the same every step, build it once, "
        "as a registered buffer or outside the loop"
    )


def _finding(
    key: EventKey,
    count: int,
    nbytes: int,
    seen: int,
    first: int,
    setup_count: int,
    n_steps: int,
    device: str,
) -> AuditFinding:
    if key.kind == "sync":
        why, fix = _SYNC_WHY[key.op]
        seconds, detail = count * SYNC_SECONDS, "synchronizes the host with the device"
    elif key.kind == "cpu-tensor":
        why, fix = _creation_advice(key, device, seen > 0)
        # Made in data loading, it reaches the device in the batch: that copy is priced where the batch moves.
        seconds = 0.0 if key.place == "data" else _copy_seconds(key, count, nbytes)
        detail = "tensor created on the CPU"
    else:
        seconds = _copy_seconds(key, count, nbytes)
        memory = "" if key.pinned is None else ("pinned, " if key.pinned else "pageable, ")
        detail = f"{key.src}→{key.dst} copy, {memory}{'blocking' if key.blocking else 'non-blocking'}"
        if key.dst == "cpu":
            why, fix = "brings a result back to the host; a blocking copy waits for the device", _BACK
        elif key.src == "cpu" and key.non_blocking and not key.pinned:
            why = (
                "non_blocking=True from pageable (unpinned) memory is synchronous in practice: the driver stages "
                "the bytes through a pinned buffer while the host waits"
            )
            fix = (
                "pin the host memory so the copy can overlap: `DataLoader(..., pin_memory=True)`, `tt.pin(batch)` "
                "or `x.pin_memory().to(device, non_blocking=True)`; better, keep the data resident on the device"
            )
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
        if key.kind == "copy" and key.non_blocking and key.src == "cpu" and not key.pinned:
            detail += "; non_blocking from pageable memory: synchronous in practice"
    if key.via is not None:
        why, fix = _library_advice(key, why, fix)
    return AuditFinding(
        key.kind,
        key.op,
        key.location,
        detail,
        key.cpu_only,
        count,
        seen,
        first,
        setup_count,
        nbytes,
        seconds / n_steps,
        why,
        fix,
        key.via,
    )

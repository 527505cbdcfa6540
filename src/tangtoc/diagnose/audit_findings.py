"""How an audit's events become findings: which a report lists (by its mode), how they rank by the cost model
of :mod:`tangtoc.diagnose.audit_report`, and the why and the fix of each, in the user's terms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import torch

from tangtoc.diagnose.audit_report import (
    COPY_LATENCY_SECONDS,
    PAGEABLE_BYTES_PER_SECOND,
    PINNED_BYTES_PER_SECOND,
    SYNC_SECONDS,
    AuditFinding,
    AuditReport,
    EventKey,
    Events,
    Mode,
    StepSummary,
)

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
    "padding mask to a nested tensor": (
        "nn.TransformerEncoder's fast path (eval or no_grad, with src_key_padding_mask) turns the mask into a nested "
        "tensor, reading it on the host",
        "build the encoder with `nn.TransformerEncoder(..., enable_nested_tensor=False)`, or pass no padding mask "
        "when every sequence has the same length",
    ),
    "torch.cuda.synchronize()": (
        "waits for every queued kernel",
        "remove it from the training loop; it is needed only to time GPU work (`tt.measure` does it for you)",
    ),
}
# A sync that only PyTorch's sync debug mode saw (no_sync on CUDA), inside an operation tangtoc does not list.
_UNLISTED_SYNC = (
    "PyTorch's sync debug mode saw this operation wait for the GPU: it needs a result on the host (often a size "
    "that depends on the data)",
    "look for a form of the operation that stays on the device (a fixed output size, an argument that spares the "
    "check), or move it out of the hot path",
)


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


def event_finding(key: EventKey, nbytes: int, device: str) -> AuditFinding:
    """One event as a finding of its own, seen once (its detail, why and fix), for a guard that stops at it."""
    return _finding(key, 1, nbytes, 1, 1, 0, 1, device)


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
        why, fix = _SYNC_WHY.get(key.op, _UNLISTED_SYNC)
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

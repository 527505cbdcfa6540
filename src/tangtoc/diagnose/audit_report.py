"""What an audit found, and how it reads: findings ranked by estimated cost per step, per-step totals, the cost
model, and the report's text (what ``tangtoc audit`` prints, and ``print(report)`` shows).

The cost model ranks findings; it does not measure them. One sync, one copy and one byte are priced at
typical values for a GPU attached over PCIe 4.0, so that a line that syncs every step outranks a copy made
once, and a 100 MB copy outranks a 4-byte one. The report states the model next to its numbers. Which events
become findings, and their advice, is :mod:`tangtoc.diagnose.audit_findings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tangtoc.diagnose.frames import Location
from tangtoc.units import ReadsAsText, fmt_bytes

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
class AuditReport(ReadsAsText):
    """What :class:`Audit` found: per-step totals and the findings ranked by estimated cost per step.

    ``device`` is where the model computes (from the optimizer's parameters, or as given). ``mode`` says how
    the findings were made: ``"observed"`` on an accelerator; on the CPU, ``"inferred"`` when the script names
    a device (the tensors it moves or creates there, and what is computed from them, are taken to be on the
    GPU) and ``"unnamed"`` when it never does (every host read is listed as a would-be sync). Without step
    boundaries (``step_source`` is ``None``), the findings cover the whole run. ``setup`` counts what ran
    before the first step outside the training loop; of it only CPU-born tensors that later meet the device
    are listed as findings. ``other_thread_steps`` counts optimizer steps taken in other threads than the audited
    one: their syncs and copies were not seen. ``steps_asked`` is the audit's limit (``None``: none).
    ``print(report)``, a rich console and a Jupyter cell show :meth:`text`.
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
    steps_asked: int | None = None

    @property
    def cpu_only(self) -> bool:
        return self.device.split(":")[0] == "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "mode": self.mode,
            "step_source": self.step_source,
            "steps_asked": self.steps_asked,
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

    def text(self, script: str | None = None, interrupted: bool = False) -> str:
        """The report as ``tangtoc audit`` prints it: what was audited, each finding with its why and fix, the
        per-step totals and the cost model. ``script`` names the audited script in the first line; ``interrupted``
        (Ctrl-C) marks the report partial."""
        n = len(self.steps)
        source = f"steps end at {self.step_source}" if self.step_source else "no steps: the whole run"
        if self.step_source == "backward()":
            source += ", as no optimizer.step() was seen"
        of_asked = "" if self.steps_asked is None else f" of {self.steps_asked}"
        ended = (
            ""
            if self.stopped or not self.step_source or not of_asked
            else f"; the script ended after {n}{of_asked} steps"
        )
        if interrupted:
            ended = f"; PARTIAL: interrupted after {n}{of_asked} steps"
        audited = f"tangtoc audit: {script}: " if script else "tangtoc audit: "
        lines = [f"{audited}{n} step(s) ({source}{ended}); model on {self.device}"]
        if self.other_thread_steps:
            lines.append(
                f"Not seen: {self.other_thread_steps} optimizer step(s) taken in other threads. Only the thread that "
                "runs the script is audited; what those threads sync or copy is not in this report."
            )
        if self.mode in _MODES:
            lines.append(_MODES[self.mode])
        if not self.findings and self.other_thread_steps:
            lines.append("Nothing found in the script's own thread; the steps in other threads were not audited.")
        elif not self.findings:
            lines.append("No syncs, copies or CPU-born tensors found in the audited steps.")
        per = max(n, 1)
        for i, f in enumerate(self.findings, 1):
            where = f"{f.location}  {f.location.code}" if f.location else "(no Python caller: autograd or C++)  "
            size = f", {fmt_bytes(f.bytes / per)}{'/step' if n else ''}" if f.bytes and f.kind != "sync" else ""
            via = f" inside {f.via}" if f.via else ""
            us = f"~{f.seconds_per_step * 1e6:.0f} µs"
            if not f.count:
                cost = ""
            elif n:
                cost = f"; {f.count / per:.1f}×/step{size}, {us}/step"
            else:  # no steps: the counts are the whole run's
                cost = f"; {f.count}× in the run{size}, {us}"
            when = _when(n, f.steps_seen, f.first_step, f.setup_count)
            lines += [f"{i:>2}. {where}", f"    {f.op}{via} — {f.detail}{cost}{when}", f"    why: {f.why}"]
            lines.append(f"    fix: {f.fix}")
        if self.setup is not None:
            s = self.setup
            lines.append(
                f"set-up (before the first step, outside the loop): {s.syncs} sync, {s.copies} copy "
                f"({fmt_bytes(s.copy_bytes)}), {s.cpu_tensors} CPU-born; one-offs, listed only where they cost per step"
            )
        if self.steps:
            lines.append("per step: " + " | ".join(map(_step_text, self.steps)))
        if self.events_after_last_step:
            lines.append(f"({self.events_after_last_step} event(s) after the last step were not counted.)")
        lines.append(
            f"µs/step are estimates to rank the findings, not measurements: a sync {SYNC_SECONDS * 1e6:.0f} µs, a "
            f"copy {COPY_LATENCY_SECONDS * 1e6:.0f} µs + bytes at {PAGEABLE_BYTES_PER_SECOND / 1e9:.0f} GB/s "
            "(pageable). Not seen: other threads (DataLoader workers, the pin-memory thread), the inside of C++ "
            "extensions, syncs outside PyTorch's tensor API (CUDA events and streams, collectives)."
        )
        return "\n".join(lines)


_MODES = {
    "inferred": "No GPU in use: nothing waited and nothing moved here. The script names a device, so what it moves "
    "or creates there, and what is computed from it, is taken to be on the GPU: listed are the lines that would "
    "synchronize or copy on a GPU, and the tensors born on the CPU that meet the device.",
    "unnamed": "No GPU in use, and the script never names a device (no `.to(device)`, no `device=`), so what would "
    "live on a GPU cannot be told: every host read is listed as if its tensor were on the GPU.",
}


def _when(n_steps: int, seen: int, first: int, setup_count: int) -> str:
    """When a finding happened, if not in every step: in set-up, once in step k, in some steps."""
    setup = f"{setup_count}× in set-up" if setup_count else ""
    if not seen:
        return f"; {setup}, before the first step"
    if n_steps > 1 and seen == 1:
        return f" (once, in step {first}{', and ' + setup if setup else ''})"
    if seen < n_steps:
        return f" (in {seen} of {n_steps} steps{', and ' + setup if setup else ''})"
    return f" (and {setup})" if setup else ""


def _step_text(s: StepSummary) -> str:
    return f"{s.index}: {s.syncs} sync, {s.copies} copy ({fmt_bytes(s.copy_bytes)}), {s.cpu_tensors} CPU-born"

"""What the trainer callbacks do, once for both: audit the first steps, guard devices, meter the rate and MFU.

:class:`Watch` knows nothing of any trainer. The adapters (:mod:`tangtoc.integrations.hf`,
:mod:`tangtoc.integrations.lightning`) call it at their trainer's hooks: :meth:`Watch.begin` when training starts,
``step_start`` / ``batch_start`` / ``batch_end`` / ``step_end`` around each optimizer step and its micro-batches,
:meth:`Watch.idle` after evaluation or a checkpoint, :meth:`Watch.read` at the trainer's log points, and
:meth:`Watch.close` when training ends (or fails). What it opens — the device guard, the audit, PyTorch's FLOP
counter — are nested contexts; :meth:`Watch.close` exits what is still open, innermost first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tangtoc.clock import now
from tangtoc.diagnose import audit, device_guard
from tangtoc.diagnose.audit import Audit, AuditReport
from tangtoc.diagnose.guard import DeviceGuard
from tangtoc.integrations.throughput import Meter, Peak, resolve_peak
from tangtoc.units import fmt_bytes

Echo = Callable[[str], None]


def _check(audit_steps: int, peak_flops: float | None) -> None:
    if isinstance(audit_steps, bool) or not isinstance(audit_steps, int) or audit_steps < 0:
        raise ValueError(f"audit_steps must be a whole number of steps, 0 for no audit, got {audit_steps!r}.")
    if peak_flops is not None and not (isinstance(peak_flops, (int, float)) and peak_flops > 0):
        raise ValueError(
            f"peak_flops must be the device's peak in FLOP/s (e.g. 989.5e12), got {peak_flops!r}; None looks it up."
        )


def audit_summary(report: AuditReport, limit: int = 10) -> str:
    """The audit's findings, one line each with its ``file:line`` and fix, most costly first."""
    n = max(len(report.steps), 1)
    syncs = sum(s.syncs for s in report.steps) / n
    copies = sum(s.copies for s in report.steps) / n
    moved = sum(s.copy_bytes for s in report.steps) / n
    gpu = " (no GPU in use: what would sync or copy on one)" if report.mode != "observed" else ""
    if report.steps:
        head = f"tangtoc audit of the first {len(report.steps)} step(s), model on {report.device}{gpu}: "
        head += f"{syncs:.3g} sync(s) and {copies:.3g} copy(ies) ({fmt_bytes(moved)}) per step."
    else:
        head = f"tangtoc audit, ended before the first step did, model on {report.device}{gpu}: what ran until then."
    lines = [head]
    for i, f in enumerate(report.findings[:limit], 1):
        where = str(f.location) if f.location else "(no Python caller)"
        via = f" inside {f.via}" if f.via else ""
        lines.append(f"{i:>3}. {where}  {f.op}{via}: {f.detail}, {f.count / n:.3g}/step")
        lines.append(f"     fix: {f.fix}")
    if len(report.findings) > limit:
        lines.append(f"     ... and {len(report.findings) - limit} more in callback.audit_report.findings")
    return "\n".join(lines)


class Watch:
    """The state of one training run seen from a callback; see the module docstring."""

    def __init__(
        self,
        audit_steps: int,
        guard: bool,
        peak_flops: float | None,
        echo: Echo | None,
        clock: Callable[[], float] = now,
    ) -> None:
        _check(audit_steps, peak_flops)  # when the callback is made, not at the first step
        self.audit_steps = audit_steps
        self.guard = guard
        self.peak_flops = peak_flops
        self.echo = echo
        self.clock = clock
        self.meter: Meter | None = None
        self.audit_report: AuditReport | None = None
        self._audit: Audit | None = None
        self._guard: DeviceGuard | None = None
        self._audit_until = 0
        self._main = True
        self._pending: dict[str, float] = {}  # numbers for the next log point (the audit's)

    @property
    def peak(self) -> Peak | None:
        return None if self.meter is None else self.meter.peak

    def begin(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        device: torch.device,
        precision: str | None,
        step: int,
        main: bool,
    ) -> None:
        """Training starts at optimizer step ``step`` on ``device``; ``main``: this process reports (rank 0)."""
        self.close()  # a previous run that raised may have left its audit or guard open
        self._main = main
        self.meter = Meter(device, resolve_peak(device, precision, self.peak_flops), self.clock)
        self.say(f"tangtoc: {self.meter.peak.line}")
        if self.guard:
            self._guard = device_guard(model, optimizer=optimizer)
            self._guard.__enter__()
        if self.audit_steps:
            self._audit = audit(device=device)
            self._audit.__enter__()
            self._audit_until = step + self.audit_steps

    def step_start(self) -> None:
        if self.meter is not None:
            self.meter.step_start()

    def batch_start(self, model: nn.Module, batch: Any) -> None:
        if self.meter is not None:
            self.meter.batch_start(model, batch)

    def batch_end(self) -> None:
        if self.meter is not None:
            self.meter.batch_end()

    def step_end(self, step: int) -> None:
        """Optimizer step ``step`` (counted from the start of training, resumed steps included) is done."""
        if self.meter is None:
            return
        audited = self._audit is not None
        self.meter.batch_end()  # the FLOP counter is inside the audit: it stops first
        if audited and step >= self._audit_until:
            self._end_audit()
        self.meter.step_end(audited)

    def idle(self) -> None:
        if self.meter is not None:
            self.meter.idle()

    def read(self) -> dict[str, float]:
        """What to log at this log point: rates since the last one, and the audit's numbers once it ended."""
        if self.meter is None:
            return {}
        out, self._pending = {**self._pending, **self.meter.read()}, {}
        return out

    def _end_audit(self) -> None:
        assert self._audit is not None
        a, self._audit = self._audit, None
        a.__exit__(None, None, None)
        report = self.audit_report = a.report()
        n = max(len(report.steps), 1)
        self._pending["tangtoc/audit_syncs_per_step"] = sum(s.syncs for s in report.steps) / n
        self._pending["tangtoc/audit_copies_per_step"] = sum(s.copies for s in report.steps) / n
        self.say(audit_summary(report))

    def close(self) -> None:
        """Exit what is still open, innermost first: the FLOP counter, the audit (reported), the guard."""
        try:
            if self.meter is not None:
                self.meter.close()
            if self._audit is not None:
                self._end_audit()
        finally:
            if self._guard is not None:
                g, self._guard = self._guard, None
                g.__exit__(None, None, None)

    def say(self, text: str) -> None:
        if self.echo is not None and self._main:
            self.echo(text)

"""``audit``: per training step, every cross-device copy, host-device synchronization and CPU-born tensor.

Seed 3.2 and 6.3: transfers cost time, and data and model should stay on the device. The costly mistakes
hide in innocent lines — ``loss.item()`` for a progress bar, ``batch.to(device)`` of a data set that
would fit on the device, ``torch.randn(...)`` without ``device=`` — each at the user's ``file:line``.
What each call is, and the two layers that see the calls, are in :mod:`tangtoc.diagnose.audit_events`;
on a CPU-only machine, which tensors would be on the GPU is inferred (:mod:`tangtoc.diagnose.intent`).

Steps end at each ``step()`` of the first optimizer that steps, or at each :func:`mark_step`. A loop without
an optimizer (manual SGD) counts a step at each ``backward()`` whose gradients were used (zeroed, replaced)
before the next one; gradients left to accumulate are one step. Everything before the first step that does
not run inside the training loop (the loop around the step's call) is set-up.
"""

from __future__ import annotations

import sys
import threading
import weakref
from dataclasses import replace
from types import FrameType
from typing import Any

import torch

from tangtoc.device import DeviceLike, resolve
from tangtoc.diagnose.audit_events import CONVERTERS, enter_layers, leave_layers
from tangtoc.diagnose.audit_findings import build_report
from tangtoc.diagnose.audit_report import AuditReport, EventKey, Events
from tangtoc.diagnose.frames import Loop, enclosing_loop, user_location, user_stack
from tangtoc.diagnose.intent import Intent
from tangtoc.diagnose.runner import Steps, StopScript, mark_step
from tangtoc.errors import TangtocError

Tensor = torch.Tensor
# Before the first step ends, events are kept with the user's stack, to tell set-up from the first step.
_Raw = dict[tuple[EventKey, tuple[tuple[str, int], ...]], list[int]]


class StopAudit(StopScript):
    """Raised at the end of the last step asked for; :class:`Audit` swallows it on exit (see
    :class:`~tangtoc.diagnose.runner.StopScript`)."""

    def __init__(self, audit: Audit, steps: int) -> None:
        super().__init__(audit, f"tangtoc audit: stopped after {steps} step(s), as asked")
        self.audit = audit


def _count(into: dict[Any, list[int]], key: Any, n: int, nbytes: int) -> None:
    slot = into.get(key)
    if slot is None:
        slot = into[key] = [0, 0]
    slot[0] += n
    slot[1] += nbytes


def _plain(events: _Raw | Events) -> Events:
    """Events by key alone, the stacks of raw ones dropped."""
    out: Events = {}
    for key, (n, nbytes) in events.items():
        _count(out, key[0] if isinstance(key, tuple) else key, n, nbytes)
    return out


def _add_into(into: dict[Any, list[int]], events: dict[Any, list[int]]) -> dict[Any, list[int]]:
    for key, (n, nbytes) in events.items():
        _count(into, key, n, nbytes)
    return into


def _split(raw: _Raw, loop: Loop | None) -> tuple[Events, Events]:
    """(set-up, first step) of the events before the first step ended: set-up is what ran outside the loop."""
    setup: Events = {}
    first: Events = {}
    for (key, stack), (n, nbytes) in raw.items():
        _count(first if loop is None or loop.holds(stack) else setup, key, n, nbytes)
    return setup, first


def _leaves(loss: Tensor) -> list[Tensor]:
    """The tensors whose ``.grad`` a ``loss.backward()`` fills: the leaves of its autograd graph."""
    seen: set[Any] = set()
    todo = [loss.grad_fn]
    leaves = []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf
        if isinstance(variable, Tensor):
            leaves.append(variable)
        todo.extend(n for n, _ in node.next_functions)
    return leaves


_active: Audit | None = None
_active_lock = threading.Lock()
__all__ = ["Audit", "AuditReport", "StopAudit", "audit", "mark_step"]


class Audit:
    """Records syncs, copies and CPU-born tensors per step while active; see :func:`audit`."""

    def __init__(self, steps: int | None = None, device: DeviceLike | None = None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"audit(steps=...) must be at least 1, got {steps}; use None to audit every step.")
        self.max_steps = steps
        self.device = None if device is None else resolve(device)
        self.stopped = False
        self.covered = 0
        self.intent = Intent()
        self._setup: Events | None = None  # None until the first step ends; until then events are raw
        self._steps: list[Events] = []
        self._current: dict[Any, list[int]] = {}
        self._source: str | None = None
        self._model_device: torch.device | None = None
        self.steps = Steps(self._on_step, self._on_optimizer)
        # backward() as the step, for loops without an optimizer: the events up to the last backward(), where
        # that call was, and the gradients it left (to see whether they were used before the next one).
        self._pending: dict[Any, list[int]] | None = None
        self._pending_loop: Loop | None = None
        self._grads: list[tuple[weakref.ref[Tensor], int, int]] = []
        self._modes: list[Any] = []
        self._real_synchronize: Any = None

    def record(self, key: EventKey, tensor: Tensor | None) -> None:
        """Count one event, and the bytes of ``tensor``, in the current step."""
        where: Any = key if self._setup is not None else (key, user_stack(sys._getframe(1)))
        _count(self._current, where, 1, 0 if tensor is None else tensor.numel() * tensor.element_size())

    def meet(self, sites: frozenset[EventKey], moved: bool, data_only: bool = False) -> None:
        """Host tensors made at ``sites`` met the device (``moved``: by a ``.to(device)``) in this step.

        ``data_only``: count only sites in data loading (a library moved the tensors).
        """
        for site in sites:
            # Host data turned into a tensor and moved: the copy is the finding, at its own line.
            if not (moved and site.op in CONVERTERS) and not (data_only and site.place != "data"):
                self.record(EventKey("meet", site.op, site.location, True, place=site.place), None)

    def _on_step(self, source: str, frame: FrameType) -> None:
        self._fold_pending()
        self._end_step(source, enclosing_loop(frame))

    def _on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self._model_device = params[0].device if params else None
        for p in params:  # the model computes where the device is: it may have been moved before the audit
            self.intent.mark(p, naming=False)

    def _end_step(self, source: str, loop: Loop | None, events: dict[Any, list[int]] | None = None) -> None:
        """End a step made of ``events`` (default: everything since the last step)."""
        if self.stopped:
            return
        self._source = source
        if events is None:
            events, self._current = self._current, {}
        if self._setup is None:
            self._setup, events = _split(events, loop)
            self._current = _plain(self._current)
        self._steps.append(events)
        if self.max_steps is not None and len(self._steps) >= self.max_steps:
            self.stopped = True
            raise StopAudit(self, len(self._steps))

    def _fold_pending(self) -> None:
        """Join the events held since the last backward() back into the current step (it was not a step)."""
        if self._pending is not None:
            self._current = _add_into(self._pending, self._current)
            self._pending = None

    def backward(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> Any:
        """Run ``loss.backward()``; without an optimizer, each backward() whose gradients were used is a step."""
        counting = self.steps.cadence is None and not self.steps.marked
        if counting:
            if self._pending is not None:
                if self._grads_used():
                    pending, self._pending = self._pending, None
                    self._end_step("backward()", self._pending_loop, pending)
                else:  # gradients accumulate: the same step goes on
                    self._fold_pending()
            leaves = _leaves(args[0])
            if self._model_device is None and leaves:  # no optimizer to say it: where the gradients go
                self._model_device = leaves[0].device
        out = func(*args, **kwargs)
        if counting and not self.stopped:
            self._grads = [(weakref.ref(p), id(p.grad), -1 if p.grad is None else p.grad._version) for p in leaves]
            self._pending, self._current = self._current, {}
            self._pending_loop = enclosing_loop(frame) if self._setup is None else None
        return out

    def _grads_used(self) -> bool:
        """Whether the gradients the last backward() left were read and reset (zeroed, replaced) since."""
        for ref, grad_id, version in self._grads:
            p = ref()
            if p is None or p.grad is None or id(p.grad) != grad_id or p.grad._version != version:
                return True
        return not self._grads

    def _synchronize(self, *args: Any, **kwargs: Any) -> Any:
        if not self.stopped and self.steps.owns():
            self.record(EventKey("sync", "torch.cuda.synchronize()", user_location(), False), None)
        return self._real_synchronize(*args, **kwargs)

    def __enter__(self) -> Audit:
        global _active
        with _active_lock:
            if _active is not None:
                raise TangtocError(
                    "an audit is already active in this process; audits do not nest. Use the one that is running "
                    "(tangtoc audit, or the outer `with tt.audit()`), or end it first."
                )
            _active = self
        try:
            self.steps.install()
            self._real_synchronize = torch.cuda.synchronize
            torch.cuda.synchronize = self._synchronize
            enter_layers(self, self._modes)
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self._uninstall()
        return isinstance(exc, StopAudit) and exc.audit is self

    def _uninstall(self) -> None:
        global _active
        try:
            leave_layers(self._modes)
        finally:
            self.steps.uninstall()
            if self._real_synchronize is not None:
                torch.cuda.synchronize = self._real_synchronize
                self._real_synchronize = None
            with _active_lock:
                if _active is self:
                    _active = None

    def report(self) -> AuditReport:
        """The findings so far (complete steps only; without any step boundary, the whole run).

        ``print(report)`` (and a notebook cell, and a rich console) shows the text ``tangtoc audit`` prints.
        """
        steps, current, source = list(self._steps), self._current, self._source
        if self._pending is not None:  # the last backward() ended a step: nothing after it used its gradients
            steps, current, source = [*steps, self._pending], self._current, "backward()"
        setup = self._setup or {}
        if self._setup is None and steps:  # one step, by backward(), still raw: split it here
            setup, steps[0] = _split(steps[0], self._pending_loop)
        report = build_report(
            steps,
            _plain(current),
            setup,
            source,
            self.stopped,
            self.device or self._model_device,
            self.intent.named,
        )
        return replace(report, other_thread_steps=self.steps.other_thread_steps, steps_asked=self.max_steps)


def audit(steps: int | None = None, device: DeviceLike | None = None) -> Audit:
    """Record, per training step, every cross-device copy, host-device sync and tensor created on the CPU.

    Use it as a context manager; the report is ready after (or during) the block::

        with tt.audit(steps=20) as a:
            train()                    # stops cleanly after 20 optimizer steps
        report = a.report()            # findings ranked by estimated cost, each at the user's file:line
        print(report)                  # the text `tangtoc audit` prints; report.to_dict() for JSON

    Args:
        steps: stop after this many steps (raising :class:`StopAudit`, which the block swallows), or ``None``
            to audit until the block ends. Steps end at each ``step()`` of the first optimizer that steps,
            or at each :func:`mark_step` once it has been called; without either, at each ``backward()``
            whose gradients were used before the next one (manual SGD).
        device: where the model computes. Default: the device of the optimizer's parameters. When it is
            the CPU, the report lists what *would* synchronize or copy on a GPU, so a loop can be cleaned
            on a laptop before renting one: the tensors the code moves with ``.to(device)`` (modules
            included) or creates with ``device=``, and everything computed from them, are taken to be on
            the GPU; reading any other tensor is no GPU sync. When the code names no device at all, every
            host read is listed (``report.mode == "unnamed"``).

    What runs before the first step outside the training loop (the loop around the call that ends the
    first step) is set-up: counted in ``report.setup``, and listed only for CPU-born tensors that later
    meet the device. A sync or copy a library makes on the user's behalf (``nn.TransformerEncoder``
    checking its mask, accelerate moving a batch) is listed at the user's line that called it, with the
    library function in ``finding.via``.

    Only the thread that enters the block is seen: DataLoader workers, pin-memory threads and other
    threads are not. Optimizer steps taken in other threads neither end a step nor stop the audit; their number
    is in ``report.other_thread_steps``, so that a loop run in threads is reported as unseen, not as clean.
    ``torch.compile``d code runs eagerly while audited (dynamo steps aside while a dispatch
    mode is active), so its operations are seen one by one. What a C++ extension does inside (its own
    copies or reads) is not seen, nor are syncs outside PyTorch's tensor API (CUDA events and streams,
    collectives, the caching allocator).
    """
    return Audit(steps, device)

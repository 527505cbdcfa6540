"""``audit``: per training step, every cross-device copy, host-device synchronization and CPU-born tensor.

Seed 3.2 and 6.3: transfers cost time, and data and model should stay on the device. The costly mistakes
hide in innocent lines — ``loss.item()`` for a progress bar, ``batch.to(device)`` of a data set that
would fit on the device, ``torch.randn(...)`` without ``device=`` — each at the user's ``file:line``.

Two layers see different things, and each case is taken from the layer that sees it:

* a :class:`~torch.overrides.TorchFunctionMode` sees the Python-level calls: ``.item()``, ``.tolist()``,
  ``bool(t)``, ``print(t)``/f-strings, ``.cpu()``, ``.numpy()``, ``.to()``, boolean-mask indexing,
  ``nonzero``/``unique``, and the creation functions (``torch.zeros``...) with whether ``device=`` was
  given. On the CPU some of these never reach the aten dispatcher (``.tolist()`` does not, nor a ``.to()``
  that has nothing to move), so this layer is also what reports, on a CPU-only machine, the operations
  that *would* synchronize or copy on a GPU;
* a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees the aten operations underneath: real
  cross-device copies and synchronizing kernels reached from C++ or from inside library calls.

An event recorded by the first layer marks its own call as covered, so the second does not count it twice.
Steps end at each ``step()`` of the first optimizer that steps, or at each :func:`mark_step`.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tangtoc.device import DeviceLike, resolve
from tangtoc.diagnose.audit_report import AuditReport, EventKey, build_report
from tangtoc.diagnose.calls import CREATION_FUNCTIONS
from tangtoc.diagnose.frames import caller_is_user, user_location
from tangtoc.errors import TangtocError

Tensor = torch.Tensor
aten = torch.ops.aten

_SYNC_METHODS: dict[Any, str] = {
    Tensor.item: ".item()",
    Tensor.tolist: ".tolist()",
    Tensor.__bool__: "bool(tensor) / if tensor:",
    Tensor.__int__: "int(tensor)",
    Tensor.__float__: "float(tensor)",
    Tensor.__index__: "tensor as an index",
    Tensor.__format__: "format(tensor) / f-string",
    Tensor.__repr__: "print(tensor) / repr",
    Tensor.numpy: ".numpy()",
    Tensor.__array__: "np.asarray(tensor)",
    Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    Tensor.argwhere: "nonzero",
    torch.unique: "unique",
    Tensor.unique: "unique",
    torch.unique_consecutive: "unique",
    Tensor.unique_consecutive: "unique",
    torch.masked_select: "masked_select",
    Tensor.masked_select: "masked_select",
    torch.equal: "torch.equal / allclose",
    Tensor.equal: "torch.equal / allclose",
    torch.allclose: "torch.equal / allclose",
    Tensor.allclose: "torch.equal / allclose",
    torch.bincount: "bincount",
    Tensor.bincount: "bincount",
}
_MASK_INDEX: dict[Any, str] = {Tensor.__getitem__: "x[bool mask]", Tensor.__setitem__: "x[bool mask] = v"}
_REPEAT = frozenset({torch.repeat_interleave, Tensor.repeat_interleave})
_MOVES: dict[Any, str] = {Tensor.to: ".to()", Tensor.cuda: ".cuda()", Tensor.cpu: ".cpu()"}
_FACTORIES: dict[Any, str] = {f: f"torch.{f.__name__}" for f in CREATION_FUNCTIONS}
# aten operations that make the host wait, as reached from C++ or inside library calls.
_SYNC_ATEN = {
    aten._local_scalar_dense: ".item()",
    aten.is_nonzero: "bool(tensor) / if tensor:",
    aten.equal: "torch.equal / allclose",
    aten.nonzero: "nonzero",
    aten.masked_select: "masked_select",
    aten._unique2: "unique",
    aten.unique_consecutive: "unique",
    aten.unique_dim: "unique",
    aten.bincount: "bincount",
}


class StopAudit(BaseException):
    """Raised at the end of the last step asked for; :class:`Audit` swallows it on exit.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that a training loop's ``except Exception`` does
    not catch it and keep going.
    """

    def __init__(self, audit: Audit, steps: int) -> None:
        super().__init__(f"tangtoc audit: stopped after {steps} step(s), as asked")
        self.audit = audit


def _same_place(target: torch.device, source: torch.device) -> bool:
    return target.type == source.type and (target.index is None or target.index == source.index)


def _copy(op: str, src: Tensor, dst: torch.device, non_blocking: bool) -> tuple[EventKey, Tensor] | None:
    """A real copy of ``src`` to ``dst`` (``None`` when it is already there), counting ``src``'s bytes."""
    if _same_place(dst, src.device):
        return None
    pinned = src.is_pinned() if src.device.type == "cpu" else None
    return EventKey("copy", op, user_location(), False, src.device.type, dst.type, pinned, non_blocking), src


def _non_blocking(args: tuple, kwargs: dict, position: int) -> bool:
    return bool(args[position] if len(args) > position else kwargs.get("non_blocking", False))


def _has_bool_mask(index: Any) -> bool:
    """Whether an index (``x[mask]``, ``x[mask, 0]``) holds a boolean tensor: its result size depends on the data."""
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


class _Calls(TorchFunctionMode):
    """The Python-level layer: syncing methods, moves, creation functions."""

    def __init__(self, audit: Audit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        a = self.audit
        if a.stopped:
            return func(*args, **kwargs)
        if func in _FACTORIES:
            out = func(*args, **kwargs)
            if isinstance(out, Tensor) and out.device.type == "cpu" and caller_is_user(sys._getframe(1)):
                explicit = kwargs.get("device") is not None
                a.record(EventKey("cpu-tensor", _FACTORIES[func], user_location(), True, explicit_device=explicit), out)
            return out
        event = _event(func, args, kwargs)
        if event is None:
            return func(*args, **kwargs)
        a.record(*event)
        a.covered += 1
        try:
            return func(*args, **kwargs)
        finally:
            a.covered -= 1


def _target(func: Any, args: tuple, kwargs: dict) -> tuple[torch.device | None, bool]:
    """Where ``.to()``/``.cpu()``/``.cuda()`` sends the tensor (``None`` for a dtype-only ``.to``), and non_blocking."""
    if func is Tensor.to:
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        return device, non_blocking
    if func is Tensor.cpu:
        return torch.device("cpu"), False
    index = args[1] if len(args) > 1 else kwargs.get("device")
    device = torch.device("cuda", index) if isinstance(index, int) else torch.device(index or "cuda")
    return device, _non_blocking(args, kwargs, 2)


def _event(func: Any, args: tuple, kwargs: dict) -> tuple[EventKey, Tensor] | None:
    """The event ``func(*args)`` is, with the tensor whose bytes it counts; ``None`` if it neither syncs nor moves.

    Called from the TorchFunctionMode handler: ``sys._getframe(2)`` is the code that called ``func``.
    """
    if not args or not isinstance(args[0], Tensor):
        return None
    t = args[0]
    label = _SYNC_METHODS.get(func)
    if label is None and func in _MASK_INDEX and len(args) > 1 and _has_bool_mask(args[1]):
        label = _MASK_INDEX[func]
    if label is None and func in _REPEAT and "output_size" not in kwargs:
        label = "repeat_interleave"
    if label is not None:
        cpu_only = t.device.type == "cpu"
        if cpu_only and not caller_is_user(sys._getframe(2)):
            return None  # a library's own host-side read (e.g. Adam's CPU step counter): not a GPU sync
        return EventKey("sync", label, user_location(), cpu_only), t
    if func is Tensor.copy_ and len(args) > 1 and isinstance(args[1], Tensor):
        return _copy(".copy_()", args[1], t.device, _non_blocking(args, kwargs, 2))
    label = _MOVES.get(func)
    if label is None:
        return None
    target, non_blocking = _target(func, args, kwargs)
    if target is None:
        return None
    real = _copy(label, t, target, non_blocking)
    if real is not None or t.device.type != "cpu" or not caller_is_user(sys._getframe(2)):
        return real
    # Nothing moves on this machine; on a GPU, `.to(device)` copies to it and `.cpu()` copies back.
    way = ("device", "cpu") if func is Tensor.cpu else ("cpu", "device")
    return EventKey("copy", label, user_location(), True, *way, t.is_pinned(), non_blocking), t


class _Kernels(TorchDispatchMode):
    """The aten layer: real cross-device copies and synchronizing kernels the Python layer did not cover."""

    def __init__(self, audit: Audit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        a = self.audit
        if not a.covered and not a.stopped:
            packet = func.overloadpacket
            label = _SYNC_ATEN.get(packet)
            if label is not None and isinstance(args[0], Tensor) and args[0].device.type not in ("cpu", "meta"):
                a.record(EventKey("sync", label, user_location(), False), args[0])
            else:
                copy = None
                if packet is aten._to_copy and kwargs.get("device") is not None:
                    copy = _copy("aten._to_copy", args[0], kwargs["device"], _non_blocking((), kwargs, 0))
                elif packet is aten.copy_:
                    copy = _copy("aten.copy_", args[1], args[0].device, _non_blocking(args, kwargs, 2))
                if copy is not None:
                    a.record(*copy)
        return func(*args, **kwargs)


_active: Audit | None = None
_active_lock = threading.Lock()


def mark_step() -> None:
    """End the current step of the active :func:`audit` (a no-op when none is active).

    For loops without an optimizer (evaluation, custom updates) or with several: once called, steps are
    counted only from these marks. Put it at the end of each iteration.
    """
    if _active is not None:
        _active.mark_step()


class Audit:
    """Records syncs, copies and CPU-born tensors per step while active; see :func:`audit`."""

    def __init__(self, steps: int | None = None, device: DeviceLike | None = None) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"audit(steps=...) must be at least 1, got {steps}; use None to audit every step.")
        self.max_steps = steps
        self.device = None if device is None else resolve(device)
        self.stopped = False
        self.covered = 0
        self._steps: list[dict[EventKey, list[int]]] = []
        self._current: dict[EventKey, list[int]] = {}
        self._source: str | None = None
        self._cadence: torch.optim.Optimizer | None = None
        self._model_device: torch.device | None = None
        self._modes: list[Any] = []
        self._hook: Any = None
        self._real_synchronize: Any = None

    def record(self, key: EventKey, tensor: Tensor | None) -> None:
        """Count one event, and the bytes of ``tensor``, in the current step."""
        slot = self._current.get(key)
        if slot is None:
            slot = self._current[key] = [0, 0]
        slot[0] += 1
        if tensor is not None:
            slot[1] += tensor.numel() * tensor.element_size()

    def mark_step(self) -> None:
        """End the current step; from the first call on, optimizer steps no longer end steps."""
        self._end_step("mark_step()")

    def _end_step(self, source: str) -> None:
        if self.stopped:
            return
        self._source = source
        self._steps.append(self._current)
        self._current = {}
        if self.max_steps is not None and len(self._steps) >= self.max_steps:
            self.stopped = True
            raise StopAudit(self, len(self._steps))

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._source == "mark_step()":
            return
        if self._cadence is None:  # the first optimizer that steps sets the cadence (a GAN has two)
            self._cadence = optimizer
            params = [p for g in optimizer.param_groups for p in g["params"]]
            self._model_device = params[0].device if params else None
        if optimizer is self._cadence:
            self._end_step("optimizer.step()")

    def _synchronize(self, *args: Any, **kwargs: Any) -> Any:
        if not self.stopped:
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
            self._hook = register_optimizer_step_post_hook(self._on_optimizer_step)
            self._real_synchronize = torch.cuda.synchronize
            torch.cuda.synchronize = self._synchronize
            for mode in (_Calls(self), _Kernels(self)):
                mode.__enter__()
                self._modes.append(mode)
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
            while self._modes:
                self._modes.pop().__exit__(None, None, None)
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            if self._real_synchronize is not None:
                torch.cuda.synchronize = self._real_synchronize
                self._real_synchronize = None
            with _active_lock:
                if _active is self:
                    _active = None

    def report(self) -> AuditReport:
        """The findings so far (complete steps only; without any step boundary, the whole run)."""
        return build_report(self._steps, self._current, self._source, self.stopped, self.device or self._model_device)


def audit(steps: int | None = None, device: DeviceLike | None = None) -> Audit:
    """Record, per training step, every cross-device copy, host-device sync and tensor created on the CPU.

    Use it as a context manager; the report is ready after (or during) the block::

        with tt.audit(steps=20) as a:
            train()                    # stops cleanly after 20 optimizer steps
        report = a.report()            # findings ranked by estimated cost, each at the user's file:line

    Args:
        steps: stop after this many steps (raising :class:`StopAudit`, which the block swallows), or ``None``
            to audit until the block ends. Steps end at each ``step()`` of the first optimizer that steps,
            or at each :func:`mark_step` once it has been called.
        device: where the model computes. Default: the device of the optimizer's parameters. When it is
            the CPU, the report lists what *would* synchronize or copy on a GPU, so a loop can be cleaned
            on a laptop before renting one.

    Only the thread that enters the block is seen: DataLoader workers, pin-memory threads and other
    threads are not. ``torch.compile``d code runs eagerly while audited (dynamo steps aside while a dispatch
    mode is active), so its operations are seen one by one. What a C++ extension does inside (its own
    copies or reads) is not seen, nor are syncs outside PyTorch's tensor API (CUDA events and streams,
    collectives, the caching allocator).
    """
    return Audit(steps, device)

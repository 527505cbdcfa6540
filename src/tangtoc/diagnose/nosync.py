"""``no_sync``: a region of code that must not make the host wait for the device, for tests and hot paths.

::

    with tt.no_sync():                  # raises SyncError at the first sync, at the user's line
        loss = train_step(model, batch)

    @tt.no_sync(on_sync="warn")         # or warn (SyncWarning), once per operation and line
    def train_step(model, batch): ...

A sync is anything after which the host waits for the device's queued work: reading a value or a size that depends
on the data (``.item()``, ``print(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``x[mask]``, ``nonzero``...),
``torch.cuda.synchronize()``,
and a copy between host and device without ``non_blocking=True`` (PyTorch follows it with a stream
synchronization) or, on a GPU, with ``non_blocking=True`` from pageable memory (the host waits while the driver
stages it). Two views see them:

* **tangtoc's own hooks**, the audit's two layers (:mod:`tangtoc.diagnose.audit_events`), see each of these at the
  Python call, before it waits, and name the call and its line. They see what PyTorch's sync debug mode does not:
  a non-blocking copy from pageable memory (vLLM found the same gap: vllm-project/vllm#53491), anything on a
  machine without CUDA, and what would sync on a GPU when the code runs on the CPU.
* **PyTorch's sync debug mode** (``torch.cuda.set_sync_debug_mode``), on CUDA, sees syncs that the hooks do not
  list: a CUDA stream's ``synchronize()``, kernels that wait for a value inside C++. It is process-global, not per
  thread, so the region arms it at ``"warn"`` (an ``"error"`` would raise in every other thread too, a pin-memory
  thread included: vllm-project/vllm#51455) and turns its warnings into this region's verdict only in the thread
  that entered it; the mode it found is restored on exit. A mode already at ``"error"`` is left to raise.

On the CPU nothing waits, so what would wait on a GPU is inferred as the audit infers it
(:mod:`tangtoc.diagnose.intent`): the model's parameters (and outputs computed from them before the region, while
they are in the autograd graph), tensors moved with ``.to(device)`` or created with ``device=``, and everything
computed from them would be on the GPU. A tensor that would stay on the host (plain
CPU data, a host tensor made in the region) is no sync: ``torch.tensor([1., 2.]).sum().item()`` passes, and
``model(x).sum().item()`` does not. Whether host memory would be pinned cannot be told without a GPU, so on the
CPU a ``non_blocking=True`` copy passes.

Not seen: other threads (as in the audit), the inside of C++ extensions, CUDA events, collectives; on the CPU, a
tensor moved to the device before the region, or detached from the model's graph there, counts as host memory;
a library's own move of it (transformers moving labels or a mask to where it computes) is taken to move nothing.
"""

from __future__ import annotations

import functools
import itertools
import linecache
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar, cast, overload

import torch
from torch import nn

from tangtoc.device import DeviceLike, resolve
from tangtoc.diagnose.audit_events import Kernels, enter_layers, leave_layers
from tangtoc.diagnose.audit_findings import event_finding
from tangtoc.diagnose.audit_report import EventKey
from tangtoc.diagnose.frames import Location, is_library_file, user_location
from tangtoc.diagnose.intent import Intent
from tangtoc.errors import SyncError, SyncWarning, UsageError

Tensor = torch.Tensor
OnSync = Literal["raise", "warn"]
F = TypeVar("F", bound=Callable[..., Any])

# What PyTorch's sync debug mode says (c10/cuda/CUDAFunctions.cpp, warn_or_error_on_sync), and what it says once
# when armed.
_TORCH_SYNC_WARNING = "called a synchronizing CUDA operation"
_PROTOTYPE_WARNING = "Synchronization debug mode is a prototype feature"
_BLOCKING_WHY = "a copy without non_blocking=True returns only when it is done, after all the work queued before it"
_INFERRED_READ = (
    "No GPU in use, so nothing waited here; on a GPU the tensor would be there: it is computed from the model's "
    "parameters, a `.to(device)` or a tensor created with `device=`."
)
_INFERRED_MOVE = "No GPU in use, so nothing waited here; on a GPU this copy would go to it."
# Library functions whose job is the move the user asked for (``BatchEncoding.to``, ``send_to_device``).
_MOVE_FUNCTIONS = frozenset({"to", "cuda", "to_device", "send_to_device"})


@dataclass(frozen=True, slots=True)
class Sync:
    """One host-device synchronization in a guarded region.

    ``op`` is the operation as the audit names it (``".item()"``, ``".to()"``); ``call`` the user's code that made
    it (``"loss.item()"``: the expression where Python knows its columns, else the line); ``via`` the library
    function that synced on the user's behalf; ``inferred``: nothing waited here (no GPU in use), it would on one.
    """

    op: str
    call: str
    location: Location | None
    via: str | None
    inferred: bool
    message: str

    def __str__(self) -> str:
        return self.message


def _waits(key: EventKey, inferring: bool) -> bool:
    """Whether an audit event makes the host wait for the device; ``inferring``: on the CPU, would on a GPU."""
    if key.cpu_only and (not inferring or key.scope == "fallback"):
        return False  # host work while a GPU is in use; or a read of a tensor that stays on the host
    if key.kind == "sync":
        return True
    if key.kind != "copy" or "cpu" not in (key.src, key.dst):
        return False
    if not key.non_blocking:
        return True  # cudaMemcpyAsync, then cudaStreamSynchronize
    # From pageable memory the host waits while the driver stages the bytes. Pinning needs a GPU, so on the CPU
    # whether the memory would be pinned cannot be told: only a real copy is judged.
    return not key.cpu_only and key.src == "cpu" and not key.pinned


class _ModelOnDevice(Intent):
    """Device intent for a region entered after the model was moved: its parameters, and what was computed from
    them before the region and is still in the autograd graph (a ``grad_fn``), are where it computes."""

    def on_device(self, t: Tensor) -> bool:
        return isinstance(t, nn.Parameter) or t.grad_fn is not None or super().on_device(t)


class NoSync:
    """The guard :func:`no_sync` returns: a context manager, and a decorator (each call a region of its own).

    ``found`` lists the syncs of the last region, one per operation and line, in the order first seen (with
    ``on_sync="raise"``, the one raised). ``device`` is where the code computes once the region is entered.
    """

    def __init__(self, on_sync: OnSync = "raise", device: DeviceLike | None = None) -> None:
        if on_sync not in ("raise", "warn"):
            raise ValueError(f"no_sync(on_sync=...) must be 'raise' or 'warn', got {on_sync!r}.")
        self.on_sync = on_sync
        self._device_spec = device
        self.device: torch.device | None = None
        self.found: list[Sync] = []
        # What the audit's layers report to (see audit_events.Recorder).
        self.intent: Intent = _ModelOnDevice()
        self.stopped = False
        self.covered = 0
        self._seen: set[EventKey] = set()
        self._thread = 0
        self._modes: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._last_call: tuple[int, int] | None = None  # the user's frame and instruction of the last sync found

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with NoSync(self.on_sync, self._device_spec):
                return func(*args, **kwargs)

        return cast(F, guarded)

    def __enter__(self) -> NoSync:
        if self._modes or self._undo:
            raise UsageError(
                "this no_sync guard is already active; a guard guards one region at a time. Use a new "
                "`tt.no_sync()` for the inner region, or decorate the function (each call gets its own)."
            )
        self.device = resolve(self._device_spec)  # here, not at decoration: a module-level decorator starts no GPU
        self.found, self._seen, self._last_call = [], set(), None
        self.intent = _ModelOnDevice()
        self._thread = threading.get_ident()
        try:
            if self.device.type == "cuda":
                self._watch_cuda()
            enter_layers(self, self._modes)
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._uninstall()

    def _uninstall(self) -> None:
        try:
            leave_layers(self._modes)
        finally:
            while self._undo:
                self._undo.pop()()

    def _watch_cuda(self) -> None:
        """``torch.cuda.synchronize()`` and PyTorch's sync debug mode, each undone on exit."""
        real = torch.cuda.synchronize

        def synchronize(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._thread:
                self.record(EventKey("sync", "torch.cuda.synchronize()", user_location(), False), None)
            return real(*args, **kwargs)

        torch.cuda.synchronize = synchronize
        self._undo.append(lambda: setattr(torch.cuda, "synchronize", real))
        catcher = TorchSyncWarnings(self._debug_mode_sync, self._thread)
        catcher.__enter__()
        self._undo.append(lambda: catcher.__exit__(None, None, None))
        before = torch.cuda.get_sync_debug_mode()
        if before == 0:  # "warn": see the module docstring; a mode already at "error" raises on its own
            torch.cuda.set_sync_debug_mode("warn")
            self._undo.append(lambda: torch.cuda.set_sync_debug_mode(before))

    # The Recorder interface of the audit's layers.
    def record(self, key: EventKey, tensor: Tensor | None) -> None:
        """Judge one event: a sync raises :class:`SyncError` (or warns); anything else passes."""
        __tracebackhide__ = True  # pytest: the failure shows the user's line, not this frame
        assert self.device is not None  # set on entry, before the layers report
        if not _waits(key, self.device.type == "cpu") or self._moved_before(key, tensor):
            return
        frame = _user_frame(sys._getframe(1))
        self._last_call = None if frame is None else (id(frame), frame.f_lasti)
        first = key not in self._seen
        if not first and self.on_sync == "warn":
            return  # warned already: once per operation and line
        self._seen.add(key)
        nbytes = 0 if tensor is None else tensor.numel() * tensor.element_size()
        sync = _describe(key, _call_text(frame, key), nbytes, str(self.device))
        if first:
            self.found.append(sync)
        if self.on_sync == "raise":
            raise SyncError(sync)  # every time: code that caught the first one must not pass the second
        where = key.location
        warnings.warn_explicit(
            sync.message, SyncWarning, where.file if where else "<unknown>", where.line if where else 0
        )

    def _moved_before(self, key: EventKey, tensor: Tensor | None) -> bool:
        """A library's own move of a tensor the region did not create: on a GPU a no-op, assumed moved before.

        Model code moves its inputs where it computes (transformers: ``labels.to(logits.device)``, the attention
        mask); a batch moved to the GPU before the region, as a test's fixtures do, is already there. On the CPU
        that batch counts as host memory, so only host data the region itself created (a creation site of the
        user's) is judged. A move the user asked a library for (``tt.to_device``, ``BatchEncoding.to``,
        accelerate's ``send_to_device``) and PyTorch's own (``pack_padded_sequence``'s sort order) still count.
        """
        if not (key.cpu_only and key.kind == "copy" and key.src == "cpu" and key.op in (".to()", ".cuda()")):
            return False
        library = key.via.split(" (from ")[0] if key.via else None
        if library is None or library.startswith(("torch.", "tangtoc.", "accelerate.")):
            return False
        if library.rsplit(".", 1)[-1] in _MOVE_FUNCTIONS:
            return False
        return tensor is not None and not self.intent.sites(tensor)

    def meet(self, sites: frozenset[EventKey], moved: bool, data_only: bool = False) -> None:
        """Host-born tensors meeting the device cost a copy in the audit; they do not make the host wait."""

    def backward(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> Any:
        return func(*args, **kwargs)

    def _debug_mode_sync(self) -> None:
        """PyTorch's sync debug mode saw a sync in this thread: judge it, unless the hooks already did."""
        frame = sys._getframe(1)
        user = _user_frame(frame)
        if user is not None and (id(user), user.f_lasti) == self._last_call:
            return  # the same call the hooks reported (under on_sync="warn" the call went on and synced)
        self.record(EventKey("sync", _dispatched_op(frame), user_location(frame), False), None)


class TorchSyncWarnings:
    """While active, PyTorch's sync debug mode warnings raised in ``thread`` call ``found`` (which may raise);
    other threads' warnings, and every other warning, go where they went before. Restores the warning filters
    and ``warnings.showwarning`` on exit."""

    def __init__(self, found: Callable[[], None], thread: int) -> None:
        self._found = found
        self._thread = thread
        self._catch = warnings.catch_warnings()
        self._shown: Callable[..., None] = warnings.showwarning

    def __enter__(self) -> TorchSyncWarnings:
        self._catch.__enter__()
        warnings.filterwarnings("always", message=_TORCH_SYNC_WARNING)  # every one, not once per line
        warnings.filterwarnings("ignore", message=_PROTOTYPE_WARNING)
        self._shown = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(None, None, None)

    def _show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        if threading.get_ident() == self._thread and str(message).startswith(_TORCH_SYNC_WARNING):
            self._found()
        else:
            self._shown(message, category, filename, lineno, *rest)


@overload
def no_sync(func: F, /) -> F: ...
@overload
def no_sync(*, on_sync: OnSync = "raise", device: DeviceLike | None = None) -> NoSync: ...
def no_sync(func: F | None = None, /, *, on_sync: OnSync = "raise", device: DeviceLike | None = None) -> F | NoSync:
    """A region that must not make the host wait for the device: raise (or warn) at the first sync in it.

    Use it as a context manager, or as a decorator (``@tt.no_sync`` or ``@tt.no_sync(on_sync="warn")``)::

        with tt.no_sync():
            loss = train_step(model, batch)   # SyncError: `loss.item()` at train.py:42 waits for the GPU: ...

    Args:
        on_sync: ``"raise"`` a :class:`SyncError` before the sync happens (where the hooks see it first), or
            ``"warn"`` a :class:`SyncWarning` once per operation and line and go on; ``guard.found`` lists them.
        device: where the code computes (default: :func:`tangtoc.pick_device`). On the CPU, what would sync on a
            GPU is inferred, and syncs on host data that would stay on the host pass; on an accelerator only
            real syncs count, and on CUDA PyTorch's sync debug mode watches too.

    What counts as a sync, how it is seen on each device and what is not seen: :mod:`tangtoc.diagnose.nosync`.
    For pytest, the ``tangtoc`` plugin adds ``@pytest.mark.no_sync`` and a ``no_sync`` fixture.
    """
    guard = NoSync(on_sync, device)
    return guard if func is None else guard(func)


def _user_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def _call_text(frame: FrameType | None, key: EventKey) -> str:
    """The user's code that made the call: the expression itself (Python 3.11+ knows its columns), else the line."""
    positions = getattr(frame.f_code, "co_positions", None) if frame is not None else None
    if frame is not None and positions is not None:
        line, end_line, start, end = next(itertools.islice(positions(), frame.f_lasti // 2, None), (None,) * 4)
        if line is not None and line == end_line and start is not None and end is not None:
            source = linecache.getline(frame.f_code.co_filename, line).encode()  # columns count UTF-8 bytes
            text = source[start:end].decode(errors="replace").strip()
            if 0 < len(text) <= 80:
                return text
    return key.location.code if key.location is not None and key.location.code else key.op


def _dispatched_op(frame: FrameType | None) -> str:
    """The aten operation that the audit's dispatch layer was running when PyTorch's debug mode warned."""
    while frame is not None:
        if frame.f_code is Kernels.__torch_dispatch__.__code__:
            return str(frame.f_locals.get("func", "a synchronizing CUDA operation"))
        frame = frame.f_back
    return "a synchronizing CUDA operation"


def _describe(key: EventKey, call: str, nbytes: int, device: str) -> Sync:
    finding = event_finding(key, nbytes, device)
    where = str(key.location) if key.location is not None else "a line with no Python caller (autograd or C++)"
    if key.kind == "sync":
        head, why = f"`{call}` at {where} waits for the GPU", finding.why
    else:
        direction = "to the device" if key.src == "cpu" else "back to the host"
        head = f"`{call}` at {where} copies {direction} and waits"
        why = _BLOCKING_WHY if key.src == "cpu" and not key.non_blocking and key.via is None else finding.why
    lines = [f"{head}: {why}.", f"fix: {finding.fix}"]
    if key.cpu_only:
        lines.append(_INFERRED_MOVE if key.src == "cpu" else _INFERRED_READ)
    return Sync(key.op, call, key.location, key.via, key.cpu_only, "\n".join(lines))

"""``profile``: where each training step's wall time goes, and what bounds the step.

Seed 6.1 and 6.3: a slow step is slow for one reason first — it waits for data, copies, synchronizes, runs too
many small operations, or computes. The profile splits each step's wall time, on the host clock of
:mod:`tangtoc.clock`, into the phase the host was in: waiting for data (inside a DataLoader iterator's
``__next__``), host→device copies (``.to``/``.cuda``/``copy_`` that cross devices), forward (the outermost
module calls), backward (``torch.autograd.backward``), optimizer (``optimizer.step()``), syncs (reads of a device
tensor on the host and ``torch.cuda.synchronize``) and other host time (the Python between them). A phase nested
in another (a sync inside ``forward``) is charged to the inner one, so the phases add up to the wall time.

It sees the script from outside, cheaply: a wrapper on ``Module.__call__`` (only the outermost call is timed), global
optimizer hooks, ``torch.autograd.backward``, a DataLoader iterator's ``__next__``, and the few Tensor methods that
copy or sync; nothing runs per aten operation except in one counting step, the last
warm-up step, where a dispatch mode counts the operations (and is excluded from the timings). On CUDA, after the
timed steps, a few more steps run under PyTorch's profiler (CUDA activity only) for the device's busy time and its
kernel launches; they are not timed either. Only the thread that enters the profile is seen.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data.dataloader import _BaseDataLoaderIter

from tangtoc.clock import Stopwatch
from tangtoc.device import DeviceLike, resolve
from tangtoc.diagnose.profile_report import (
    PHASES,
    DeviceTimes,
    ProfileReport,
    StepTimes,
    device_times,
    judge,
    mean_seconds,
)
from tangtoc.diagnose.runner import Steps, StopScript
from tangtoc.errors import TangtocError

Tensor = torch.Tensor
_DATA, _COPY, _FORWARD, _BACKWARD, _OPTIMIZER, _SYNC, _OTHER = range(len(PHASES))
DEVICE_STEPS = 3  # steps profiled on the accelerator: enough to average out one step's jitter, few enough to be cheap
# Methods that read a tensor's value on the host: on a device tensor, the host waits for the device.
_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
UNSEEN = (
    "other threads (DataLoader workers are covered by the time the loop waits for them)",
    "data drawn from iterables other than a DataLoader (a generator, a list, a ResidentLoader): in other host time",
    "loss functions called as functions, not modules: in other host time",
)


class StopProfile(StopScript):
    """Raised at the end of the last step asked for; :class:`Profile` swallows it on exit."""


class _Counter(TorchDispatchMode):
    """Counts aten operations, by the phase the host is in (the counting step only: it costs per operation)."""

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile
        self.ops = [0] * len(PHASES)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops[self.profile._stack[-1]] += 1
        return func(*args, **(kwargs or {}))


_active: Profile | None = None
_active_lock = threading.Lock()


class Profile:
    """Times each step's phases while active; see :func:`profile`."""

    def __init__(
        self,
        steps: int | None = None,
        warmup: int = 2,
        device: DeviceLike | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if steps is not None and steps < 1:
            raise ValueError(f"profile(steps=...) must be at least 1, got {steps}; use None to time every step.")
        if warmup < 0:
            raise ValueError(f"profile(warmup=...) must be 0 or more, got {warmup}.")
        self.max_steps = steps
        self.warmup = warmup
        self.device = None if device is None else resolve(device)
        self._clock = clock
        self.stopped = False
        self.steps = Steps(self._on_step, self._on_optimizer)
        self._watch: Stopwatch | None = None
        self._stack = [_OTHER]
        self._seconds = [0.0] * len(PHASES)
        self._step_start = 0.0
        self._counts = [0, 0, 0]  # syncs, copies, copy bytes
        self._done: list[StepTimes] = []
        self._source: str | None = None
        self._in_forward = False  # inside an outermost module call: forward is that call
        self._backward_since_step = False
        self._workers: int | None = None
        self._model_device: torch.device | None = None
        self._counter: _Counter | None = None
        self._ops: int | None = None
        self._device_profiler: Any = None
        self._device_steps: list[float] = []
        self.device_times: DeviceTimes | None = None
        self._device_error = "the device's busy time (it is profiled after the timed steps: give a number of steps)"
        self._undo: list[Callable[[], None]] = []

    # --- the phase clock: each reading charges the time since the last one to the phase the host was in ---
    def _lap(self) -> float:
        assert self._watch is not None, "laps start when the profile is entered"
        now = self._watch.clock()
        self._seconds[self._stack[-1]] += now - self._watch.last
        self._watch.last = now
        return now

    def _enter(self, phase: int) -> None:
        self._lap()
        self._stack.append(phase)

    def _exit(self) -> None:
        self._lap()
        if len(self._stack) > 1:
            self._stack.pop()

    def _timed(self, phase: int, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._enter(phase)
        try:
            return func(*args, **kwargs)
        finally:
            self._exit()

    # --- step ends ---
    def _on_step(self, source: str, frame: FrameType | None) -> None:
        if self.stopped:
            return
        self._source = source
        self._backward_since_step = False
        now = self._lap()
        index = len(self._done) + 1
        ops = None
        if self._counter is not None:
            ops = sum(self._counter.ops)
            self._ops = sum(self._counter.ops[p] for p in (_FORWARD, _BACKWARD, _OPTIMIZER))
            self._counter.__exit__(None, None, None)
            self._counter = None
        if self._device_profiler is not None:
            self._device_steps.append(now - self._step_start)
        else:
            syncs, copies, nbytes = self._counts
            seconds = dict(zip(PHASES, self._seconds, strict=True))
            warm = index <= self.warmup
            self._done.append(StepTimes(index, seconds, now - self._step_start, syncs, copies, nbytes, ops, warm))
        self._seconds = [0.0] * len(PHASES)
        self._counts = [0, 0, 0]
        self._step_start = now
        self._next_step(len(self._done))

    def _next_step(self, done: int) -> None:
        """Set up the step that starts now: the counting step, the accelerator's steps, or the end."""
        if self.warmup and done == self.warmup - 1:
            self._counter = _Counter(self)
            self._counter.__enter__()
        if self.max_steps is None or done < self.warmup + self.max_steps:
            return
        if self._device_profiler is None and self._model_device is not None and self._model_device.type == "cuda":
            self._start_device_profile()
            if self._device_profiler is not None:
                return
        elif self._device_profiler is not None and len(self._device_steps) < DEVICE_STEPS:
            return
        self._stop_device_profile()
        self.stopped = True
        raise StopProfile(self, f"tangtoc profile: stopped after {done} step(s), as asked")

    def _on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self._model_device = self.device or (params[0].device if params else None)

    # --- the accelerator's own view: PyTorch's profiler, CUDA activity only, over DEVICE_STEPS steps ---
    def _start_device_profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile  # imported here: loading it costs, and CPU runs skip it

        try:
            self._device_profiler = profile(activities=[ProfilerActivity.CUDA])
            with warnings.catch_warnings():  # its notes on cycles and schedules are about its own use, not ours
                warnings.simplefilter("ignore")
                self._device_profiler.__enter__()
        except Exception as e:  # no CUPTI: the host's split stands without the device's view
            self._device_profiler = None
            self._device_error = f"the device's busy time (PyTorch's profiler failed: {e})"

    def _stop_device_profile(self) -> None:
        prof, self._device_profiler = self._device_profiler, None
        if prof is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof.__exit__(None, None, None)
        steady = [s for s in self._done if not s.warmup]
        if not self._device_steps or not steady:
            return
        # Busy means computing: kernels only. A GPU busy copying is a transfer-bound one, and the host's copy
        # phase says so.
        intervals = [
            (e.start_ns(), e.end_ns())
            for e in prof.profiler.kineto_results.events()
            if e.device_type() == torch.autograd.DeviceType.CUDA and not e.name().startswith(("Memcpy", "Memset"))
        ]
        # Against the timed steps' wall time: the profiled ones are slowed by the profiler on the host side.
        n = len(self._device_steps)
        busy = _union_ns(intervals) / 1e9 / n
        self.device_times = device_times(steady, n, busy, len(intervals) / n)

    # --- the hooks ---
    def _owns(self) -> bool:
        return threading.get_ident() == self.steps.thread and not self.stopped

    def _call(self, real: Callable[..., Any]) -> Callable[..., Any]:
        # Module.__call__ itself, not global module hooks: those send every module call down torch's slow path
        # (hook lists built per call); a nested call here costs one check.
        def call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if self._in_forward or not self._owns():
                return real(module, *args, **kwargs)
            self._in_forward = True
            try:
                return self._timed(_FORWARD, real, module, *args, **kwargs)
            finally:
                self._in_forward = False

        return call

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._owns():
            self._enter(_OPTIMIZER)

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._owns() and self._stack[-1] == _OPTIMIZER:
            self._exit()

    def _backward(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def backward(*args: Any, **kwargs: Any) -> Any:
            if not self._owns():
                return real(*args, **kwargs)
            if self._backward_since_step and self.steps.cadence is None and not self.steps.marked:
                # No optimizer steps: a step ends where the next backward() begins (manual SGD).
                self._on_step("backward()", None)
            self._backward_since_step = True
            return self._timed(_BACKWARD, real, *args, **kwargs)

        return backward

    def _data(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def next_batch(it: _BaseDataLoaderIter) -> Any:
            if not self._owns():
                return real(it)
            self._workers = it._num_workers
            return self._timed(_DATA, real, it)

        return next_batch

    def _move(self, real: Callable[..., Any], name: str) -> Callable[..., Any]:
        def move(t: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._owns():
                return real(t, *args, **kwargs)
            if name == "to":
                target = torch._C._nn._parse_to(*args, **kwargs)[0]
            elif name == "cuda":
                target = torch.device("cuda")
            else:
                target = torch.device("cpu")
            if target is None or target.type == t.device.type:
                return real(t, *args, **kwargs)
            return self._crossing(t, target.type != "cpu", real, t, *args, **kwargs)

        return move

    def _copy_into(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def copy_(dst: Tensor, src: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._owns() or not isinstance(src, Tensor) or src.device.type == dst.device.type:
                return real(dst, src, *args, **kwargs)
            return self._crossing(src, dst.device.type != "cpu", real, dst, src, *args, **kwargs)

        return copy_

    def _crossing(self, t: Tensor, to_device: bool, real: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A copy between devices: to a device, a copy; back to the host, a sync (the host waits to read it)."""
        if to_device:
            self._counts[1] += 1
            self._counts[2] += t.numel() * t.element_size()
        else:
            self._counts[0] += 1
        return self._timed(_COPY if to_device else _SYNC, real, *args, **kwargs)

    def _read(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def read(t: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._owns() or t.device.type in ("cpu", "meta"):
                return real(t, *args, **kwargs)
            self._counts[0] += 1
            return self._timed(_SYNC, real, t, *args, **kwargs)

        return read

    def _synchronize(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def synchronize(*args: Any, **kwargs: Any) -> Any:
            if not self._owns():
                return real(*args, **kwargs)
            self._counts[0] += 1
            return self._timed(_SYNC, real, *args, **kwargs)

        return synchronize

    def _patch(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` by ``wrap(original)``, and remember how to put the original back."""
        own = name in vars(owner)
        real = vars(owner)[name] if own else getattr(owner, name)
        setattr(owner, name, wrap(real))
        self._undo.append(lambda: setattr(owner, name, real) if own else delattr(owner, name))

    def _hook(self, handle: Any) -> None:
        self._undo.append(handle.remove)

    def __enter__(self) -> Profile:
        global _active
        with _active_lock:
            if _active is not None:
                raise TangtocError("a profile is already active in this process; profiles do not nest.")
            _active = self
        self._watch = Stopwatch(self._clock) if self._clock is not None else Stopwatch()
        self._step_start = self._watch.start
        try:
            self._patch(torch.nn.Module, "__call__", self._call)
            self._hook(register_optimizer_step_pre_hook(self._optimizer_pre))
            # Registered before the step counter's post hook, so that the optimizer phase ends before the step.
            self._hook(register_optimizer_step_post_hook(self._optimizer_post))
            self.steps.install()
            self._undo.append(self.steps.uninstall)
            self._patch(torch.autograd, "backward", self._backward)
            self._patch(_BaseDataLoaderIter, "__next__", self._data)
            for name in ("to", "cuda", "cpu"):
                self._patch(Tensor, name, lambda real, name=name: self._move(real, name))
            self._patch(Tensor, "copy_", self._copy_into)
            for name in _READS:
                self._patch(Tensor, name, self._read)
            self._patch(torch.cuda, "synchronize", self._synchronize)
        except BaseException:
            self._uninstall()
            raise
        self._next_step(0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self._uninstall()
        return isinstance(exc, StopProfile) and exc.owner is self

    def _uninstall(self) -> None:
        global _active
        try:
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self._counter = None
            self._stop_device_profile()
        finally:
            while self._undo:
                self._undo.pop()()
            with _active_lock:
                if _active is self:
                    _active = None

    def report(self) -> ProfileReport:
        """What was measured so far: complete steps only."""
        steps = tuple(self._done)
        device = self.device or self._model_device or torch.device("cpu")
        steady = [s for s in steps if not s.warmup]
        verdict = None
        if steady:
            seconds, wall = mean_seconds(steady)
            syncs = sum(s.syncs for s in steady) / len(steady)
            verdict = judge(
                seconds, wall, ops=self._ops, syncs=syncs, device=self.device_times, loader_workers=self._workers
            )
        unseen = list(UNSEEN)
        if device.type == "cpu":
            unseen.append(
                "what would wait on a GPU: on the CPU nothing waits for a device, so syncs and copies cost nothing "
                "here (`tangtoc audit SCRIPT` lists the lines that would sync or copy on a GPU)"
            )
        if device.type == "cuda" and self.device_times is None:
            unseen.append(self._device_error)
        if not self.warmup:
            unseen.append("the number of operations per step (it is counted in the last warm-up step; --warmup 0)")
        machine = _machine(device)
        return ProfileReport(
            str(device),
            machine,
            self._source,
            steps,
            verdict,
            self.device_times,
            self.stopped,
            self._ops,
            self.steps.other_thread_steps,
            tuple(unseen),
            _notes(machine),
        )


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    """The total length of the union of ``(start, end)`` intervals: kernels on several streams overlap."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def _machine(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "name": name,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def _notes(machine: dict[str, Any]) -> tuple[str, ...]:
    """What may have skewed the times: other work on the machine (its load above its cores while profiling)."""
    load, cores = machine["load_average_1min"], machine["cpu_cores"]
    if load is None or not cores or load <= cores:
        return ()
    threads = machine["torch_threads"]
    spin = (
        f"; with {threads} torch threads, each operation also waits for its threads to be scheduled (rerun with "
        "OMP_NUM_THREADS=1 to compare)"
        if threads > 1
        else ""
    )
    return (
        f"this machine was busy with other work (load average {load:.1f} on {cores} cores): host times include "
        f"waiting for a CPU{spin}",
    )


def profile(
    steps: int | None = None,
    warmup: int = 2,
    device: DeviceLike | None = None,
    clock: Callable[[], float] | None = None,
) -> Profile:
    """Split each training step's wall time into phases and say what bounds the step.

    Use it as a context manager; the report is ready after (or during) the block::

        with tt.profile(steps=20) as p:
            train()                        # stops cleanly after 2 warm-up + 20 timed steps
        print(p.report())                  # phases per step, the verdict, the first change to make

    Args:
        steps: time this many steps after the warm-up, then stop (raising :class:`StopProfile`, which the block
            swallows); ``None`` to time until the block ends. Steps end at each ``step()`` of the first optimizer
            that steps, or at each :func:`~tangtoc.diagnose.mark_step` once called; without either, where each
            ``backward()`` after the first begins.
        warmup: steps run first and left out of the verdict (allocations, cuDNN's choices, lazy set-up); the last
            one counts the aten operations (which costs per operation, hence not timed). ``0``: no count.
        device: where the model computes. Default: the device of the optimizer's parameters.
        clock: seconds now, for tests (default: the host clock of :mod:`tangtoc.clock`).

    What it costs while active: a Python call per module call, per ``optimizer.step()`` and per copy or read
    between devices; nothing per aten operation outside the counting step. On CUDA, :data:`DEVICE_STEPS` more
    steps run after the timed ones under PyTorch's profiler. Only the thread that enters the block is timed.
    """
    return Profile(steps, warmup, device, clock)

"""``device_guard``: name the module, the tensor and the fix when a step mixes devices or dtypes.

Three parts, installed only while the guard is active and removed on every exit path:

* **module boundaries** — a forward pre-hook on every submodule compares the module's inputs (named by
  the parameters of its ``forward``) with the module's own parameters and buffers. It only *observes*: plain
  PyTorch runs a module whose input is elsewhere when the module handles it (a Hugging Face model moves
  ``labels`` to the logits' device; ``pack_padded_sequence`` needs its ``lengths`` on the CPU), so such an input
  is recorded (:attr:`DeviceGuard.off_device_inputs`), not refused. If an operation then does mix it, the error
  is the module's: "`model` (TokenClassifier) got `token_ids` on cpu, but its parameters are on cuda:0".
* **operations** — a :class:`~torch.overrides.TorchFunctionMode` checks the tensors of every torch call
  before it runs; only a call that actually mixes devices is an error. It catches what no module boundary
  shows: a tensor created inside ``forward`` without ``device=`` (named by the line and the module whose
  forward created it), a plain tensor attribute, a loss function's class weights. On ``meta`` several kernels
  (matmul, linear, embedding, conv) accept CPU operands without an error, so waiting for PyTorch's own error
  would miss them. What PyTorch accepts is let through: 0-d CPU tensors (scalars), CPU indices, CPU lengths
  of packed sequences and CTC, and slice assignment (a copy) from any device.
* **dtypes** — when PyTorch refuses two dtypes in one call ("mat1 and mat2 must have the same dtype"), the
  float64 tensor NumPy handed out is named with where it came from (:mod:`tangtoc.diagnose.guard_dtype`).

This module decides *when* something is wrong; :mod:`tangtoc.diagnose.guard_naming` names the tensors and
:mod:`tangtoc.diagnose.guard_messages` words the errors.

The operation layer is a TorchFunctionMode rather than a TorchDispatchMode: it sees the call the user
wrote (``F.embedding(ids, weight)``, whose argument names are user terms) instead of the aten ops it
decomposes into, and it is the cheaper of the two (benchmarks/guard_overhead.py times both, empty, next to
the guard).
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from tangtoc.diagnose.calls import (
    CPU_LENGTHS,
    CREATION_FUNCTIONS,
    INDEX_ARGS,
    INDEXING,
    MOVES,
    call_tensors,
    forward_args,
    func_name,
    input_tensors,
    named_args,
    two_devices,
)
from tangtoc.diagnose.frames import user_location
from tangtoc.diagnose.guard_dtype import dtype_mismatch
from tangtoc.diagnose.guard_messages import call_error, input_error, optimizer_error, spread_error
from tangtoc.diagnose.guard_naming import Birth, Frame, Namer
from tangtoc.diagnose.mismatch import (
    PASS_THE_OPTIMIZER,
    expect_type,
    is_cpu_scalar,
    optimizer_state_findings,
    preferred_device,
)
from tangtoc.diagnose.wordings import parse_device_error
from tangtoc.errors import DtypeMismatchError, GuardError

Tensor = torch.Tensor


# Creation functions: their tensor arguments are data to copy, and the guard records who made each result, where.
_FACTORIES: frozenset[Any] = frozenset(CREATION_FUNCTIONS)
_UNCHECKED = MOVES | _FACTORIES  # calls whose tensors may legitimately sit on several devices
# Packing keeps `lengths` and `batch_sizes` on the CPU by design (pack_padded_sequence refuses them elsewhere).
_CPU_LENGTHS = CPU_LENGTHS | {torch._VF._pack_padded_sequence, torch._VF._pad_packed_sequence}


@dataclass(frozen=True, slots=True)
class OffDeviceInput:
    """An input a guarded module received on another device than its own parameters and buffers.

    Legal in plain PyTorch, and common: a Hugging Face model moves ``labels`` to the logits' device itself; a
    module that packs sequences needs its ``lengths`` on the CPU. So the guard records it (``calls``: how many
    module calls saw it) instead of refusing it; only an operation that then mixes devices is an error, and that
    error names the input.
    """

    module: str
    input: str
    found: str
    expected: str
    calls: int


class _OpMode(TorchFunctionMode):
    """Checks every torch call's tensors for a device mix before it runs; records where tensors are created."""

    def __init__(self, guard: DeviceGuard) -> None:
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        # The hot path: one tensor alone (a method call, an attribute read) cannot mix devices.
        several = len(args) > 1 or kwargs or (args and type(args[0]) in (list, tuple))
        # A module-level set, not an attribute of the mode: dynamo (torch.compile) fails to build its guards when
        # a mode's handler tests membership in a set held by the mode (torch 2.13).
        if several and func not in _UNCHECKED and two_devices(args, kwargs):
            _check_call(self.guard, func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except RuntimeError as error:
            _name_failure(self.guard, func, args, kwargs, error)
            raise
        if func in _FACTORIES and isinstance(out, Tensor):
            explicit = "device" in kwargs and kwargs["device"] is not None
            _note_birth(self.guard, out, func, explicit)
        return out


class DeviceGuard(contextlib.ContextDecorator):
    """The context manager and decorator returned by :func:`device_guard`."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer | None,
        allow: Iterable[Callable[..., Any]],
    ) -> None:
        self.modules = modules
        self.optimizer = optimizer
        self.allow = frozenset(allow)
        self._depth = 0
        self._paths: dict[nn.Module, str] = {}
        self._code: dict[nn.Module, str] = {}  # how the user's code reaches each module: model.layers[0]
        self._dotted: dict[nn.Module, str] = {}  # its dotted name as check_devices gives it ("" for the model)
        self._roots: set[nn.Module] = set()
        self._handles: list[Any] = []
        self._mode: _OpMode | None = None
        self._local = threading.local()
        self._births: dict[int, tuple[weakref.ref[Tensor], Birth]] = {}
        self._off: Counter[tuple[str, str, str, str]] = Counter()  # (module, input, found, expected) -> calls
        self._namer = Namer(modules, self._births, self._dotted, self._stack)

    # ---------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> DeviceGuard:
        self._depth += 1
        if self._depth > 1:  # nested use of the same guard (a guarded function calling another): one install
            return self
        try:
            for prefix, root in self.modules.items():
                self._roots.add(root)
                for name, module in root.named_modules(prefix=prefix):
                    self._paths.setdefault(module, name or "model")
                    self._dotted.setdefault(module, name)
                    code = name if prefix else f"model.{name}" if name else "model"
                    self._code.setdefault(module, re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", code))
                    self._handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
                    self._handles.append(module.register_forward_hook(self._post_hook, always_call=True))
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._optimizer_hook))
            self._mode = _OpMode(self)
            self._mode.__enter__()
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._uninstall()

    def _uninstall(self) -> None:
        self._depth = 0
        try:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
        finally:
            self._mode = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._paths.clear()
            self._code.clear()
            self._dotted.clear()
            self._roots.clear()
            self._births.clear()
            self._local.__dict__.clear()

    # ------------------------------------------------------------------------------------------ module layer

    def _stack(self) -> list[Frame]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Observes, never raises: plain PyTorch accepts a module whose inputs or own tensors span devices as long as
        # no operation mixes them (an HF model moves `labels` itself; RNN `lengths` belong on the CPU). What it
        # sees is kept on the frame, so that the operation layer's error, if one comes, names this module.
        frame = Frame(module, self._paths[module], args, kwargs)
        self._stack().append(frame)
        own = [(n, t) for n, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
        own_devices = {t.device for _, t in own}
        if len(own_devices) > 1:
            # A 0-d CPU buffer is a scalar, legal next to any device: it neither votes for home nor spreads.
            home = preferred_device(Counter(t.device for _, t in own if not is_cpu_scalar(t))) or own[0][1].device
            frame.home, frame.own = home, tuple(own)
            frame.spread = tuple((n, t) for n, t in own if t.device != home and not is_cpu_scalar(t))
        elif own_devices:
            home = own[0][1].device
        elif module in self._roots:
            home = preferred_device(Counter(t.device for t in (*module.parameters(), *module.buffers())))
            if home is None:
                return
        else:
            return  # a container: its children check their own inputs
        for value in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(value, Tensor):
                if value.device != home and not is_cpu_scalar(value):
                    self._suspect(frame, home, own)
                    return
                continue
            if any(t.device != home and not is_cpu_scalar(t) for _, t in input_tensors(value, "")):
                self._suspect(frame, home, own)
                return

    def _suspect(self, frame: Frame, home: torch.device, own: list[tuple[str, Tensor]]) -> None:
        """Keep the inputs of ``frame`` that are off ``home`` on the frame, and count them in the record."""
        frame.home, frame.own, frame.where = home, tuple(own), user_location()
        frame.suspects = tuple(
            (name, t)
            for arg, value in forward_args(frame.module, frame.args, frame.kwargs)
            for name, t in input_tensors(value, arg)
            if t.device != home and not is_cpu_scalar(t)
        )
        for name, t in frame.suspects:
            self._off[(frame.path, name, str(t.device), str(home))] += 1

    @property
    def off_device_inputs(self) -> tuple[OffDeviceInput, ...]:
        """Inputs seen on another device than their module's own tensors, since the guard was created.

        A record, not a warning: plain PyTorch runs such code when the module handles the input itself, and a
        warning on every step of working code would be noise that users learn to ignore (or, under
        ``-W error``, a refusal). Read it when a step is slower than expected: an input the module moves itself
        (``labels.to(logits.device)``) is copied inside the forward on every call; one the module needs where it
        is (``lengths`` on the CPU) is as it should be.
        """
        return tuple(OffDeviceInput(*key, calls=n) for key, n in self._off.items())

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack = self._stack()
        if stack and stack[-1].module is module:
            stack.pop()

    def _optimizer_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for finding in optimizer_state_findings(optimizer, self._namer.names()):
            raise optimizer_error(finding)

    # -------------------------------------------------------------------------------------- operation layer

    def note_birth(self, t: Tensor, func: Any, explicit_device: bool) -> None:
        """Remember who created ``t`` (called by the operation layer for every creation function)."""
        stack = self._stack()
        birth = Birth(
            f"torch.{getattr(func, '__name__', func)}",
            user_location(),
            stack[-1].path if stack else None,
            explicit_device,
        )
        key = id(t)
        births = self._births

        def forget(ref: weakref.ref[Tensor]) -> None:
            if births.get(key, (None,))[0] is ref:
                del births[key]

        births[key] = (weakref.ref(t, forget), birth)
        if stack and t.is_floating_point():  # kept after `t` dies: the source of a dtype it spreads (float64 + x)
            frame = stack[-1]
            frame.made = frame.made or {}
            frame.made[t.dtype] = birth

    def check_call(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Raise :class:`DeviceMismatchError` when the tensors of ``func(*args, **kwargs)`` are on two devices.

        Called only once a quick scan saw two devices; this applies ``allow`` and the rules for indexing and CPU
        lengths.
        """
        if func in self.allow:
            return
        named = [
            (path, t)
            for arg, value in named_args(func, args, kwargs)
            for path, t in call_tensors(value, arg)
            if not is_cpu_scalar(t)
        ]
        if func in INDEXING:  # x[idx] takes CPU indices whatever the device of x
            named = [(p, t) for p, t in named if not (p.startswith(INDEX_ARGS) and t.device.type == "cpu")]
            if func is Tensor.__setitem__ and _is_basic_index(args[1]):
                # x[0, :n] = v with ints and slices only is x[0, :n].copy_(v), which takes v from any device.
                named = [(p, t) for p, t in named if not p.startswith("v")]
        elif func in _CPU_LENGTHS:
            named = [(p, t) for p, t in named if t.device.type != "cpu" or t.is_floating_point()]
        devices = Counter(t.device for _, t in named)
        if len(devices) < 2:
            return
        stack = self._stack()
        self._blame_module(stack, named)
        expected = self._home_of(stack[-1].module) if stack else None
        if expected not in devices:
            expected = preferred_device(devices)
        raise call_error(func_name(func), named, expected, stack, self._namer)

    def name_failure(self, func: Any, args: tuple, kwargs: dict, error: RuntimeError) -> None:
        """Raise a :class:`GuardError` from ``error`` when it is one the guard can name; else return (the handler
        re-raises ``error``). Called only when ``func`` raised.

        A dtype refusal names the odd tensor. A device error the operation layer did not foresee (a function in
        ``allow``, tensors nested deeper than one list) is blamed on the outermost running module that received
        an input on another device, as the module layer did before it stopped refusing such inputs by itself.
        """
        if isinstance(error, GuardError):  # named already, by a guard entered inside this one (modes nest)
            return
        stack = self._stack()
        if parse_device_error(error) is not None:
            for frame in stack:
                if frame.spread:
                    raise spread_error(frame) from error
                if frame.suspects:
                    raise input_error(frame, self._namer, self._code[frame.module]) from error
            return
        named = [(p, t) for arg, value in named_args(func, args, kwargs) for p, t in call_tensors(value, arg)]
        dtypes = Counter(p.dtype for root in self._roots for p in root.parameters() if p.is_floating_point())
        found = dtype_mismatch(
            error,
            func_name(func),
            named,
            model_dtype=dtypes.most_common(1)[0][0] if dtypes else None,
            origin=self._namer.origin,
            module=(stack[-1].path, type(stack[-1].module).__name__) if stack else None,
            where=user_location(),
        )
        if found is not None:
            raise DtypeMismatchError(
                found.message, module=found.module, culprits=found.culprits, found=found.found, expected=found.expected
            ) from error

    def _blame_module(self, stack: list[Frame], named: list[tuple[str, Tensor]]) -> None:
        """Raise the error of the outermost running module whose off-device own tensor or input is in this call.

        Outermost first: the module the user called names the input as the user passed it (`token_ids` of the
        model rather than `input` of its Embedding).
        """
        ids = {id(t) for _, t in named}
        for frame in stack:
            if any(id(t) in ids for _, t in frame.spread):
                raise spread_error(frame)
            if any(id(t) in ids for _, t in frame.suspects):
                raise input_error(frame, self._namer, self._code[frame.module])

    def _home_of(self, module: nn.Module) -> torch.device | None:
        own = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
        if own:
            return own[0].device
        return preferred_device(Counter(t.device for root in self._roots for t in root.parameters()))


def _is_basic_index(index: Any) -> bool:
    """Whether ``x[index]`` is a view (ints, slices, ``None``, ``...``), not advanced indexing (tensors, lists)."""
    items = index if isinstance(index, tuple) else (index,)  # x[i, j] passes a tuple, x[i] the item alone
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


# Never traced by torch.compile (they read the Python stack, and raise): under compile they run eagerly.
_check_call = torch.compiler.disable(DeviceGuard.check_call)
_name_failure = torch.compiler.disable(DeviceGuard.name_failure)
_note_birth = torch.compiler.disable(DeviceGuard.note_birth)


def device_guard(
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    allow: Iterable[Callable[..., Any]] = (),
    **others: nn.Module,
) -> DeviceGuard:
    """Check devices at every torch operation and name what mixes them; name the odd tensor of a dtype error.

    A call that mixes devices raises :class:`DeviceMismatchError` before the kernel runs, naming the module, the
    tensor (by its ``forward`` parameter, dotted path, or the line that created it) and the fix. A module input on
    another device than the module is not an error by itself (plain PyTorch runs it when the module moves it, or
    needs it there): it is recorded in :attr:`DeviceGuard.off_device_inputs`. When PyTorch refuses two dtypes
    ("mat1 and mat2 must have the same dtype"), :class:`DtypeMismatchError` names the odd tensor, where it came
    from and the fix. Both subclass ``RuntimeError``.

    Use it as a context manager around a training step, or as a decorator::

        with tt.device_guard(model, optimizer=opt, criterion=loss_fn):
            loss = loss_fn(model(x), y); loss.backward(); opt.step()

        @tt.device_guard(model)
        def step(batch): ...

    Args:
        model: every submodule gets a forward pre-hook comparing its inputs with its own parameters and
            buffers, so that an error names the module and the input; tensors are named by their dotted path.
        optimizer: before each ``step()``, its state is compared with each parameter's device.
        allow: torch functions the operation layer must not check (for a function that mixes devices on
            purpose and is not already known to: ``.to``, ``copy_``, indexing with CPU indices, RNN lengths).
        others: more modules that take part, by name (``criterion=loss_fn``), checked like the model.

    A model, ``others`` or optimizer of the wrong type raises a ``TypeError`` here, when the guard is made.

    Hooks and the operation mode are removed on every exit path, errors included. Module inputs are recorded
    on every thread, operations checked only on the thread that entered the guard. ``torch.compile``d
    modules are checked too (dynamo traces the operation layer or runs it eagerly). What a C++ extension
    does inside is not seen, only the torch calls that reach Python; submodules added while the guard is
    active are not hooked until it is entered again.
    """
    expect_type(
        "device_guard",
        "model",
        model,
        nn.Module,
        "pass the model whose forward you run, e.g. `with tt.device_guard(model): model(x)`; batches need no "
        "passing, they are checked as they reach it.",
        optional=False,
    )
    for name, module in others.items():
        expect_type(
            "device_guard",
            name,
            module,
            nn.Module,
            f"pass modules only ({name}=nn.CrossEntropyLoss()); functions and tensors need no passing, every torch "
            "operation inside the guard is checked.",
            optional=False,
        )
    expect_type("device_guard", "optimizer", optimizer, torch.optim.Optimizer, PASS_THE_OPTIMIZER)
    return DeviceGuard({"": model, **others}, optimizer, allow)

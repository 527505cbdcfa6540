"""The two layers that see an audited script's events, and what each call is: a sync, a copy, a creation.

* :class:`Calls`, a :class:`~torch.overrides.TorchFunctionMode`, sees the Python-level calls: ``.item()``,
  ``.tolist()``, ``bool(t)``, ``print(t)``/f-strings, ``.cpu()``, ``.numpy()``, ``.to()``, boolean-mask
  indexing, ``nonzero``/``unique``, the creation functions (``torch.zeros``...) and ``backward()``. On the CPU
  some of these never reach the aten dispatcher (``.tolist()`` does not, nor a ``.to()`` that has nothing to
  move), so this layer is also what reports, on a CPU-only machine, what *would* synchronize or copy on a GPU.
* :class:`Kernels`, a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, sees the aten operations
  underneath: real cross-device copies and synchronizing kernels reached from C++ or inside library calls,
  and every operation's inputs and outputs, through which device intent and creation sites propagate
  (:mod:`tangtoc.diagnose.intent`).

An event recorded by the first layer marks its own call as covered, so the second does not count it twice.
A call made by a library on the user's behalf (``nn.TransformerEncoder`` reading its mask, accelerate moving a
batch) is reported at the user's line, naming the library function.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tangtoc.diagnose.audit_report import EventKey, Place
from tangtoc.diagnose.calls import CREATION_FUNCTIONS
from tangtoc.diagnose.frames import Location, caller, is_library_file, library_function, user_location
from tangtoc.diagnose.intent import Intent, names_cpu, tensors_in

Tensor = torch.Tensor


class Recorder(Protocol):
    """What the two layers report to: an :class:`~tangtoc.diagnose.audit.Audit`, or a
    :func:`~tangtoc.diagnose.nosync.no_sync` guard."""

    intent: Intent
    stopped: bool  # once true, the layers only run the calls
    covered: int  # > 0 while a call that the Python layer recorded runs: the aten layer does not count it again

    def record(self, key: EventKey, tensor: Tensor | None) -> None: ...

    def meet(self, sites: frozenset[EventKey], moved: bool, data_only: bool = False) -> None: ...

    def backward(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> Any: ...


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
# Creation from host data: its copy to the device is the finding (at the `.to` line), not the creation.
CONVERTERS = frozenset({"torch.tensor", "torch.as_tensor", "torch.from_numpy"})
_DATA_GET = torch._C.TensorBase.data.__get__
_MODULE_FILE = nn.modules.module.__file__
_TORCH_DATA_DIR = torch.utils.data.__path__[0]
# aten operations that take host tensors next to device ones by design: lengths and batch sizes of packed
# sequences and CTC (see calls.CPU_LENGTHS for their Python names).
_HOST_BY_DESIGN = frozenset(
    {
        aten._pack_padded_sequence,
        aten._pad_packed_sequence,
        aten.lstm,
        aten.gru,
        aten.rnn_tanh,
        aten.rnn_relu,
        aten.ctc_loss,
        aten._ctc_loss,
    }
)
_MUTATES: dict[Any, bool] = {}  # aten overload -> whether it writes into its first argument (its schema, cached)
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
# Kernels that sync inside a library where no Python call shows it, inferred on a CPU run from the tensor's device
# intent: nn.TransformerEncoder's fast path (eval or no_grad, with src_key_padding_mask) reads the mask on the host.
# Only these: inside C++ ops intent is not always right (an LSTM's PackedSequence.batch_sizes stays on the host by
# design, and reading it is no sync), and the Python layer covers the reads of the user's own code.
_INFERRED_SYNC_ATEN = {
    aten._nested_tensor_from_mask_left_aligned: "padding mask to a nested tensor",
    aten._nested_tensor_from_mask: "padding mask to a nested tensor",
}
_SYNC_ATEN.update(_INFERRED_SYNC_ATEN)


def _same_place(target: torch.device, source: torch.device) -> bool:
    return target.type == source.type and (target.index is None or target.index == source.index)


def _copy(
    op: str, src: Tensor, dst: torch.device, non_blocking: bool, where: Location | None, via: str | None = None
) -> EventKey | None:
    """A real copy of ``src`` to ``dst`` (``None`` when it is already there, or empty: nothing moves)."""
    if _same_place(dst, src.device) or not src.numel():
        return None
    pinned = src.is_pinned() if src.device.type == "cpu" else None
    return EventKey("copy", op, where, False, src.device.type, dst.type, pinned, non_blocking, via=via)


def _would_copy(
    op: str, t: Tensor, to_host: bool, where: Location | None, non_blocking: bool, **fields: Any
) -> EventKey:
    """A copy that happens only on a GPU: host to device, or (``to_host``) back."""
    way = ("device", "cpu") if to_host else ("cpu", "device")
    return EventKey("copy", op, where, True, *way, t.is_pinned(), non_blocking, **fields)


def _non_blocking(args: tuple, kwargs: dict, position: int) -> bool:
    return bool(args[position] if len(args) > position else kwargs.get("non_blocking", False))


def _has_bool_mask(index: Any) -> bool:
    """Whether an index (``x[mask]``, ``x[mask, 0]``) holds a boolean tensor: its result size depends on the data."""
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


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


# Functions that bring tensors to the host by name: a `.to(device)` inside them is a move to the CPU.
_HOST_FUNCTIONS = frozenset({"cpu", "to_cpu", "to_numpy", "fetch", "numpy", "tolist"})


def _host_named(frame: FrameType | None, where: Location | None) -> bool:
    """Whether a move or creation targets the CPU by name rather than through a ``device`` that resolved to it.

    Said by the line that made the call (``x.cpu()``, ``"cpu"``): the user's, or the library's own line when a
    library made it; or by the name of a library function it ran in (``tt.to_cpu``, ``tt.fetch``).
    """
    site = caller(frame)
    if site is None or not is_library_file(site.f_code.co_filename):
        return names_cpu(where)
    if names_cpu(Location(site.f_code.co_filename, site.f_lineno, site.f_code.co_name)):
        return True
    f: FrameType | None = site
    while f is not None and is_library_file(f.f_code.co_filename):
        if f.f_code.co_name in _HOST_FUNCTIONS:
            return True
        f = f.f_back
    return False


def _aliasable(t: Tensor) -> bool:
    """Whether a view can stand in for ``t``'s copy: a plain dense tensor that is not an autograd leaf (a view of
    a leaf would not receive its ``.grad``)."""
    dense = type(t) is Tensor and t.layout is torch.strided and not t.is_quantized
    return dense and not (t.requires_grad and t.is_leaf)


def creation_place(frame: FrameType | None) -> Place:
    """Where user code creating a tensor runs: data loading (a Dataset's ``__getitem__``, a collate function run
    by a DataLoader), a module's ``__init__``, or the training code itself."""
    if frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get("self") if code.co_argcount else None
        if code.co_name in ("__getitem__", "__getitems__") and isinstance(owner, torch.utils.data.Dataset):
            return "data"
        if code.co_name == "__init__" and isinstance(owner, nn.Module):
            return "init"
        outer = frame.f_back
        while outer is not None:
            if outer.f_code.co_filename.startswith(_TORCH_DATA_DIR):
                return "data"
            outer = outer.f_back
    return "step"


class Calls(TorchFunctionMode):
    """The Python-level layer: syncing methods, moves, creation functions, ``backward()``."""

    def __init__(self, audit: Recorder) -> None:
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        a = self.audit
        if a.stopped:
            return func(*args, **kwargs)
        if func is Tensor.backward:
            return a.backward(func, args, kwargs, sys._getframe(1))
        if func in _FACTORIES:
            return self._create(func, args, kwargs, sys._getframe(1))
        if func in _MOVES:
            return self._move(func, args, kwargs, sys._getframe(1))
        if func is _DATA_GET:  # `p.data` is the parameter's own memory: where `p` lives
            out = func(*args, **kwargs)
            if a.intent.on_device(args[0]):
                a.intent.mark(out)
            return out
        event = self._read(func, args, kwargs, sys._getframe(1))
        if event is None:
            return func(*args, **kwargs)
        a.record(event, args[0])
        a.covered += 1
        try:
            return func(*args, **kwargs)
        finally:
            a.covered -= 1

    def _create(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> Any:
        a = self.audit
        where = user_location(frame)
        device = kwargs.get("device")
        to_device = device is not None and not _host_named(frame, where)  # `device=device`: the GPU in a GPU run
        copy = self._host_data_copy(func, args, device, where, frame) if to_device else None
        if copy is None:
            out = func(*args, **kwargs)
        else:
            a.covered += 1
            try:
                out = func(*args, **kwargs)
            finally:
                a.covered -= 1
            if out.numel():  # `torch.tensor([], device=device)` (an empty cache) moves nothing
                a.record(copy, out)
        if not isinstance(out, Tensor) or out.device.type != "cpu":
            return out
        site = caller(frame)
        if to_device:
            a.intent.mark(out)
        elif site is not None and not is_library_file(site.f_code.co_filename):
            key = EventKey(
                "cpu-tensor",
                _FACTORIES[func],
                where,
                True,
                explicit_device=device is not None,
                place=creation_place(site),
            )
            a.record(key, out)
            a.intent.born(out, key)
        return out

    def _host_data_copy(
        self, func: Any, args: tuple, device: Any, where: Location | None, frame: FrameType
    ) -> EventKey | None:
        """The copy that ``torch.tensor(data, device=device)`` makes of host data (a list, an array, a host tensor)."""
        op = _FACTORIES[func]
        if op not in CONVERTERS or not args or (isinstance(args[0], Tensor) and self.audit.intent.on_device(args[0])):
            return None
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        on_cpu = target.type == "cpu"
        via = library_function(caller(frame))
        return EventKey(
            "copy",
            op,
            where,
            on_cpu,
            "cpu",
            "device" if on_cpu else target.type,
            False,
            False,
            via=via,
            scope="tracked" if on_cpu else "both",
        )

    def _move(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> Any:
        a = self.audit
        t = args[0]
        target, non_blocking = _target(func, args, kwargs)
        if target is None:  # a dtype-only `.to()`: the dispatch layer carries intent through it
            return func(*args, **kwargs)
        label = _MOVES[func]
        where = user_location(frame)
        via = library_function(caller(frame))
        events = []
        # Back to the host: a real copy from a device, `.cpu()`, or a line that names the CPU. A move to a
        # `device` that resolved to the CPU is a move to the device.
        to_host = target.type == "cpu" and (t.device.type != "cpu" or func is Tensor.cpu or _host_named(frame, where))
        real = _copy(label, t, target, non_blocking, where, via)
        if real is not None:
            events.append(real)
        elif t.device.type == "cpu" and t.numel():  # nothing moves on this machine: what would on a GPU?
            on_device = a.intent.on_device(t)
            if on_device == to_host:
                events.append(_would_copy(label, t, to_host, where, non_blocking, via=via, scope="tracked"))
            if via is None:  # before any device is named, every move of the user's is one
                events.append(_would_copy(label, t, func is Tensor.cpu, where, non_blocking, scope="fallback"))
        if not to_host:
            # A library moving what it derived (pack_padded_sequence's sort order) is its own copy, reported as
            # such; it confirms only the data loading it moves for the user (accelerate, tangtoc: the batch).
            a.meet(a.intent.sites(t), moved=True, data_only=via is not None and not via.startswith("tangtoc."))
        for event in dict.fromkeys(events):
            a.record(event, t)
        a.covered += 1
        try:
            out = func(*args, **kwargs)
        finally:
            a.covered -= 1
        site = caller(frame)
        of_module = site is not None and site.f_code.co_filename == _MODULE_FILE  # model.to() sets its tensors' data
        if out is t and t.device.type == "cpu" and not of_module and _aliasable(t):
            # On a GPU a move returns a new tensor and `t` stays where it was; here it returns `t` itself. A view
            # stands in for the copy, so that `labels.to(device)` copies again next step, and `x.cpu().item()`
            # is not a second sync.
            out = torch.ops.aten.alias.default(t)
        if target.type == "cpu" and not to_host:
            a.intent.mark(out)
        elif to_host and (out is not t or of_module):
            a.intent.forget(out)
        return out

    def _read(self, func: Any, args: tuple, kwargs: dict, frame: FrameType) -> EventKey | None:
        """The sync or copy that ``func(*args)`` is; ``None`` if it is neither (or not one on a GPU either)."""
        if not args or not isinstance(args[0], Tensor):
            return None
        t = args[0]
        label = _SYNC_METHODS.get(func)
        if label is None and func in _MASK_INDEX and len(args) > 1 and _has_bool_mask(args[1]):
            label = _MASK_INDEX[func]
        if label is None and func in _REPEAT and "output_size" not in kwargs:
            label = "repeat_interleave"
        if label is not None:
            via = library_function(caller(frame))
            if t.device.type != "cpu":
                return EventKey("sync", label, user_location(frame), False, via=via)
            if self.audit.intent.on_device(t):
                return EventKey("sync", label, user_location(frame), True, via=via, scope="tracked" if via else "both")
            # A host tensor's value: on a GPU it stays on the host. Only the fallback (no device named) lists it.
            return None if via else EventKey("sync", label, user_location(frame), True, scope="fallback")
        if func is Tensor.copy_ and len(args) > 1 and isinstance(args[1], Tensor):
            src, non_blocking = args[1], _non_blocking(args, kwargs, 2)
            where, via = user_location(frame), library_function(caller(frame))
            real = _copy(".copy_()", src, t.device, non_blocking, where, via)
            if real is not None or src.device.type != "cpu" or t.device.type != "cpu":
                return real
            into_device = self.audit.intent.on_device(t)
            if into_device == self.audit.intent.on_device(src):
                return None
            return _would_copy(".copy_()", src, not into_device, where, non_blocking, via=via, scope="tracked")
        return None


class Kernels(TorchDispatchMode):
    """The aten layer: real copies and syncing kernels the Python layer did not cover, and intent propagation."""

    def __init__(self, audit: Recorder) -> None:
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        a = self.audit
        if a.stopped:
            return func(*args, **kwargs)
        if not a.covered:
            self._observe(func, args, kwargs)
        out = func(*args, **kwargs)
        mutates = _MUTATES.get(func)
        if mutates is None:
            mutates = _MUTATES[func] = func._schema.is_mutable
        met = a.intent.propagate(list(tensors_in((*args, *kwargs.values()))), list(tensors_in((out,))), mutates)
        if met and func.overloadpacket not in _HOST_BY_DESIGN:
            a.meet(met, moved=func.overloadpacket is aten.copy_)
        return out

    def _observe(self, func: Any, args: tuple, kwargs: dict) -> None:
        a = self.audit
        packet = func.overloadpacket
        label = _SYNC_ATEN.get(packet)
        if label is not None and isinstance(args[0], Tensor) and args[0].device.type != "meta":
            if args[0].device.type != "cpu":
                a.record(EventKey("sync", label, user_location(), False), args[0])
                return
            if packet in _INFERRED_SYNC_ATEN and a.intent.on_device(args[0]):  # would sync on a GPU
                a.record(EventKey("sync", label, user_location(), True, scope="tracked"), args[0])
                return
        copy = None
        if packet is aten._to_copy and kwargs.get("device") is not None:
            copy = _copy("aten._to_copy", args[0], kwargs["device"], _non_blocking((), kwargs, 0), user_location())
        elif packet is aten.copy_:
            copy = _copy("aten.copy_", args[1], args[0].device, _non_blocking(args, kwargs, 2), user_location())
        if copy is not None:
            a.record(copy, args[1] if packet is aten.copy_ else args[0])


def enter_layers(recorder: Recorder, entered: list[Any]) -> None:
    """Enter the Python layer, then the aten layer, reporting to ``recorder``; each goes into ``entered`` once it is
    in, so that :func:`leave_layers` leaves exactly those, also after a failure part-way."""
    for mode in (Calls(recorder), Kernels(recorder)):
        mode.__enter__()
        entered.append(mode)


def leave_layers(entered: list[Any]) -> None:
    """Leave the layers in ``entered``, innermost first, emptying it."""
    while entered:
        entered.pop().__exit__(None, None, None)

"""How the diagnoses read a torch call: its tensors, their names, and the calls that mix devices on purpose."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import get_testing_overrides

from tangtoc.move import named_tensors

Tensor = torch.Tensor

# Functions that create a tensor from nothing or from host data: without `device=` the result is born on the
# default device (the CPU), the classic stray tensor. The guard records who made each one; the audit reports
# those made inside a step.
CREATION_FUNCTIONS: tuple[Callable[..., torch.Tensor], ...] = (
    torch.tensor,
    torch.as_tensor,
    torch.from_numpy,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.randperm,
)
# Calls whose purpose is to move data or that only read another tensor's shape or type: mixing is their job.
MOVES: frozenset[Any] = frozenset(
    {
        Tensor.to,
        Tensor.cpu,
        Tensor.cuda,
        Tensor.copy_,
        Tensor.type_as,
        Tensor.new_tensor,
        Tensor.view_as,
        Tensor.reshape_as,
        Tensor.expand_as,
        Tensor.set_,
        torch._C.TensorBase.data.__set__,
        torch._has_compatible_shallow_copy_type,  # Module._apply (model.to) compares old and new parameters
    }
)
# Indexing takes CPU index tensors for a tensor on any device (only the indexed tensor and values must match).
INDEXING: frozenset[Any] = frozenset({Tensor.__getitem__, Tensor.__setitem__, Tensor.index_put_, torch.index_put})
INDEX_ARGS = ("idx", "k", "indices", "args[1]")  # the index argument of those, as their signatures name it
# Functions whose integer length/size arguments live on the CPU by design (PackedSequence.batch_sizes, CTC lengths).
CPU_LENGTHS: frozenset[Any] = frozenset(
    {torch._VF.lstm, torch._VF.gru, torch._VF.rnn_tanh, torch._VF.rnn_relu, torch.nn.functional.ctc_loss}
)
_signatures: dict[Any, inspect.Signature | None] = {}
_forward_signatures: dict[type, inspect.Signature | None] = {}


def call_tensors(value: Any, path: str) -> Iterator[tuple[str, Tensor]]:
    """Tensors in a call argument, one container level deep (torch.cat's list), with their paths."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, Tensor):
                yield f"{path}[{i}]", v


def two_devices(args: tuple, kwargs: dict) -> bool:
    """Whether a call's tensors (one container level deep) are on two devices, CPU scalars aside. Hot: plain loops."""
    first = None
    for value in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(value, Tensor):
            items: Any = (value,)
        elif type(value) in (list, tuple):
            items = value
        else:
            continue
        for t in items:
            if isinstance(t, Tensor):
                device = t.device
                if device.type == "cpu" and t.dim() == 0:
                    continue
                if first is None:
                    first = device
                elif device != first:
                    return True
    return False


def input_tensors(value: Any, path: str) -> Iterator[tuple[str, Tensor]]:
    """Tensors in a module input at any depth; a PackedSequence's ``batch_sizes`` stays on the CPU by design."""
    if isinstance(value, PackedSequence):
        yield f"{path}.data", value.data
    elif isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (list, tuple, dict)) or hasattr(value, "__dataclass_fields__"):
        yield from named_tensors(value, path)


def named_args(func: Any, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """``(name, value)`` for a call's arguments, named as in the function's signature where known."""
    if func not in _signatures:
        sample = get_testing_overrides().get(func)
        _signatures[func] = inspect.signature(sample) if sample else None
    sig = _signatures[func]
    if sig is not None:
        with contextlib.suppress(TypeError):
            return list(sig.bind(*args, **kwargs).arguments.items())
    return [*((f"args[{i}]", a) for i, a in enumerate(args)), *kwargs.items()]


def forward_args(module: nn.Module, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """``(name, value)`` for a module call's inputs, named as in its ``forward``."""
    cls = type(module)
    if cls not in _forward_signatures:
        try:
            _forward_signatures[cls] = inspect.signature(cls.forward)
        except (TypeError, ValueError):  # a forward implemented in C, or wrapped beyond recognition
            _forward_signatures[cls] = None
    sig = _forward_signatures[cls]
    if sig is not None:
        with contextlib.suppress(TypeError):
            return list(sig.bind(module, *args, **kwargs).arguments.items())[1:]  # [1:]: drop `self`
    return [*((f"args[{i}]", a) for i, a in enumerate(args)), *kwargs.items()]


def func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__qualname__", name).split(".")[0]
    return f"Tensor.{name}" if owner in ("TensorBase", "Tensor") else name

"""Move models and *any* batch between devices, and bring results back.

Seed 4.2: ``.to()`` works on tensors and modules only, not on Python lists, NumPy arrays or the
nested dicts, tuples and dataclasses real batches are made of. One walker (:mod:`tangtoc.walk`) serves
every function here; it rebuilds containers with their own types — ``defaultdict`` keeps its
factory (accelerate #4154 crashes on it), frozen dataclasses are copied field by field (Lightning
#10873 refuses them), namedtuples are rebuilt with ``type(x)(*items)``.

**NumPy rule.** Arrays and NumPy scalars of numeric or bool dtype become tensors of the *same*
dtype (``float64`` stays ``float64``, as ``torch.from_numpy`` does; pass ``dtype=`` to
:func:`as_tensor` to change it). Arrays of strings or objects are not numbers and pass through.
On the CPU the tensor shares the array's memory (no copy), except for read-only or negatively
strided arrays, which PyTorch cannot wrap and which are copied first. ``to_device(..., float_dtype=torch.float32)``
casts them (and every other floating tensor) on the way. Python lists of numbers are data, not tensors:
they stay lists (:func:`as_tensor` makes one tensor of them).

How containers and objects are walked, rebuilt or refused: :mod:`tangtoc.walk`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from tangtoc.device import DeviceLike, resolve, synchronize
from tangtoc.errors import MixedDevicesError
from tangtoc.walk import ARRAY, MODULE, NPSCALAR, NUMERIC_KINDS, RECORD, TENSOR, named_leaves, walk_batch

T = TypeVar("T")
NonBlocking = bool | Literal["auto"]


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor | None:
    """A CPU tensor for a numeric array (sharing memory where PyTorch can), ``None`` for non-numeric ones."""
    if arr.dtype.kind not in NUMERIC_KINDS:
        return None
    if arr.dtype.kind in "fc" and arr.dtype.itemsize > (8 if arr.dtype.kind == "f" else 16):
        raise TypeError(
            f"NumPy {arr.dtype} (long double) has no PyTorch dtype; convert it first, e.g. arr.astype(np.float64)."
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))  # torch only holds native byte order
    elif not arr.flags.writeable or any(s < 0 for s in arr.strides):
        arr = arr.copy()  # torch.from_numpy cannot wrap read-only or negatively strided buffers
    return torch.from_numpy(arr)


def _npscalar_to_tensor(x: np.generic) -> torch.Tensor | None:
    return _array_to_tensor(np.asarray(x)) if x.dtype.kind in NUMERIC_KINDS else None


def _move(
    obj: T,
    target: torch.device,
    non_blocking: NonBlocking,
    skip_keys: frozenset[str],
    detach: bool,
    float_dtype: torch.dtype | None = None,
) -> T:
    pending: set[torch.device] = set()  # devices we copied from without blocking, into host memory
    # Decided once per call, not per tensor: device.type builds a new string on every read, and this
    # function runs on every batch of a training loop (benchmarks/move_overhead.py).
    auto = non_blocking == "auto"
    to_cuda = target.type == "cuda"
    to_cpu = target.type == "cpu"
    to_meta = target.type == "meta"

    def tensor(t: torch.Tensor) -> torch.Tensor:
        if detach:
            t = t.detach()
        if t.device == target:
            return t
        if t.is_meta and not to_meta:
            raise ValueError(
                f"cannot copy a meta tensor (shape {tuple(t.shape)}, {t.dtype}) to {target}: meta tensors have no "
                "data. Create it on the target device instead, or materialise the module with `.to_empty(device=...)`."
            )
        if auto:
            # Only a pinned host buffer copied to CUDA gains from non_blocking and is safe without a sync.
            if to_cuda and t.is_cpu and t.is_pinned():
                return t.to(target, non_blocking=True)
            return t.to(target)
        if non_blocking and to_cpu and not t.is_cpu:
            pending.add(t.device)
        return t.to(target, non_blocking=non_blocking)

    if float_dtype is not None:
        # A wrapper, so the default path pays nothing for the opt-in (even `t.to(device, None)` costs
        # 0.4 µs more per tensor than `t.to(device)`). The cast runs first, on the source device: NumPy's
        # float64 then crosses to the accelerator at half the bytes. A pinned tensor's cast is not pinned.
        move = tensor

        def tensor(t: torch.Tensor) -> torch.Tensor:
            return move(t.to(float_dtype) if t.is_floating_point() and t.dtype != float_dtype else t)

    def leaf(x: Any, kind: int) -> Any:
        if kind == TENSOR:
            return tensor(x)
        if kind == MODULE:
            return x.to(target)
        if kind in (ARRAY, NPSCALAR):
            t = _array_to_tensor(x) if kind == ARRAY else _npscalar_to_tensor(x)
            return x if t is None else tensor(t)
        if kind == RECORD:  # an object's record of where its tensors live and of their dtype
            if isinstance(x, torch.device):
                return target
            return float_dtype if float_dtype is not None and x.is_floating_point else x
        try:  # anything else with a .to(), e.g. a TensorDict
            return x.to(target, non_blocking=non_blocking is True)
        except TypeError:
            return x.to(target)

    out = walk_batch(obj, leaf, skip_keys)
    for src in pending:
        # A non-blocking device->host copy is not complete when .to() returns: wait once per source
        # device, so the caller never reads a half-written buffer.
        synchronize(src)
    return out


def to_device(
    obj: T,
    device: DeviceLike | None,
    *,
    non_blocking: NonBlocking = "auto",
    skip_keys: tuple[str, ...] = (),
    float_dtype: torch.dtype | None = None,
) -> T:
    """Move ``obj`` — a tensor, module, NumPy array or any nest of them — to ``device``.

    Containers are rebuilt with their own types (dict, OrderedDict, defaultdict, list, tuple, namedtuple,
    set, dataclasses including frozen ones, transformers' ``ModelOutput``); ``UserDict`` mappings such as
    transformers' ``BatchEncoding`` and ``BatchFeature`` are copied with their other attributes, and their
    own ``.to`` (which would change the caller's object) is not called. Other objects that hold tensors
    (``SimpleNamespace``, transformers' caches) are copied attribute by attribute, or refused with a
    ``TypeError`` naming the tensors that would be left behind (the objects rule in the module docstring).
    Any other object with its own ``.to`` is moved by it; modules are moved in place and returned;
    strings, numbers, Python lists of numbers and ``None`` pass through (lists stay lists: use
    :func:`as_tensor` for one tensor). Iterators, cycles of containers and nesting past the recursion limit
    are refused with the path (the module docstring). Apart from modules and objects moved by their own
    ``.to``, the caller's containers and objects are never changed. A tensor already on ``device`` is returned as is,
    without a copy. NumPy arrays and scalars become tensors of
    the same dtype (see the module docstring).

    Args:
        device: ``"cuda"``, ``"cuda:1"``, ``torch.device``, an int (a CUDA index), or ``None``/``"auto"``
            for :func:`~tangtoc.device.pick_device`. A device that is not available raises
            :class:`~tangtoc.errors.DeviceUnavailableError` with the reason.
        non_blocking: ``"auto"`` copies without blocking only where that is both safe and useful (a pinned
            CPU tensor going to CUDA). ``True`` forces it; copies *to the CPU* are then awaited once, before
            returning, so the result is always complete.
        skip_keys: mapping keys and dataclass/namedtuple field and object attribute names whose values are
            left where they are, as a tuple (one string alone is refused: it would be read as its letters).
        float_dtype: opt-in, e.g. ``torch.float32`` for a float32 model fed NumPy's float64. Every floating
            tensor and array of another floating dtype is cast to it: float64 *and* float16/bfloat16 ones,
            and those already on ``device`` too (a cast makes a new tensor). Integer, bool and complex
            tensors are not touched, nor are modules and objects moved by their own ``.to``. ``None`` (the
            default) keeps every dtype.
    """
    if float_dtype is not None and not (isinstance(float_dtype, torch.dtype) and float_dtype.is_floating_point):
        raise ValueError(
            f"float_dtype must be a floating-point torch.dtype such as torch.float32; got {float_dtype!r}."
        )
    if non_blocking is not True and non_blocking is not False and non_blocking != "auto":
        raise ValueError(f"non_blocking must be True, False or 'auto', got {non_blocking!r}.")
    if isinstance(skip_keys, str):  # frozenset("ids") would skip the keys "i", "d" and "s"
        raise TypeError(
            f"skip_keys must be a tuple of names, got the string {skip_keys!r}. Fix: skip_keys=({skip_keys!r},)."
        )
    return _move(obj, resolve(device), non_blocking, frozenset(skip_keys), detach=False, float_dtype=float_dtype)


def to_cpu(obj: T) -> T:
    """Detach every tensor in ``obj`` and bring it to the CPU (seed 5.2: ``output.detach().cpu()``, nested).

    All device-to-host copies are issued without blocking and awaited together, once per device.
    """
    return _move(obj, torch.device("cpu"), True, frozenset(), detach=True)


def to_numpy(obj: Any) -> Any:
    """Like :func:`to_cpu`, then every tensor becomes a NumPy array.

    ``bfloat16`` and ``float16`` become ``float32`` (NumPy has no bfloat16, and matplotlib and most of
    SciPy do not take float16); every other dtype is kept.
    """

    def leaf(x: Any, kind: int) -> Any:
        if kind != TENSOR:
            return x
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.resolve_conj().resolve_neg().numpy()

    # Two passes on purpose: the arrays must not be read before to_cpu's single sync has completed them.
    return walk_batch(to_cpu(obj), leaf, frozenset())


def as_tensor(obj: Any, device: DeviceLike | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Make one tensor on ``device`` from a number, a (nested) list or tuple, a NumPy array, or tensors.

    Seed 4.2: ``.to()`` does not apply to lists or NumPy arrays; this does. Lists of numbers are built
    directly on the device; lists of same-shaped tensors are stacked. ``dtype`` converts; without it,
    PyTorch's inference applies (Python floats -> float32, ints -> int64, NumPy keeps its dtype).
    """
    target = resolve(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device=target, dtype=dtype)
    if isinstance(obj, (np.ndarray, np.generic)):
        t = _array_to_tensor(np.asarray(obj))
        if t is None:
            raise TypeError(
                f"as_tensor needs a numeric NumPy array, got dtype {obj.dtype}. Convert it first, e.g. "
                "`arr.astype(np.float32)`, or encode strings as ids."
            )
        return t.to(device=target, dtype=dtype)
    if isinstance(obj, (list, tuple)) and _contains_tensor(obj):
        parts = [as_tensor(x, target, dtype) for x in obj]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"as_tensor got a list of tensors with different shapes {sorted(shapes)}; stacking needs one "
                "shape. Pad them to a common shape first, or use to_device() to keep them as a list."
            )
        return torch.stack(parts)
    if isinstance(obj, (bool, int, float, complex, list, tuple)):
        try:
            return torch.as_tensor(obj, dtype=dtype, device=target)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"as_tensor could not turn this {type(obj).__name__} into a tensor: {e}. It needs numbers in a "
                "rectangular nest (every row the same length). Pad ragged rows, or keep them as a list of tensors."
            ) from e
    raise TypeError(
        f"as_tensor takes numbers, lists/tuples of numbers, NumPy arrays or tensors; got {type(obj).__name__}. "
        "For dicts and other containers use to_device(), which moves what is inside."
    )


def _contains_tensor(seq: list | tuple) -> bool:
    return any(isinstance(x, torch.Tensor) or (isinstance(x, (list, tuple)) and _contains_tensor(x)) for x in seq)


Scalar = bool | int | float | complex


def fetch(*values: torch.Tensor | Scalar | np.generic) -> tuple[Scalar, ...]:
    """Read many one-element tensors as Python numbers with **one** transfer and one sync per device.

    ``loss.item(); acc.item()`` synchronises the host with the device twice; ``fetch(loss, acc)``
    packs their bytes into one buffer on the device, copies it once, and unpacks exactly (any mix of
    dtypes, no rounding). Python numbers and NumPy scalars pass through. Always returns a tuple:
    ``(loss_v,) = fetch(loss)``.
    """
    out: list[Any] = list(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(
                    f"fetch takes one-element tensors; argument {i} has shape {tuple(v.shape)}. "
                    "Use to_cpu() or to_numpy() for whole tensors."
                )
            if v.device.type == "meta":
                raise ValueError(f"fetch cannot read argument {i}: it is a meta tensor and has no data.")
            by_device.setdefault(v.device, []).append(i)
        elif isinstance(v, np.generic):
            out[i] = v.item()
        elif not isinstance(v, (bool, int, float, complex)):
            raise TypeError(f"fetch takes tensors and numbers; argument {i} is a {type(v).__name__}.")
    for dev, idx in by_device.items():
        # resolve_conj/neg: a conjugate or negative view cannot be reinterpreted as bytes.
        tensors = [values[i].detach().resolve_conj().resolve_neg().reshape(1) for i in idx]  # type: ignore[union-attr]
        if dev.type == "cpu":
            for i, t in zip(idx, tensors, strict=True):
                out[i] = t.item()
            continue
        # Reinterpret each value's bytes as uint8 so different dtypes share one buffer and one copy.
        packed = torch.cat([t.contiguous().view(torch.uint8) for t in tensors]).cpu()
        offset = 0
        for i, t in zip(idx, tensors, strict=True):
            n = t.element_size()
            # clone(): a slice at an offset not divisible by the dtype's size cannot be viewed as that dtype.
            out[i] = packed[offset : offset + n].clone().view(t.dtype).item()
            offset += n
    return tuple(out)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` rebuilt with its own container types, ``fn`` applied to every tensor; everything else is kept."""
    return walk_batch(obj, lambda x, kind: fn(x) if kind == TENSOR else x, frozenset())


def pin(obj: T) -> T:
    """Put every CPU tensor in ``obj`` in page-locked (pinned) memory, so copies to CUDA can overlap compute.

    Returns ``obj`` unchanged when CUDA is not available (pinning needs it) and leaves already pinned
    tensors as they are.
    """
    if not torch.cuda.is_available():
        return obj

    def leaf(x: Any, kind: int) -> Any:
        if kind == TENSOR and x.device.type == "cpu" and not x.is_pinned():
            return x.pin_memory()
        return x

    return walk_batch(obj, leaf, frozenset())


def named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor in ``obj``: module parameters and buffers by their dotted
    names, mapping values as ``[key]``, sequence items as ``[i]``, dataclass and namedtuple fields and
    object attributes (``__dict__`` and ``__slots__``, e.g. a transformers cache) as ``.name``.
    """
    for path, x in named_leaves(obj, prefix, set()):
        if isinstance(x, torch.Tensor):
            yield path, x
        elif isinstance(x, nn.Module):
            dot = f"{path}." if path else ""
            for name, t in x.named_parameters():
                yield dot + name, t
            for name, t in x.named_buffers():
                yield dot + name, t


def device_of(obj: Any) -> torch.device | None:
    """The one device that every tensor in ``obj`` (a model, a tensor, a batch) lives on.

    Returns ``None`` when ``obj`` holds no tensor. Raises :class:`~tangtoc.errors.MixedDevicesError`
    when tensors live on several devices; the message lists each device with an example path.
    """
    seen: dict[torch.device, list[str]] = {}
    for path, t in named_tensors(obj):
        seen.setdefault(t.device, []).append(path or "<the tensor>")
    if not seen:
        return None
    if len(seen) == 1:
        return next(iter(seen))
    where = "; ".join(
        f"{dev}: {len(paths)} tensor{'s' if len(paths) != 1 else ''} (e.g. {', '.join(paths[:3])})"
        for dev, paths in seen.items()
    )
    raise MixedDevicesError(
        f"expected one device, found {len(seen)}: {where}. Fix: move everything to one device "
        "with tt.to_device(obj, device)."
    )

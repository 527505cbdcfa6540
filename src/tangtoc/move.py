"""Move models and *any* batch between devices, and bring results back.

Seed 4.2: ``.to()`` works on tensors and modules only, not on Python lists, NumPy arrays or the
nested dicts, tuples and dataclasses real batches are made of. One walker (:func:`_rebuild`) serves
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

**Objects rule.** Other objects that hold tensors without a ``.to`` of their own — ``types.SimpleNamespace``,
``argparse.Namespace``, transformers' ``DynamicCache`` and ``EncoderDecoderCache`` (in a model output's
``cache``/``past_key_values``), ``torch.distributions`` — are walked through their ``__dict__``: a new
object of the same type is made with ``type(obj).__new__`` (no ``__init__``, no ``__copy__``) and given the
moved attributes; ``torch.device`` attributes become the target (a cache layer's ``device`` must agree with
its tensors) and, with ``float_dtype``, floating ``torch.dtype`` attributes become it. The caller's object is
left as it was; inside one object, an object reached twice (shared, or a cycle) is copied once. An object
holding nothing to move is returned as is, shared with the caller like a tensor already on the device.
Where such a copy would be wrong, :func:`to_device` refuses with an :class:`~tangtoc.errors.UnmovableError`
(a ``TypeError``) that names the tensors it would leave behind, never silently:

* the object holds a module or a model's ``nn.Parameter`` (an optimizer, a trainer): a moved copy would no
  longer share them with the model;
* the object keeps state in ``__slots__``, which a ``__dict__`` walk cannot copy faithfully;
* the class's ``__new__`` needs arguments.

Classes, functions, Python modules, ``functools.partial`` and enum members are code, not data, and are never
walked. Tensors that C code keeps out of ``__dict__`` and ``__slots__`` cannot be seen by any walker.
Mappings built on ``collections.UserDict`` (transformers' ``BatchEncoding``, ``BatchFeature``) are walked
as mappings even though they have a ``.to``: their ``.to`` moves in place and returns the same object, skips
nested lists of tensors (``BatchEncoding``) and ignores ``skip_keys``. They are copied with ``copy.copy`` (every
other attribute, e.g. a ``BatchEncoding``'s encodings, is kept) and given the moved values.

**Shapes no walk can take.** A subclass of list, tuple or set whose constructor takes other arguments than an
iterable is rebuilt the way ``copy`` does it (its builtin base's ``__new__``, the items, its ``__dict__``), without
``__init__``. Refused, with the path from the top of the batch (``batch['input'][2]``): an iterator (a generator,
``map``, ``zip``), whose contents cannot be seen without consuming them, and a container of another kind that
holds tensors (a ``deque``, a dict's ``values()``), with an ``UnmovableError``; a batch that
contains itself through lists, dicts, tuples or dataclasses (a cycle through an object ends, see above), or one
nested deeper than Python's recursion limit, with a :class:`~tangtoc.errors.BatchStructureError`.
"""

from __future__ import annotations

import array
import copy
import dataclasses
import enum
import functools
import io
import sys
import threading
import traceback
import types
from collections import UserDict, defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, MutableMapping
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from tangtoc.device import DeviceLike, resolve, synchronize
from tangtoc.errors import BatchStructureError, MixedDevicesError, UnmovableError

T = TypeVar("T")
NonBlocking = bool | Literal["auto"]

# Kinds of objects the walker meets. The first five are leaves that a caller's function converts. A _RECORD
# (a torch.device or dtype) is kept as it is, except as an attribute of an _OBJECT (see the objects rule). An
# _ITERATOR is refused: what it holds cannot be seen without consuming it. A _COLLECTION (a deque, a dict's
# values()) is a container the walker cannot rebuild: refused when it holds something to move, else kept.
(_TENSOR, _MODULE, _ARRAY, _NPSCALAR, _HAS_TO, _MAPPING, _NAMEDTUPLE, _SEQUENCE, _SET, _DATACLASS, _OBJECT, _RECORD,
 _ITERATOR, _COLLECTION, _ATOM) = range(15)  # fmt: skip
_LEAVES = frozenset((_TENSOR, _MODULE, _ARRAY, _NPSCALAR, _HAS_TO))
# memoryview and array.array hold only numbers: never walked item by item.
_ATOM_TYPES = (str, bytes, bytearray, memoryview, array.array, int, float, complex, type(None), range, slice)
# Instances of these have a __dict__ but are code, not data; a Python module's namespace reaches everything.
_CODE_TYPES = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial, enum.Enum)
_NUMERIC_KINDS = frozenset("biufc")  # NumPy dtype kinds PyTorch can hold: bool, int, uint, float, complex
_kind_cache: dict[type, int] = {}


def _classify(tp: type) -> int:
    if issubclass(tp, torch.Tensor):
        return _TENSOR
    if issubclass(tp, nn.Module):
        return _MODULE
    # NumPy before the Python atoms: np.float64 and np.complex128 subclass float and complex.
    if issubclass(tp, np.ndarray):
        return _ARRAY
    if issubclass(tp, np.generic):
        return _NPSCALAR
    if issubclass(tp, _ATOM_TYPES):
        return _ATOM
    # Before the .to check: BatchEncoding's and BatchFeature's .to mutate the caller's object and ignore
    # skip_keys; a UserDict keeps all its values in .data, so the walker can rebuild it faithfully instead.
    if issubclass(tp, UserDict):
        return _MAPPING
    if callable(getattr(tp, "to", None)):
        return _HAS_TO
    if issubclass(tp, Mapping):
        return _MAPPING
    if issubclass(tp, tuple) and hasattr(tp, "_fields"):
        return _NAMEDTUPLE
    if issubclass(tp, (list, tuple)):
        return _SEQUENCE
    if issubclass(tp, (set, frozenset)):
        return _SET
    if dataclasses.is_dataclass(tp):
        return _DATACLASS
    if issubclass(tp, (torch.device, torch.dtype)):
        return _RECORD
    # Generators, map, zip, a DataLoader's iterator... Open files are iterators too, but data a batch may carry
    # along (their lines are not its tensors): they stay objects, walked like any other.
    if issubclass(tp, (Iterator, AsyncIterator)) and not issubclass(tp, io.IOBase):
        return _ITERATOR
    if (tp.__dictoffset__ or _slot_names(tp)) and not issubclass(tp, _CODE_TYPES):
        return _OBJECT
    if issubclass(tp, Collection):
        return _COLLECTION
    return _ATOM


@functools.cache
def _slot_names(tp: type) -> tuple[str, ...]:
    """The instance attributes declared in ``__slots__`` anywhere in ``tp``'s MRO, with private names mangled."""
    names: list[str] = []
    for cls in tp.__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{cls.__name__.lstrip('_')}{name}"
            names.append(name)
    return tuple(names)


def _kind(obj: object) -> int:
    tp = type(obj)
    kind = _kind_cache.get(tp)
    if kind is None:
        kind = _kind_cache[tp] = _classify(tp)
    return kind


def _rebuild(obj: Any, leaf: Callable[[Any, int], Any], skip_keys: frozenset[str]) -> Any:
    """Return ``obj`` rebuilt with its own container types, ``leaf(x, kind)`` applied to every leaf."""
    kind = _kind(obj)
    if kind in _LEAVES:
        return leaf(obj, kind)
    if kind == _ATOM:
        return obj
    if kind == _MAPPING:
        items = {k: v if k in skip_keys else _rebuild(v, leaf, skip_keys) for k, v in obj.items()}
        return _remake_mapping(obj, items)
    if kind == _SEQUENCE:
        items = [_rebuild(v, leaf, skip_keys) for v in obj]
        tp = type(obj)
        return items if tp is list else tuple(items) if tp is tuple else _remake_collection(obj, items)
    if kind == _NAMEDTUPLE:
        return type(obj)(
            *(v if f in skip_keys else _rebuild(v, leaf, skip_keys) for f, v in zip(obj._fields, obj, strict=True))
        )
    if kind == _SET:
        return _remake_collection(obj, [_rebuild(v, leaf, skip_keys) for v in obj])
    if kind == _DATACLASS:
        # Copy it and set each field, which works for frozen and slotted classes alike and, unlike
        # calling __init__, keeps init=False fields and does not rerun __post_init__.
        new = copy.copy(obj)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name, _MISSING)
            if value is not _MISSING and f.name not in skip_keys:
                object.__setattr__(new, f.name, _rebuild(value, leaf, skip_keys))
        return new
    if kind == _OBJECT:
        return _rebuild_object(obj, leaf, skip_keys)
    if kind == _ITERATOR or (kind == _COLLECTION and any(_named_leaves(obj, "", set()))):
        raise _Refused(obj)  # _walk_batch names where it is
    return obj  # a _RECORD outside an object (a device or dtype that is data), or a collection of atoms: kept


class _Refused(Exception):
    """Raised by the walk at what it refuses; :func:`_walk_batch` turns it into an :class:`UnmovableError` with
    its path."""


def _walk_batch(obj: Any, leaf: Callable[[Any, int], Any], skip_keys: frozenset[str]) -> Any:
    """:func:`_rebuild` of a whole batch. The walk keeps no paths (it runs on every batch of a training loop), so
    when it meets something it cannot walk, the batch is walked again, on this error path only, to name where."""
    try:
        return _rebuild(obj, leaf, skip_keys)
    except _Refused as e:
        refused = e.args[0]
        name = type(refused).__qualname__
        where = next((f" at {_from_top(p)}" for p, x in _named_leaves(obj, "", set()) if x is refused), "")
        why = (
            "it is an iterator, and to_device cannot see what it holds without consuming it (whoever reads it "
            "next would find it empty). Fix: pass a list, e.g. `list(...)`, or move each item as you iterate: "
            "`for batch in batches: batch = tt.to_device(batch, device)` (tt.Prefetcher does that while the "
            "previous step runs)."
            if _kind(refused) == _ITERATOR
            else f"it holds tensors, and to_device rebuilds lists, tuples, sets, dicts, dataclasses and objects "
            f"with attributes, but not a {name}. Fix: pass its items as a list, e.g. `list(...)`."
        )
        raise UnmovableError(f"cannot move a {name}{where}: {why}") from None
    except (RecursionError, BatchStructureError) as e:
        _check_walkable(obj, e)
        raise


def _check_walkable(obj: Any, error: RecursionError | BatchStructureError) -> None:
    """Raise :class:`BatchStructureError` naming the path from the top of ``obj`` when it contains itself, or
    when ``error`` is the walk running out of Python's stack; return when ``error`` came from elsewhere (a
    leaf's own ``.to`` that recursed forever is not the batch's fault)."""
    try:
        for _ in _named_leaves(obj, "", set()):  # raises at a cycle, with its path from the top
            pass
    except RecursionError:
        pass  # deeper than the path-naming walk can go: the batch is too deep, said below
    if not isinstance(error, RecursionError):
        return
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    if sum(f.f_code.co_filename == __file__ for f in frames) * 2 < len(frames):
        return  # most of the stack is someone else's code
    levels = sum(f.f_code is _rebuild.__code__ for f in frames)
    raise BatchStructureError(
        f"the batch is nested deeper than Python's recursion limit ({sys.getrecursionlimit()}) lets to_device "
        f"walk: it was {levels} containers deep when it stopped. Flatten it (e.g. a list of tensors instead of "
        "lists inside lists), or raise the limit with sys.setrecursionlimit()."
    ) from None


_MISSING = object()
# Objects already copied during the current walk, by id: a cycle or a shared object is copied once.
# Thread-local because DataLoader threads and prefetchers move batches concurrently.
_walk = threading.local()


def _rebuild_object(obj: Any, leaf: Callable[[Any, int], Any], skip_keys: frozenset[str]) -> Any:
    """``obj`` copied with ``type(obj).__new__`` and its ``__dict__`` rebuilt (the objects rule in the module
    docstring); ``obj`` itself when it holds nothing to move; a ``TypeError`` where a copy would be wrong."""
    memo: dict[int, Any] | None = getattr(_walk, "memo", None)
    if memo is not None and id(obj) in memo:
        return memo[id(obj)]
    outer = memo is None
    tp = type(obj)
    name = tp.__qualname__
    if outer:
        # One scan of the whole subtree: the objects inside need not look for modules again.
        held = list(_named_leaves(obj, "", set()))
        if not held:
            return obj
        # issubclass, not isinstance: nn.Parameter's metaclass makes isinstance slow, once per tensor held.
        owned = [path for path, x in held if issubclass(type(x), (nn.Module, nn.Parameter))]
        if owned:
            raise UnmovableError(
                f"cannot move a {name}: it holds a model's modules or parameters ({_some(owned)}), and a moved "
                "copy would no longer share them with the model. Move the model with `model.to(device)` and create "
                "or load this object after the move (an optimizer: `optimizer.load_state_dict(...)` moves its state)."
            )
    elif next(_named_leaves(obj, "", set()), None) is None:  # the first leaf is enough to know
        return obj
    if _slot_names(tp):
        raise UnmovableError(
            f"cannot move a {name}: it keeps attributes in __slots__, which tangtoc does not copy, and holds "
            f"tensors that would be left behind ({_paths(obj)}). Give {name} a `.to(device)` method that returns "
            "the moved object, or make it a dataclass."
        )
    try:
        new = tp.__new__(tp)
    except TypeError as e:
        raise UnmovableError(
            f"cannot move a {name} holding tensors ({_paths(obj)}): {name}.__new__ needs arguments ({e}), so no "
            f"copy can be made. Give {name} a `.to(device)` method."
        ) from e
    if memo is None:
        memo = _walk.memo = {}
    memo[id(obj)] = new  # before the attributes, so a reference back to obj finds the copy
    try:
        state = {
            k: v if k in skip_keys else leaf(v, _RECORD) if _kind(v) == _RECORD else _rebuild(v, leaf, skip_keys)
            for k, v in vars(obj).items()
        }
    finally:
        if outer:
            _walk.memo = None
    new.__dict__.update(state)
    return new


def _paths(obj: Any) -> str:
    return _some([path for path, _ in _named_leaves(obj, "", set())])


def _some(paths: list[str], n: int = 3) -> str:
    more = f" and {len(paths) - n} more" if len(paths) > n else ""
    return ", ".join(paths[:n]) + more


def _remake_mapping(obj: Mapping, items: dict) -> Mapping:
    tp = type(obj)
    if tp is dict:
        return items
    if isinstance(obj, UserDict):
        # copy.copy keeps every other attribute (a BatchEncoding's encodings) without rerunning __init__,
        # and the copy gets its own data dict: the caller's object is left as it was.
        out = copy.copy(obj)
        out.data = items
        return out
    if isinstance(obj, defaultdict):
        out = tp(obj.default_factory)
        out.update(items)
        return out
    try:
        return tp(items)
    except TypeError:
        if isinstance(obj, MutableMapping):
            out = copy.copy(obj)
            out.update(items)
            return out
        raise UnmovableError(
            f"cannot rebuild a {tp.__qualname__}: its constructor does not take a dict and it is not mutable. "
            "Give it a `.to(device)` method, or pass its contents as a dict."
        ) from None


def _remake_collection(obj: list | tuple | set | frozenset, items: list) -> Any:
    """A subclass of list, tuple, set or frozenset rebuilt with ``items``: by its constructor, or, when that takes
    other arguments (``Pair(first, second)``), the way copy and pickle make one: its builtin base's ``__new__``,
    the items, then its other attributes, without calling ``__init__``."""
    tp = type(obj)
    try:
        return tp(items)
    except TypeError:
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj  # nothing inside moved: keep it (sys.version_info's type cannot be called at all)
    if isinstance(obj, (tuple, frozenset)):
        new = (tuple if isinstance(obj, tuple) else frozenset).__new__(tp, items)
    elif isinstance(obj, list):
        new = list.__new__(tp)
        list.extend(new, items)
    else:
        new = set.__new__(tp)
        set.update(new, items)
    if tp.__dictoffset__:
        vars(new).update(vars(obj))
    return new


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor | None:
    """A CPU tensor for a numeric array (sharing memory where PyTorch can), ``None`` for non-numeric ones."""
    if arr.dtype.kind not in _NUMERIC_KINDS:
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
    return _array_to_tensor(np.asarray(x)) if x.dtype.kind in _NUMERIC_KINDS else None


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
        if kind == _TENSOR:
            return tensor(x)
        if kind == _MODULE:
            return x.to(target)
        if kind in (_ARRAY, _NPSCALAR):
            t = _array_to_tensor(x) if kind == _ARRAY else _npscalar_to_tensor(x)
            return x if t is None else tensor(t)
        if kind == _RECORD:  # an object's record of where its tensors live and of their dtype
            if isinstance(x, torch.device):
                return target
            return float_dtype if float_dtype is not None and x.is_floating_point else x
        try:  # anything else with a .to(), e.g. a TensorDict
            return x.to(target, non_blocking=non_blocking is True)
        except TypeError:
            return x.to(target)

    out = _walk_batch(obj, leaf, skip_keys)
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
        if kind != _TENSOR:
            return x
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.resolve_conj().resolve_neg().numpy()

    # Two passes on purpose: the arrays must not be read before to_cpu's single sync has completed them.
    return _walk_batch(to_cpu(obj), leaf, frozenset())


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
    return _walk_batch(obj, lambda x, kind: fn(x) if kind == _TENSOR else x, frozenset())


def pin(obj: T) -> T:
    """Put every CPU tensor in ``obj`` in page-locked (pinned) memory, so copies to CUDA can overlap compute.

    Returns ``obj`` unchanged when CUDA is not available (pinning needs it) and leaves already pinned
    tensors as they are.
    """
    if not torch.cuda.is_available():
        return obj

    def leaf(x: Any, kind: int) -> Any:
        if kind == _TENSOR and x.device.type == "cpu" and not x.is_pinned():
            return x.pin_memory()
        return x

    return _walk_batch(obj, leaf, frozenset())


def named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor in ``obj``: module parameters and buffers by their dotted
    names, mapping values as ``[key]``, sequence items as ``[i]``, dataclass and namedtuple fields and
    object attributes (``__dict__`` and ``__slots__``, e.g. a transformers cache) as ``.name``.
    """
    for path, x in _named_leaves(obj, prefix, set()):
        if isinstance(x, torch.Tensor):
            yield path, x
        elif isinstance(x, nn.Module):
            dot = f"{path}." if path else ""
            for name, t in x.named_parameters():
                yield dot + name, t
            for name, t in x.named_buffers():
                yield dot + name, t


def _named_leaves(
    obj: Any, prefix: str, seen: set[int], ancestors: dict[int, str] | None = None
) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` for every tensor, module, numeric NumPy value and object with its own ``.to`` in ``obj``,
    and for what the walkers refuse: an iterator, or a collection they cannot rebuild holding any of those.

    ``seen`` holds the ids of the objects walked so far, so a cycle through an object ends (the walkers copy an
    object once); ``ancestors`` the paths of the containers above, so a cycle of containers, which no walk could
    end, raises :class:`BatchStructureError` naming it."""
    kind = _kind(obj)
    if kind in _LEAVES and not (kind == _HAS_TO and isinstance(obj, Mapping)):
        if kind not in (_ARRAY, _NPSCALAR) or obj.dtype.kind in _NUMERIC_KINDS:
            yield prefix, obj
        return
    if kind == _ITERATOR:
        yield prefix, obj
        return
    if kind == _COLLECTION:
        # Yielded whole, as what the walkers refuse, when there is something to move inside.
        if next(_named_leaves(tuple(obj), prefix, set()), None) is not None:
            yield prefix, obj
        return
    children: Iterator[tuple[str, Any]]
    if kind in (_MAPPING, _HAS_TO):
        children = ((f"[{k!r}]", v) for k, v in obj.items())
    elif kind in (_SEQUENCE, _SET):
        children = ((f"[{i}]", v) for i, v in enumerate(obj))
    elif kind == _NAMEDTUPLE:
        children = ((f".{f}", v) for f, v in zip(obj._fields, obj, strict=True))
    elif kind == _DATACLASS:
        children = ((f".{f.name}", getattr(obj, f.name, None)) for f in dataclasses.fields(obj))
    elif kind == _OBJECT and id(obj) not in seen:
        seen.add(id(obj))
        state = list(vars(obj).items()) if type(obj).__dictoffset__ else []
        state += [(s, getattr(obj, s)) for s in _slot_names(type(obj)) if hasattr(obj, s)]
        children = ((f".{name}", v) for name, v in state)
        ancestors = {}  # a cycle through this object ends here: only the containers below it can loop
    else:
        return
    if ancestors is None:
        ancestors = {}
    ancestors[id(obj)] = prefix
    for label, v in children:
        if id(v) in ancestors:
            raise BatchStructureError(
                f"the batch contains itself: {_from_top(prefix + label)} is {_from_top(ancestors[id(v)])}, so a "
                "walk through it would never end. Fix: drop that reference back before moving the batch, or, if "
                "it is a dict key, dataclass field or attribute, name it in to_device's skip_keys to leave it as "
                "it is."
            )
        yield from _named_leaves(v, prefix + label, seen, ancestors)
    del ancestors[id(obj)]


def _from_top(path: str) -> str:
    """A path from :func:`_named_leaves` as a user reads it: ``batch['x'][0]``, or under the caller's own name."""
    return path if path and path[0] not in "[." else f"batch{path}"


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

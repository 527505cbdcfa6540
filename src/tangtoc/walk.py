"""The one walker over a batch's structure, for :mod:`tangtoc.move`: what is a leaf, how each container and
object is rebuilt, what is refused and how it is named.

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
from typing import Any

import numpy as np
import torch
from torch import nn

from tangtoc.errors import BatchStructureError, UnmovableError

# Kinds of objects the walker meets. The first five are leaves that a caller's function converts. A RECORD
# (a torch.device or dtype) is kept as it is, except as an attribute of an _OBJECT (see the objects rule). An
# _ITERATOR is refused: what it holds cannot be seen without consuming it. A _COLLECTION (a deque, a dict's
# values()) is a container the walker cannot rebuild: refused when it holds something to move, else kept.
(TENSOR, MODULE, ARRAY, NPSCALAR, _HAS_TO, _MAPPING, _NAMEDTUPLE, _SEQUENCE, _SET, _DATACLASS, _OBJECT, RECORD,
 _ITERATOR, _COLLECTION, _ATOM) = range(15)  # fmt: skip
_LEAVES = frozenset((TENSOR, MODULE, ARRAY, NPSCALAR, _HAS_TO))
# memoryview and array.array hold only numbers: never walked item by item.
_ATOM_TYPES = (str, bytes, bytearray, memoryview, array.array, int, float, complex, type(None), range, slice)
# Instances of these have a __dict__ but are code, not data; a Python module's namespace reaches everything.
_CODE_TYPES = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial, enum.Enum)
NUMERIC_KINDS = frozenset("biufc")  # NumPy dtype kinds PyTorch can hold: bool, int, uint, float, complex
_kind_cache: dict[type, int] = {}


def _classify(tp: type) -> int:
    if issubclass(tp, torch.Tensor):
        return TENSOR
    if issubclass(tp, nn.Module):
        return MODULE
    # NumPy before the Python atoms: np.float64 and np.complex128 subclass float and complex.
    if issubclass(tp, np.ndarray):
        return ARRAY
    if issubclass(tp, np.generic):
        return NPSCALAR
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
        return RECORD
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
    if kind == _ITERATOR or (kind == _COLLECTION and any(named_leaves(obj, "", set()))):
        raise _Refused(obj)  # walk_batch names where it is
    return obj  # a RECORD outside an object (a device or dtype that is data), or a collection of atoms: kept


class _Refused(Exception):
    """Raised by the walk at what it refuses; :func:`walk_batch` turns it into an :class:`UnmovableError` with
    its path."""


def walk_batch(obj: Any, leaf: Callable[[Any, int], Any], skip_keys: frozenset[str]) -> Any:
    """:func:`_rebuild` of a whole batch. The walk keeps no paths (it runs on every batch of a training loop), so
    when it meets something it cannot walk, the batch is walked again, on this error path only, to name where."""
    try:
        return _rebuild(obj, leaf, skip_keys)
    except _Refused as e:
        refused = e.args[0]
        name = type(refused).__qualname__
        where = next((f" at {_from_top(p)}" for p, x in named_leaves(obj, "", set()) if x is refused), "")
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
        for _ in named_leaves(obj, "", set()):  # raises at a cycle, with its path from the top
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
        held = list(named_leaves(obj, "", set()))
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
    elif next(named_leaves(obj, "", set()), None) is None:  # the first leaf is enough to know
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
            k: v if k in skip_keys else leaf(v, RECORD) if _kind(v) == RECORD else _rebuild(v, leaf, skip_keys)
            for k, v in vars(obj).items()
        }
    finally:
        if outer:
            _walk.memo = None
    new.__dict__.update(state)
    return new


def _paths(obj: Any) -> str:
    return _some([path for path, _ in named_leaves(obj, "", set())])


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


def named_leaves(
    obj: Any, prefix: str, seen: set[int], ancestors: dict[int, str] | None = None
) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` for every tensor, module, numeric NumPy value and object with its own ``.to`` in ``obj``,
    and for what the walkers refuse: an iterator, or a collection they cannot rebuild holding any of those.

    ``seen`` holds the ids of the objects walked so far, so a cycle through an object ends (the walkers copy an
    object once); ``ancestors`` the paths of the containers above, so a cycle of containers, which no walk could
    end, raises :class:`BatchStructureError` naming it."""
    kind = _kind(obj)
    if kind in _LEAVES and not (kind == _HAS_TO and isinstance(obj, Mapping)):
        if kind not in (ARRAY, NPSCALAR) or obj.dtype.kind in NUMERIC_KINDS:
            yield prefix, obj
        return
    if kind == _ITERATOR:
        yield prefix, obj
        return
    if kind == _COLLECTION:
        # Yielded whole, as what the walkers refuse, when there is something to move inside.
        if next(named_leaves(tuple(obj), prefix, set()), None) is not None:
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
        yield from named_leaves(v, prefix + label, seen, ancestors)
    del ancestors[id(obj)]


def _from_top(path: str) -> str:
    """A path from :func:`named_leaves` as a user reads it: ``batch['x'][0]``, or under the caller's own name."""
    return path if path and path[0] not in "[." else f"batch{path}"

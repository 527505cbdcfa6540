"""Device intent: on a CPU-only run, which tensors would live on the accelerator in a GPU run.

On a machine without a GPU every tensor is on the CPU, so "does this `.item()` wait for the GPU?" cannot be
observed; it can be inferred. A script that means to use an accelerator says so in its calls: it moves a
module with ``model.to(device)``, moves tensors with ``x.to(device)``, creates them with ``device=``. Those
tensors, and everything computed from them, would be on the accelerator; everything else would stay on the
host in a GPU run too — a ``torch.zeros(n)`` that collects eval losses, a CPU index into a NumPy memmap —
and reading it is no GPU sync.

A move to the CPU counts as a move to the script's device (``device`` resolved to ``"cpu"`` on this
machine) unless the line names the CPU itself: ``.cpu()``, ``"cpu"``, ``tt.to_cpu``, ``tt.to_numpy``.

Tensors created on the CPU by the user's code carry their creation site; the site is reported as "born on
the CPU" only once one of them, or a tensor computed from them, meets a device tensor (issue 11, item 1).

Tensors are tracked by identity with weak references: a tracked tensor is forgotten when it is freed.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tangtoc.diagnose.frames import Location

Tensor = torch.Tensor

# A line that names the host as the target of a move: the CPU on purpose, not a `device` that resolved to it.
_NAMES_CPU = re.compile(r"""['"]cpu(?::\d+)?['"]|\bcpu\(|\bto_cpu\(|\bto_numpy\(""")


def names_cpu(location: Location | None) -> bool:
    """Whether the user's line names the CPU itself (``.cpu()``, ``"cpu"``, ``tt.to_cpu``), not a device variable."""
    return location is not None and _NAMES_CPU.search(location.code) is not None


def tensors_in(args: Iterable[Any]) -> Iterator[Tensor]:
    """The tensors of an aten call's arguments or outputs: plain, or in a list or tuple (``aten.cat``)."""
    for a in args:
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))


class _Ref(weakref.ref):
    """A weak reference that carries its key and value (one object per tracked tensor, no closure)."""

    __slots__ = ("key", "value")


class _WeakById:
    """Tensor -> value, by identity, forgetting each tensor when it is freed (tensors compare by value)."""

    def __init__(self) -> None:
        self._items: dict[int, _Ref] = {}

    def _drop(self, ref: _Ref) -> None:
        if self._items.get(ref.key) is ref:  # not a newer tensor's entry under a reused id
            del self._items[ref.key]

    def set(self, t: Tensor, value: Any) -> None:
        ref = _Ref(t, self._drop)
        ref.key, ref.value = id(t), value
        self._items[ref.key] = ref

    def get(self, t: Tensor) -> Any:
        ref = self._items.get(id(t))
        return ref.value if ref is not None and ref() is t else None


class Intent:
    """Which tensors would live on the accelerator, and where the host-born ones that meet them were made.

    ``named`` becomes true at the first sign that the script means an accelerator (a move to a device, a
    creation with ``device=``); until then nothing is on the "device" and the audit falls back to reporting
    every host read as a would-be sync.
    """

    def __init__(self) -> None:
        self.named = False
        self._device = _WeakById()  # tensor -> True: on the device
        self._births = _WeakById()  # host tensor -> frozenset of the creation sites (EventKeys) it derives from

    def on_device(self, t: Tensor) -> bool:
        """Whether ``t`` is, or in a GPU run would be, on the accelerator."""
        return t.device.type != "cpu" or self._device.get(t) is not None

    def mark(self, t: Tensor, naming: bool = True) -> None:
        """Record that ``t`` would live on the accelerator; ``naming``: as the script says (not as inferred)."""
        self.named = self.named or naming
        if t.device.type == "cpu":
            self._device.set(t, True)

    def forget(self, t: Tensor) -> None:
        """Record that ``t`` is host memory (a copy back from the device, on a GPU)."""
        self._device.set(t, None)

    def born(self, t: Tensor, site: Any) -> None:
        """Record that host tensor ``t`` was created at ``site``."""
        self._births.set(t, frozenset((site,)))

    def sites(self, t: Tensor) -> frozenset[Any]:
        """The creation sites ``t`` derives from (empty for a device tensor or an untracked one)."""
        return self._births.get(t) or frozenset()

    def propagate(self, inputs: list[Tensor], outputs: list[Tensor], mutates: bool) -> frozenset[Any]:
        """Carry intent and creation sites from an operation's inputs to its outputs.

        An operation that ``mutates`` its first input writes through it into its base too (``pad_sequence``
        copies each sequence into a slice of its result), and does not move it: a host tensor written from
        the device (``losses[k] = loss``, ``out.copy_(x)``) is still host memory. Returns the creation sites of
        host inputs that met a device tensor in this operation.
        """
        device = False
        sites: frozenset[Any] = frozenset()
        met: frozenset[Any] = frozenset()
        for t in inputs:
            if self.on_device(t):
                device = True
            else:
                born = self._births.get(t)
                if born:
                    sites = sites | born
                    if t.dim():  # a 0-dim host tensor goes to a GPU kernel as a plain scalar: no copy
                        met = met | born
        if mutates and inputs:
            written = inputs[0]
            outputs = [written] if written._base is None else [written, written._base]
            if not self.on_device(written):
                device, met = False, frozenset()  # the host receives: nothing of the host met the device
        if device:
            for out in outputs:
                if out.device.type == "cpu" and self._device.get(out) is None:
                    self._device.set(out, True)
            return met
        if sites:
            for out in outputs:
                self._births.set(out, sites | self.sites(out))
        return frozenset()

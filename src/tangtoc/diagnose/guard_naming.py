"""How the guard names a tensor for the user: a parameter by its dotted path, an input by its ``forward`` parameter,
a plain attribute, a tensor created under the guard by its line, or what it was probably computed from.

:class:`Namer` reads the guard's state (the guarded modules, the creations it recorded, the running forwards) and
never changes it; :mod:`tangtoc.diagnose.guard` decides when something is wrong, and uses it to say what.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tangtoc.diagnose.calls import forward_args, input_tensors
from tangtoc.diagnose.frames import Location
from tangtoc.diagnose.mismatch import plain_tensor_attributes
from tangtoc.diagnose.roles import Role, likely_cause

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True)
class Birth:
    """Where a tensor was created while the guard was active."""

    function: str
    location: Location | None
    module: str | None
    explicit_device: bool


@dataclass(slots=True)
class Frame:
    """A module whose forward is running, with the inputs it was called with.

    When the module's own tensors or inputs are not all on one device, ``home`` is the device they should share,
    ``spread`` its own tensors elsewhere, ``suspects`` its inputs elsewhere, and ``where`` the user's line that
    called it: nothing is wrong yet, but if an operation mixes one of them, the error is about this module.
    """

    module: nn.Module
    path: str
    args: tuple
    kwargs: dict
    home: torch.device | None = None
    own: tuple[tuple[str, Tensor], ...] = ()
    spread: tuple[tuple[str, Tensor], ...] = ()
    suspects: tuple[tuple[str, Tensor], ...] = ()
    where: Location | None = None
    made: dict[torch.dtype, Birth] | None = None  # the last floating tensor this forward created, per dtype


@dataclass(frozen=True, slots=True)
class Origin:
    """What a tensor is to the user: ``who`` (``input `x` of `model```, ``created by torch.from_numpy at ...``),
    ``what`` (how the cause names it) and whether it is a parameter or buffer."""

    who: str
    what: str
    weights: bool = False


class Namer:
    """Names tensors against the guard's state. ``births`` maps ``id(tensor)`` to a weak reference and its
    :class:`Birth`; ``dotted`` maps each guarded module to its dotted name; ``stack`` gives the running forwards,
    outermost first."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        births: dict[int, tuple[weakref.ref[Tensor], Birth]],
        dotted: dict[nn.Module, str],
        stack: Callable[[], list[Frame]],
    ) -> None:
        self.modules = modules
        self._births = births
        self._dotted = dotted
        self._stack = stack

    def names(self) -> dict[int, str]:
        """``id(tensor)`` -> dotted path, for every parameter and buffer of the guarded modules."""
        names = {}
        for prefix, root in self.modules.items():
            dot = f"{prefix}." if prefix else ""
            names.update({id(t): dot + n for n, t in (*root.named_parameters(), *root.named_buffers())})
        return names

    def name_of(self, t: Tensor) -> str | None:
        """The dotted path of ``t`` if it is a parameter or buffer of a guarded module."""
        return self.names().get(id(t))

    def attribute_of(self, t: Tensor) -> str | None:
        for prefix, root in self.modules.items():
            for path, value in plain_tensor_attributes(root, prefix):
                if value is t:
                    return path
        return None

    def birth_of(self, t: Tensor) -> Birth | None:
        entry = self._births.get(id(t))
        return entry[1] if entry and entry[0]() is t else None

    def input_of(self, t: Tensor) -> str | None:
        for frame in self._stack():  # outermost first: the name the user passed it by
            for name, value in forward_args(frame.module, frame.args, frame.kwargs):
                for path, x in input_tensors(value, name):
                    if x is t:
                        return f"input `{path}` of `{frame.path}`"
        return None

    def identify(self, t: Tensor, role: Role | None, expected: str) -> tuple[str, tuple[str, str]]:
        """What ``t`` is (parameter, plain attribute, created at a line, an input...) and the likely cause + fix."""
        found = str(t.device)
        name = self.name_of(t)
        if name:
            return f"`{name}`", likely_cause(Role("a parameter or buffer", "weights"), found, expected)
        known = self.provenance(t)
        if known:
            return known
        given = self.input_of(t)
        if given:
            return given, likely_cause(role or Role("an input", "input"), found, expected)
        derived = self.derived_from_input(t)
        if derived:
            return derived
        return "not a parameter, buffer, attribute or input of the guarded modules", likely_cause(role, found, expected)

    def derived_from_input(self, t: Tensor) -> tuple[str, tuple[str, str]] | None:
        """For a tensor computed from an off-device input (``ids[:, :-1]`` of CPU ``ids``): that input, hedged."""
        for frame in self._stack():
            for name, s in frame.suspects:
                if s is not t and s.device == t.device:
                    cause = likely_cause(Role("an input", "input"), str(t.device), str(frame.home))
                    return f"probably computed from input `{name}` of `{frame.path}`", cause
        return None

    def provenance(self, t: Tensor) -> tuple[str, tuple[str, str]] | None:
        """``t`` as a plain tensor attribute or a tensor created under the guard, or (for a tensor computed from
        one, e.g. ``self.mask[:t] == 0``) the likely source: such a tensor on the same device in a running module.
        """
        attribute = self.attribute_of(t)
        if attribute:
            return attribute_story(attribute, "")
        birth = self.birth_of(t)
        if birth:
            return birth_story(birth, str(t.device), "")
        for frame in reversed(self._stack()):
            for path, value in plain_tensor_attributes(frame.module, self._dotted[frame.module]):
                if value.device == t.device:
                    return attribute_story(path, "probably computed from ")
        for ref, birth in list(self._births.values()):
            alive = ref()
            if alive is not None and alive.device == t.device and birth.module in {f.path for f in self._stack()}:
                return birth_story(birth, str(t.device), "probably computed from a tensor ")
        return None

    def origin(self, t: Tensor) -> Origin:
        """Who ``t`` is to the user, for a dtype error, and where its dtype came from.

        A parameter, a plain attribute or a tensor created under the guard is named exactly. Otherwise the
        outermost running module with an input in ``t``'s dtype tells the story: ``t`` is that input, or was computed
        from it; when that module is not the outermost, its caller made the dtype (its own inputs are in others).
        """
        name = self.name_of(t)
        if name:
            return Origin(f"`{name}`", f"`{name}`", weights=True)
        attribute = self.attribute_of(t)
        if attribute:
            return Origin(f"`{attribute}`, a plain tensor attribute", f"`{attribute}`")
        birth = self.birth_of(t)
        if birth:
            return Origin(birth_place(birth), f"the tensor {birth_place(birth)}")
        stack, dtype = self._stack(), str(t.dtype).removeprefix("torch.")
        same = [
            [
                (p, x)
                for arg, v in forward_args(f.module, f.args, f.kwargs)
                for p, x in input_tensors(v, arg)
                if x.dtype == t.dtype
            ]
            for f in stack
        ]
        i = next((i for i, inputs in enumerate(same) if inputs), None)
        exact = next((p for p, x in same[i] if x is t), None) if i is not None else None
        # torch.tensor(array) inside a forward is seen (torch.from_numpy is not: it bypasses TorchFunctionMode).
        made = next((f.made[t.dtype] for f in stack if f.made and t.dtype in f.made), None)
        parts = [f"input `{exact}` of `{stack[i].path}`"] if exact and i is not None else []
        if made:
            parts.append(f"probably computed from a tensor {birth_place(made)}")
        elif i is not None and i > 0:
            outer = stack[i - 1]
            parts.append(
                f"made {dtype} in the forward of `{outer.path}` ({type(outer.module).__name__}), whose own inputs "
                f"are not {dtype}"
            )
        elif i is not None and not exact:
            parts.append(f"probably computed from input `{same[i][0][0]}` of `{stack[i].path}`")
        elif i is None:
            parts.append(
                f"made in the forward of `{stack[0].path}`" if stack else "not a tensor of the guarded modules"
            )
        return Origin(", ".join(parts), f"a tensor {birth_place(made)}" if made else parts[0])


def attribute_story(path: str, hedge: str) -> tuple[str, tuple[str, str]]:
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    return f"{hedge}`{path}`, a plain tensor attribute (not a registered buffer)", (
        f"`{path}` is a plain tensor attribute, which `model.to()` does not move",
        f"register it in __init__: `self.register_buffer({leaf!r}, tensor, persistent=False)`.",
    )


def birth_place(birth: Birth) -> str:
    """``created by torch.zeros at train.py:12 in the forward of `model```."""
    at = f" at {birth.location}" if birth.location else ""
    by = f" in the forward of `{birth.module}`" if birth.module else ""
    return f"created by {birth.function}{at}{by}"


def birth_story(birth: Birth, device: str, hedge: str) -> tuple[str, tuple[str, str]]:
    how = "with an explicit device" if birth.explicit_device else "without device="
    default = "" if birth.explicit_device else " (the default device)"
    return f"{hedge}{birth_place(birth)}, {how}", (
        f"a tensor created {how} lands on {device}{default}",
        f"create it where its partners are: `{birth.function}(..., device=x.device)` (x: an input of the "
        "forward), or make it a registered buffer built once in __init__.",
    )

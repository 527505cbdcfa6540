"""What the guard's device errors say: the module, each tensor by its name, the user's line, the cause and the fix.

:mod:`tangtoc.diagnose.guard` decides *that* an operation, a module or the optimizer mixes devices; the functions
here word the :class:`~tangtoc.errors.DeviceMismatchError` it raises, naming tensors through its
:class:`~tangtoc.diagnose.guard_naming.Namer` (the dtype counterpart is :mod:`tangtoc.diagnose.guard_dtype`).
They build the error and return it; they change nothing.
"""

from __future__ import annotations

from collections import Counter

import torch

from tangtoc.diagnose.frames import user_location
from tangtoc.diagnose.guard_naming import Frame, Namer
from tangtoc.diagnose.mismatch import Finding, describe_tensor
from tangtoc.diagnose.roles import Role, likely_cause, role_of
from tangtoc.errors import DeviceMismatchError

Tensor = torch.Tensor


def call_error(
    fname: str, named: list[tuple[str, Tensor]], expected: torch.device, stack: list[Frame], namer: Namer
) -> DeviceMismatchError:
    """``fname`` got the tensors ``named`` (argument path, tensor) on two devices; ``expected`` is the right one and
    ``stack`` the running forwards, outermost first. Each odd tensor is named by what it is to the user."""
    lines, causes, odd = [], [], []
    for path, t in named:
        if t.device == expected:
            name = namer.name_of(t)
            lines.append(f"  `{path}`: {describe_tensor(t)}" + (f" (`{name}`)" if name else ""))
            continue
        role = role_of(fname, path.split("[")[0])
        who, cause = namer.identify(t, role, str(expected))
        lines.append(f"  `{path}`: {describe_tensor(t)}" + (f" — {role.term}" if role else "") + f"; {who}")
        causes.append(cause)
        odd.append(path)
    inside = f" inside the forward of `{stack[-1].path}` ({type(stack[-1].module).__name__})" if stack else ""
    where = user_location()
    found = next(str(t.device) for p, t in named if p == odd[0])
    return DeviceMismatchError(
        f"{fname} got tensors on {found} and {expected}{inside}; expected all on {expected}.\n"
        + "\n".join(lines)
        + (f"\n  at {where}: {where.code}" if where else "")
        + f"\nMost likely cause: {causes[0][0]}.\nFix: {causes[0][1]}",
        module=stack[-1].path if stack else None,
        culprits=tuple(odd),
        found=found,
        expected=str(expected),
    )


def optimizer_error(finding: Finding) -> DeviceMismatchError:
    """``optimizer.step()`` is about to meet state on another device than its parameter (``finding``)."""
    return DeviceMismatchError(
        f"optimizer.step() would mix devices: {finding.message}\nMost likely cause: {finding.cause}.\n"
        f"Fix: {finding.fix}",
        module=None,
        culprits=finding.paths,
        found=finding.found,
        expected=finding.expected,
    )


def spread_error(frame: Frame) -> DeviceMismatchError:
    """The running module of ``frame`` has its own parameters and buffers on several devices."""
    own, path, home = frame.own, frame.path, frame.home
    devices = Counter(t.device for _, t in own)
    odd = frame.spread
    lines = [f"  `{path}.{n}`: {describe_tensor(t)}" for n, t in own]
    cause, fix = likely_cause(Role("a parameter or buffer", "weights"), str(odd[0][1].device), str(home))
    return DeviceMismatchError(
        f"`{path}` ({type(frame.module).__name__}) has its own parameters and buffers on {len(devices)} "
        "devices.\n" + "\n".join(lines) + f"\nMost likely cause: {cause}.\nFix: {fix}",
        module=path,
        culprits=tuple(f"{path}.{n}" for n, _ in odd),
        found=str(odd[0][1].device),
        expected=str(home),
    )


def input_error(frame: Frame, namer: Namer, code: str) -> DeviceMismatchError:
    """The running module of ``frame`` got inputs (``frame.suspects``) on another device than its own tensors.

    ``code`` is how the user's code reaches the module (``model.layers[0]``), for the fix when the module itself was
    left on the CPU.
    """
    module, path, home, own, odd = frame.module, frame.path, frame.home, frame.own, frame.suspects
    assert home is not None and odd  # set together by DeviceGuard._suspect
    kind = "parameters" if next(module.parameters(), None) is not None else "buffers"
    lines = []
    cause: tuple[str, str] | None = None
    found = str(odd[0][1].device)
    if home.type == "cpu" and odd[0][1].device.type != "cpu":
        cause = _left_behind(module, path, code, home, found)
    for name, t in odd:
        role = role_of(type(module).__name__.lower(), name.split("[")[0].split(".")[0])
        known = namer.provenance(t) or namer.derived_from_input(t)
        if known:
            lines.append(f"  input `{name}`: {describe_tensor(t)}; {known[0]}")
            cause = cause or known[1]
        else:
            term = f" — {role.term}" if role else ""
            lines.append(f"  input `{name}`: {describe_tensor(t)}{term}")
            cause = cause or likely_cause(role or Role("an input", "input"), str(t.device), str(home))
    if own:
        lines += [f"  `{path}.{n}`: {describe_tensor(t)}" for n, t in own[:2]]
    else:
        lines.append(f"  `{path}`'s {kind}: on {home}")
    where = frame.where
    assert cause is not None  # odd is not empty
    names = ", ".join(f"`{n}`" for n, _ in odd)
    return DeviceMismatchError(
        f"`{path}` ({type(module).__name__}) got {names} on {found}, but its {kind} are on {home}.\n"
        + "\n".join(lines)
        + (f"\n  called at {where}: {where.code}" if where else "")
        + f"\nMost likely cause: {cause[0]}.\nFix: {cause[1]}",
        module=path,
        culprits=tuple(n for n, _ in odd),
        found=found,
        expected=str(home),
    )


def _left_behind(module: torch.nn.Module, path: str, code: str, home: torch.device, found: str) -> tuple[str, str]:
    """Cause and fix when ``module``'s own tensors stayed on the CPU while its input is on the accelerator."""
    return (
        f"`{path}` ({type(module).__name__}) is still on {home}: it was not moved with the rest, or was created "
        "or replaced after `.to()`",
        f"move it: `{code}.to({found!r})`, or call `.to()` on the whole model once it is complete"
        + (" (and create the optimizer after that)." if next(module.parameters(), None) is not None else "."),
    )

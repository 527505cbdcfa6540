"""``explain``: read any wording of PyTorch's device and dtype errors and say, in user terms, what is where and the fix.

:mod:`tangtoc.diagnose.wordings` reads the many wordings of "two devices met in one operation" and
:mod:`tangtoc.diagnose.dtypes` those of "two dtypes met" into what the message knows (the operation, the
argument, the devices or dtypes); :mod:`tangtoc.diagnose.roles` translates the internal argument name
(``mat1`` of ``addmm``) into the user's (the input of a Linear layer) and the likely cause into a fix. Given
the model and the inputs, :func:`explain` also names the user's own tensors on the wrong device, or in the
wrong dtype, by their path.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch import nn

from tangtoc.diagnose.dtypes import DtypeErrorInfo, describe_side, dtype_cause, parse_dtype_error
from tangtoc.diagnose.frames import is_library_file, short_path
from tangtoc.diagnose.mismatch import DeviceReport, check_devices
from tangtoc.diagnose.roles import Role, describe_op, likely_cause, role_of
from tangtoc.diagnose.wordings import DeviceErrorInfo, parse_device_error

__all__ = ["DeviceErrorInfo", "DtypeErrorInfo", "explain", "parse_device_error", "parse_dtype_error"]

# Without the operation, these argument names are too generic for roles.role_of, yet a wording that names
# only the argument ("Tensor for argument input is on cpu but expected on mps") still tells data from weights.
_GENERIC_ROLES = {
    "input": Role("the input of the operation (activations, or your batch)", "input"),
    "self": Role("the input of the operation (activations, or your batch)", "input"),
    "weight": Role("a layer's weight", "weights"),
    "bias": Role("a layer's bias", "weights"),
}


def _raised_at(error: BaseException) -> str | None:
    """The innermost line of the user's code in ``error``'s traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not is_library_file(f.filename)]
    return f"{short_path(frames[-1].filename)}:{frames[-1].lineno}" if frames else None


def _report(model: nn.Module | None, inputs: Any) -> DeviceReport:
    return check_devices(model, *(() if inputs is None else (inputs,)))


def _listed(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _user_tensors(report: DeviceReport, info: DeviceErrorInfo) -> list[str]:
    """Lines naming the user's own tensors on the device the error says is wrong, and check_devices' findings."""
    lines = [f"  - {f.message} Cause: {f.cause}. Fix: {f.fix}" for f in report.findings]
    wrong = info.culprit_device
    if wrong is None or lines:
        return lines
    names = [p.path for p in report.placements if str(p.device) == wrong or p.device.type == wrong]
    return [f"  - on {wrong}: {_listed(names)}"] if names else []


def _operation(op: str, overload: str | None) -> str:
    """``scatter_ (value) — a gather/scatter``: the overload a kernel name carried, after the operation."""
    name, dash, description = describe_op(op).partition(" — ")
    return f"{name}{f' ({overload})' if overload else ''}{dash}{description}"


def _placement_cause(info: DeviceErrorInfo, role: Role | None) -> tuple[str, str]:
    """The cause and the fix, addressed to the side that has to move."""
    if info.cause and info.fix:
        return info.cause, info.fix
    return likely_cause(role, info.culprit_device, info.expected_device)


def _explain_placement(info: DeviceErrorInfo, location: str | None, model: nn.Module | None, inputs: Any) -> str:
    role = role_of(info.op, info.argument)
    if role is None and info.op is None and info.argument:
        role = _GENERIC_ROLES.get(info.argument)
    lines = [f"PyTorch said: {info.said}"]
    if info.compiled:
        lines.append(
            "This came from torch.compile, which traced your code with fake tensors; the same operation fails "
            "without compile. Run the step eagerly under `tt.device_guard(model)` to have the tensor named."
        )
    if info.op:
        lines.append(f"Operation: {_operation(info.op, info.overload)}")
    if info.argument or info.culprit_device:
        what = f"`{info.argument}`" if info.argument else "one of its tensors" if info.op else "a tensor"
        culprit = f"{what} ({role.term})" if role else what
        facts = [f"{culprit} is on {info.culprit_device}" if info.culprit_device else culprit]
        if info.expected_device:
            facts.append(f"the other tensors are on {info.expected_device}")
        lines.append(f"Culprit: {'; '.join(facts)}.")
    if info.note:
        lines.append(f"Note: {info.note}")
    if location:
        lines.append(f"At: {location}")
    cause, fix = _placement_cause(info, role)
    lines += [f"Most likely cause: {cause}.", f"Fix: {fix}"]
    if model is not None or inputs is not None:
        found = _user_tensors(_report(model, inputs), info)
        lines += ["In what you passed:", *found] if found else ["In what you passed: every tensor is on one device."]
    return "\n".join(lines)


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "in another dtype"


def _odd_dtype(info: DtypeErrorInfo, report: DeviceReport | None) -> torch.dtype | None:
    """The dtype to look for in the user's tensors: float64 when the message names it, else the odd one found."""
    if torch.float64 in (info.found, info.expected):
        return torch.float64
    if info.found is not None:
        return info.found
    if report is None:
        return None
    # The message names no dtype (PyTorch < 2.1): an input floating dtype the model's parameters do not share.
    params = {p.dtype for p in report.placements if p.kind != "input" and p.dtype.is_floating_point}
    odd = [p.dtype for p in report.placements if p.kind == "input" and p.dtype.is_floating_point]
    return next((d for d in odd if d not in params), None) if params else None


def _explain_dtype(info: DtypeErrorInfo, location: str | None, model: nn.Module | None, inputs: Any) -> str:
    report = _report(model, inputs) if model is not None or inputs is not None else None
    odd = _odd_dtype(info, report)
    what, weights = describe_side(info.op, info.argument, info.subject)
    found, expected = info.found, info.expected
    if found is None and odd is not None and info.argument is not None and not weights:
        found = odd  # the message named no dtype, the user's tensors did
    lines = [
        f"PyTorch said: {info.said}",
        "This is a dtype mismatch, not a device one: a tensor is not in the dtype the operation needs.",
    ]
    if info.op:
        lines.append(f"Operation: {_operation(info.op, None)}")
    other = describe_side(info.op, info.other, info.subject)[0] if info.other else None
    if found is None and expected is None:
        pair = f"{what} and {other} are" if other else f"{what} is"
        lines.append(f"Culprit: {pair} in different dtypes; the message does not say which.")
    else:
        facts = [f"{what} is {_dtype_name(found)}"]
        if other:
            facts.append(f"{other} is {_dtype_name(expected)}")
        elif expected is not None:
            facts.append(f"the operation expected {_dtype_name(expected)}")
        lines.append(f"Culprit: {'; '.join(facts)}.")
    if location:
        lines.append(f"At: {location}")
    cause, fix = dtype_cause(found, expected, what, weights)
    lines += [f"Most likely cause: {cause}.", f"Fix: {fix}"]
    if report is not None:
        names = [p.path for p in report.placements if p.dtype == odd] if odd is not None else []
        lines.append(
            f"In what you passed: in {_dtype_name(odd)}: {_listed(names)}"
            if names
            else "In what you passed: no tensor in the odd dtype; it is made inside the step."
        )
    return "\n".join(lines)


def explain(error: BaseException | str, model: nn.Module | None = None, inputs: Any = None) -> str:
    """Explain a device or dtype error in user terms: what met where, the most likely cause, and the fix.

    ``error`` is the exception (or its message). With ``model`` and/or ``inputs`` (any batch: tensors,
    dicts, lists, dataclasses), the explanation also names the user's tensors on the wrong device, or in the
    wrong dtype, by their path (``encoder.layers.3.attn.mask``, ``input['x']``) and the classic causes
    :func:`~tangtoc.diagnose.check_devices` finds. Messages that are neither get a short note saying so,
    never an exception, so ``explain`` is safe inside an ``except`` block.
    """
    from tangtoc.errors import GuardError

    if isinstance(error, GuardError):
        return str(error)  # the guard's message already names the module, the tensors and the fix
    text = error if isinstance(error, str) else str(error)
    location = None if isinstance(error, str) else _raised_at(error)
    info = parse_device_error(text)
    if info is not None:
        return _explain_placement(info, info.location or location, model, inputs)
    dtype_info = parse_dtype_error(text)
    if dtype_info is not None:
        return _explain_dtype(dtype_info, location, model, inputs)
    first = text.strip().splitlines()[0] if text.strip() else "(empty message)"
    return (
        f"Not a device-placement or dtype error that tangtoc recognises: {first!r}. It reads PyTorch's 'Expected "
        "all tensors to be on the same device' family (every release's wording, CUDA, MPS, XPU, meta), conv "
        "'Input type ... weight type', indexing, torch.where, generators, torch.compile FakeTensor, RNN, "
        "optimizer-state and NumPy-conversion messages, and the dtype family ('mat1 and mat2 must have the same "
        "dtype', 'expected scalar type Float but found Double', ...)."
    )

"""The guard's dtype check: when PyTorch refuses two dtypes in one call, name the odd tensor, its origin and the fix.

The trap (seed, issue 17): NumPy arrays are float64, ``torch.from_numpy`` and ``tt.to_device`` keep that dtype, and
a float32 model then fails with "mat1 and mat2 must have the same dtype" — naming neither the tensor nor where it
came from. Unlike devices, dtypes are not checked before the kernel runs: many operations mix dtypes legally
(``float32 + float64`` promotes), so the guard waits for PyTorch's own refusal and only then names the culprit.
That costs nothing while nothing fails, and cannot refuse code PyTorch accepts. (On ``meta`` several kernels,
linear and matmul among them, accept two dtypes silently; the CPU and CUDA kernels do not.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tangtoc.diagnose.dtypes import dtype_cause, parse_dtype_error
from tangtoc.diagnose.frames import Location
from tangtoc.diagnose.guard_naming import Origin
from tangtoc.diagnose.mismatch import describe_tensor


@dataclass(frozen=True, slots=True)
class DtypeMismatch:
    """The message naming the odd tensor, and the fields of the error the guard raises with it."""

    message: str
    module: str | None
    culprits: tuple[str, ...]
    found: str
    expected: str


def dtype_mismatch(
    error: RuntimeError,
    fname: str,
    named: list[tuple[str, torch.Tensor]],
    *,
    model_dtype: torch.dtype | None,
    origin: Callable[[torch.Tensor], Origin],
    module: tuple[str, str] | None,
    where: Location | None,
) -> DtypeMismatch | None:
    """What to raise instead of ``error`` (raised by ``fname`` on the tensors ``named``), or ``None``.

    ``None`` when ``error`` is not a dtype refusal, or when the call's floating tensors share one dtype (the odd
    tensor was made inside the operation: nothing to name). The expected dtype is that of the guarded parameters
    in the call, else ``model_dtype`` (the guarded modules'); the culprits are the floating tensors in another.
    ``module`` is the running module's ``(path, class name)``.
    """
    info = parse_dtype_error(error)
    if info is None:
        return None
    floats = [(p, t) for p, t in named if t.is_floating_point()]
    dtypes = Counter(t.dtype for _, t in floats)
    if len(dtypes) < 2:
        return None
    origins = {id(t): origin(t) for _, t in floats}
    own = {t.dtype for _, t in floats if origins[id(t)].weights}
    expected = own.pop() if len(own) == 1 else model_dtype
    if expected not in dtypes:
        # No guarded parameter decides: the float64 side is the odd one (NumPy's default), else the rarer dtype.
        others = [d for d in dtypes if d != torch.float64]
        expected = others[0] if len(others) == 1 else dtypes.most_common(1)[0][0]
    odd = [(p, t) for p, t in floats if t.dtype != expected]
    found = odd[0][1].dtype
    lines = []
    for path, t in floats:
        o = origins[id(t)]
        note = f"; {o.who}" if t.dtype != expected else f" ({o.who})" if o.weights else ""
        lines.append(f"  `{path}`: {describe_tensor(t)}{note}")
    first = origins[id(odd[0][1])]
    cause, fix = dtype_cause(found, expected, first.what, first.weights)
    inside = f" inside the forward of `{module[0]}` ({module[1]})" if module else ""
    short = [str(d).removeprefix("torch.") for d in (found, expected)]
    return DtypeMismatch(
        f"{fname} got tensors in {short[0]} and {short[1]}{inside}; PyTorch refused: {info.said}\n"
        + "\n".join(lines)
        + (f"\n  at {where}: {where.code}" if where else "")
        + f"\nMost likely cause: {cause}.\nFix: {fix}",
        module=module[0] if module else None,
        culprits=tuple(p for p, _ in odd),
        found=short[0],
        expected=short[1],
    )

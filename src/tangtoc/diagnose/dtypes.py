"""The dtype family: two tensors of one operation in different dtypes, read and explained.

"mat1 and mat2 must have the same dtype" is the message a float32 model gives a float64 batch, and a float64
batch is what NumPy hands out by default: ``torch.from_numpy``, ``torch.tensor(array)`` and ``tt.to_device``
all keep NumPy's dtype (seed, issue 17). PyTorch has worded this many ways (see ``tests/data/dtype_errors.txt``
for real messages and the issues they were reported in); each pattern here reads which tensor holds which
dtype, as far as the wording says. :func:`dtype_cause` is the cause and fix for one tensor in the wrong dtype,
shared by :func:`tangtoc.explain` and anything that finds such a tensor itself (a guard).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tangtoc.diagnose.roles import role_of
from tangtoc.diagnose.wordings import CONV_TYPES, LEGACY_OBJECT_TYPE, legacy_type

_NAMES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64", "int": "int32", "byte": "uint8"}


def dtype_named(name: str) -> torch.dtype | None:
    """The dtype a message spells ``name``: ``Double``, ``double``, ``c10::Half``, ``struct c10::BFloat16``..."""
    key = re.sub(r"^(?:struct c10::|c10::|torch\.)", "", name.strip()).lower()
    found = getattr(torch, _NAMES.get(key, key), None)
    return found if isinstance(found, torch.dtype) else None


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, slots=True)
class DtypeErrorInfo:
    """What one dtype-mismatch message says: ``argument`` (the odd one, when named) is in ``found``; ``other``
    (when named) and the rest are in ``expected``. Fields the wording does not state are ``None``."""

    wording: str
    said: str
    op: str | None = None
    argument: str | None = None
    found: torch.dtype | None = None
    other: str | None = None
    expected: torch.dtype | None = None
    subject: str = "a tensor given to this operation"  # who ``found`` belongs to when no argument is named


def _pair(wording: str, op: str, a: str, b: str) -> Callable[[re.Match[str], str], DtypeErrorInfo]:
    """Wordings that name two arguments and (maybe) their dtypes: group ``a`` is argument ``a``'s, ``b`` is ``b``'s."""

    def build(m: re.Match[str], said: str) -> DtypeErrorInfo:
        da, db = (dtype_named(m[g]) if m[g] else None for g in ("a", "b"))
        # The odd one is the float64 side when there is one (NumPy's default), else the data, not the weight.
        if db == torch.float64 and da != torch.float64:
            return DtypeErrorInfo(wording, said, op, b, db, a, da)
        return DtypeErrorInfo(wording, said, op, a, da, b, db)

    return build


def _conv(m: re.Match[str], said: str) -> DtypeErrorInfo | None:
    (d_in, t_in), (d_w, t_w) = legacy_type(m["t1"]), legacy_type(m["t2"])
    if d_in is not None and d_in != d_w:
        return None  # two devices: a placement error, read by tangtoc.diagnose.wordings
    found, expected = dtype_named(t_in), dtype_named(t_w)
    if expected == torch.float64 and found != torch.float64:
        return DtypeErrorInfo("conv-dtype", said, "convolution", m["which"], expected, "input", found)
    return DtypeErrorInfo("conv-dtype", said, "convolution", "input", found, m["which"], expected)


def _found_expected(
    wording: str, op: str | None = None, subject: str | None = None
) -> Callable[[re.Match[str], str], DtypeErrorInfo]:
    """Wordings of "found one dtype, expected another", naming the argument found (``arg``/``seq``) or not."""

    def build(m: re.Match[str], said: str) -> DtypeErrorInfo:
        groups = m.groupdict()
        info = DtypeErrorInfo(
            wording,
            said,
            groups.get("method") or op,
            groups.get("arg") or groups.get("seq"),
            dtype_named(m["got"]) if groups.get("got") else None,
            None,
            dtype_named(m["exp"]) if groups.get("exp") else None,
        )
        return dataclasses.replace(info, subject=subject) if subject else info

    return build


def _legacy_object(m: re.Match[str], said: str) -> DtypeErrorInfo | None:
    (d_exp, t_exp), (d_got, t_got) = legacy_type(m["exp"]), legacy_type(m["got"])
    if d_exp != d_got:
        return None  # torch.cuda.FloatTensor vs torch.FloatTensor: the 0.4 wording of a placement error
    return DtypeErrorInfo("legacy-type", said, None, m["arg"], dtype_named(t_got), None, dtype_named(t_exp))


def _indices(m: re.Match[str], said: str) -> DtypeErrorInfo:
    # "torch.cuda.FloatTensor", "torch.IntTensor", "CUDAIntTensor": the dtype is the word before "Tensor".
    got = re.fullmatch(r"(?:torch\.(?:cuda\.)?|CUDA|CPU)?(?P<dtype>\w+?)Tensor", m["got"])
    expected = dtype_named((m["exp"] or "").split(",")[0])
    found = dtype_named(got["dtype"]) if got else None
    return DtypeErrorInfo("indices-dtype", said, m["method"], m["arg"], found, None, expected)


_TYPE = r"(?:struct )?[\w:]+"
# TensorIterator's "Found dtype X but expected Y" is, in practice, met in a loss's backward (pytorch/pytorch#36553).
_LOSS = "a tensor of the loss (most often its targets, met in another dtype by backward)"
# Most specific first. Each wording's origin is recorded in tests/data/dtype_errors.txt.
PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], DtypeErrorInfo | None]]] = [
    (
        re.compile(r"mat1 and mat2 must have the same dtype(?:, but got (?P<a>\w+) and (?P<b>\w+))?"),
        _pair("mat1-mat2", "addmm", "mat1", "mat2"),
    ),
    (
        re.compile(
            rf"expected (?:mat1 and mat2|m1 and m2) to have the same dtype, but got: (?P<a>{_TYPE}) ?!= ?(?P<b>{_TYPE})"
        ),
        _pair("mat1-mat2", "addmm", "mat1", "mat2"),
    ),
    (CONV_TYPES, _conv),
    (
        re.compile(
            r"Expected tensor for argument #\d+ '(?P<arg>\w+)' to have (?:one of the following )?scalar types?:? "
            r"(?P<exp>[\w, ]+); but got (?P<got>[\w.]+) instead \(while checking arguments for (?P<method>\w+)\)"
        ),
        _indices,
    ),
    (
        re.compile(
            r"Expected object of scalar type (?P<exp>\w+) but got scalar type (?P<got>\w+) for (?:argument #\d+ "
            r"'(?P<arg>\w+)'|sequence element \d+ in sequence argument at position #\d+ '(?P<seq>\w+)')"
            r"(?: in call to (?P<method>\w+))?"
        ),
        _found_expected("scalar-type-argument"),
    ),
    (LEGACY_OBJECT_TYPE, _legacy_object),
    (re.compile(r"expected scalar type (?P<exp>\w+) but found (?P<got>\w+)", re.I), _found_expected("scalar-type")),
    (re.compile(r"Found dtype (?P<got>\w+) but expected (?P<exp>\w+)"), _found_expected("found-dtype", subject=_LOSS)),
    (
        re.compile(r"expected dtype (?P<exp>\w+) but got dtype (?P<got>\w+)"),
        _found_expected("found-dtype", subject=_LOSS),
    ),
    (
        re.compile(r"expected (?P<exp>\w+) tensor \(got (?P<got>\w+) tensor\)"),
        _found_expected("found-dtype", subject=_LOSS),
    ),
    (
        re.compile(r"RNN input dtype \((?P<got>[\w.]+)\) does not match weight dtype \((?P<exp>[\w.]+)\)"),
        _found_expected("rnn-dtype", op="rnn", subject="the input sequence of an RNN/LSTM/GRU"),
    ),
    # BatchNorm/LayerNorm/GroupNorm on the CPU name no dtype.
    (re.compile(r"mixed dtype \(CPU\): all inputs must share same datatype"), _found_expected("mixed-dtype")),
]


def parse_dtype_error(error: BaseException | str) -> DtypeErrorInfo | None:
    """What a dtype-mismatch error says, or ``None`` when ``error`` is not one of the wordings tangtoc knows."""
    text = error if isinstance(error, str) else str(error)
    for pattern, build in PATTERNS:
        m = pattern.search(text)
        if m is None:
            continue
        start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
        info = build(m, text[start : None if end < 0 else end].strip())
        if info is not None:
            return info
    return None


def dtype_cause(
    found: torch.dtype | None, expected: torch.dtype | None, what: str = "the input", weights: bool = False
) -> tuple[str, str]:
    """The most likely cause and the fix for ``what`` (a tensor in ``found``) meeting tensors in ``expected``.

    ``weights`` says ``what`` is a parameter or buffer rather than data. Either dtype may be unknown
    (``None``): messages before PyTorch 2.1 name neither.
    """
    target = _short(expected) if expected is not None and expected.is_floating_point else "float32"
    if found == torch.float64 and weights:
        return (
            f"{what} is float64: a parameter made from a NumPy array (`nn.Parameter(torch.from_numpy(w))`), "
            "`model.double()`, or `torch.set_default_dtype(torch.float64)` before the model was built",
            f"convert the model once after building it, `model.to(torch.{target})`, or build such parameters "
            f"with `torch.from_numpy(w).to(torch.{target})`.",
        )
    convert = "x.float()" if target == "float32" else f"x.to(torch.{target})"
    if found in (torch.float64, None) and expected in (None, torch.float32, torch.float16, torch.bfloat16):
        unsure = "" if found is not None else "the message does not name the dtypes; most often "
        return (
            f"{unsure}{what} is float64 while the model computes in {target}: NumPy arrays are float64 by default, "
            "and `torch.from_numpy(arr)`, `torch.tensor(arr)` and `tt.to_device(arr, device)` keep that dtype "
            "(so does `torch.tensor([...])` of a list holding NumPy floats, e.g. values read with pandas)",
            f"convert where the data enters, once: `x = {convert}`, a whole batch with "
            f"`tt.to_device(batch, device, float_dtype=torch.{target})`, or one array with "
            f"`tt.as_tensor(arr, device, dtype=torch.{target})`; or keep the data in {target} from the start "
            f"(`arr.astype(np.{target})`).",
        )
    if expected == torch.float64:
        return (
            f"{what} is {_short(found) if found else 'not float64'}, and another tensor of the operation is float64 "
            "(PyTorch expects the others in its dtype), typically one made from a NumPy array",
            f"find the float64 tensor (`tt.explain(e, model, inputs)` names it) and convert it where it is made: "
            f"`{convert}`, or `tt.to_device(batch, device, float_dtype=torch.float32)`.",
        )
    if expected is not None and not expected.is_floating_point and found is not None and found != expected:
        made = (
            "ids built as floats (a NumPy float array, `torch.tensor` of Python floats, or a whole batch converted "
            "with `.float()`/`.half()`)"
            if found.is_floating_point
            else f"this PyTorch release takes only {_short(expected)} indices here"
        )
        return (
            f"{what} is {_short(found)} where the operation needs {_short(expected)} indices: {made}",
            "convert them where they are made: `ids = ids.long()` (or `torch.as_tensor(arr, dtype=torch.long)`); "
            "convert only the float features of a batch, never its indices.",
        )
    if found is not None and not found.is_floating_point and expected is not None and expected.is_floating_point:
        return (
            f"{what} is an integer tensor ({_short(found)}) where the operation computes in {target}: typically "
            "labels or targets given to a regression or BCE loss, or an integer NumPy array",
            f"convert it: `y = y.to(torch.{target})` (for losses that take class indices, use CrossEntropyLoss).",
        )
    return (
        f"{what} is {_short(found) if found else 'in one dtype'} while the rest is "
        f"{_short(expected) if expected else 'in another'}: the model was converted (`model.half()`, "
        "`.to(torch.bfloat16)`) but the input was not, or a tensor came from elsewhere in another precision",
        "run the forward pass under `torch.autocast(device_type, dtype=...)`, which casts per operation, or "
        "convert the input to the model's dtype: `x = x.to(next(model.parameters()).dtype)`.",
    )


def describe_side(op: str | None, argument: str | None, subject: str) -> tuple[str, bool]:
    """``argument`` in user terms (``subject`` when none is named) and whether it is a layer's own tensor."""
    if argument is None:
        return subject, False
    role = role_of(op, argument)
    what = f"`{argument}` ({role.term})" if role else f"`{argument}`"
    return what, role is not None and role.kind == "weights"

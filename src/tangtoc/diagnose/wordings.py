"""Every wording PyTorch has used for "tensors on two devices met", read into one :class:`DeviceErrorInfo`.

PyTorch has worded the same mistake a dozen ways over the years and backends (see
``tests/data/device_errors.txt`` for real messages and the public issue each was reported in). Each
pattern below extracts what the message knows — the operation, the argument, the two devices — and
nothing it does not: where a wording does not say which tensor is the odd one, ``note`` says so. Where the
wording alone fixes the cause (``.numpy()`` on a CUDA tensor, a CPU generator), the cause and the fix come from
:mod:`tangtoc.diagnose.fixed_causes`; otherwise :mod:`tangtoc.diagnose.explain` turns the result into a cause and a
fix from the argument's role.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from tangtoc.diagnose.fixed_causes import (
    FIXED,
    LOOKUP_TABLE_ON_CPU,
    STEM_NOTE,
    cpu_only_kernel_note,
    generator_cause,
    unsided_note,
)
from tangtoc.diagnose.frames import short_path
from tangtoc.diagnose.roles import is_host, op_name

_DEV = r"[a-z]+(?::\d+)?"  # cpu, cuda:0, mps:0, meta, xpu:1
_DEVI = r"[A-Za-z]+(?::\d+)?"  # the same, where a wording prints "CPU"


@dataclass(frozen=True, slots=True)
class DeviceErrorInfo:
    """What one device-error message says, whatever its wording.

    ``argument`` is on ``culprit_device``; the other tensors of ``op`` are on ``expected_device``. Fields the
    wording does not state are ``None``. ``op`` is the plain operation name (``scatter_``), ``overload`` the
    aten overload a kernel name carried (``value`` of ``wrapper_CUDA_scatter__value``). ``cause``/``fix`` are
    set for wordings whose cause is fixed by the wording itself (e.g. ``.numpy()`` on a CUDA tensor);
    otherwise they follow from the argument's role. ``note`` is what the reader must know about the
    wording itself, e.g. that it does not say which of the two devices is the odd one.
    """

    wording: str
    said: str
    op: str | None = None
    argument: str | None = None
    culprit_device: str | None = None
    expected_device: str | None = None
    compiled: bool = False
    location: str | None = None
    cause: str | None = None
    fix: str | None = None
    overload: str | None = None
    note: str | None = None


# aten overload names as they end a codegen kernel name: `scatter_.value` is spelled `scatter__value`.
_OVERLOAD = re.compile(
    r"(?P<op>.+?)_(?P<overload>value|src|reduce|value_reduce|two|Tensor|Scalar|self|other|dim|int|"
    r"Tensor_Tensor|Tensor_Scalar|Scalar_Tensor|ScalarSelf|ScalarOther|self_int|Tensor_mode|Scalar_mode)"
)


def _method(name: str | None) -> tuple[str | None, str | None]:
    """(operation, overload) of a kernel name: ``wrapper_CUDA_scatter__value`` -> ``("scatter_", "value")``."""
    if name is None:
        return None, None
    base = op_name(name)
    m = _OVERLOAD.fullmatch(base)
    return (m["op"], m["overload"]) if m else (base, None)


def _info(
    wording: str, said: str, method: str | None, argument: str | None, culprit: str | None, **kw: str | None
) -> DeviceErrorInfo:
    """A :class:`DeviceErrorInfo` with the kernel name cleaned and device names in PyTorch's lower case."""
    op, overload = _method(method)
    expected = kw.pop("expected", None)
    return DeviceErrorInfo(
        wording,
        said,
        op,
        argument,
        culprit.lower() if culprit else None,
        expected.lower() if expected else None,
        overload=overload,
        **kw,
    )


def _odd_one_out(said: str, wording: str, d1: str, d2: str) -> DeviceErrorInfo:
    """A wording that names two devices but not which tensor is odd: the CPU one is, with a note saying so."""
    d1, d2 = d1.lower(), d2.lower()
    culprit, expected = (d1, d2) if is_host(d1) and not is_host(d2) else (d2, d1)
    note = unsided_note(culprit, expected) if is_host(culprit) != is_host(expected) else None
    return _info(wording, said, None, None, culprit, expected=expected, note=note)


def legacy_type(text: str) -> tuple[str | None, str]:
    """(device, dtype) of a type name in a message: ``torch.cuda.FloatTensor``, ``CPUFloatType``, ``c10::Half``.

    The device is ``None`` where the name gives only the dtype (``double``, ``c10::Half``).
    """
    m = re.fullmatch(r"torch\.(?:(cuda|mps|xpu)\.)?(\w+)Tensor", text)
    if m:
        return m.group(1) or "cpu", m.group(2)
    m = re.fullmatch(r"(CUDA|CPU|MPS|XPU|HIP|Meta)(\w+)Type", text)
    if m:
        return m.group(1).lower().replace("hip", "cuda"), m.group(2)
    return None, text


CONV_TYPES = re.compile(
    r"Input type \((?P<t1>[^()]+)\) and (?P<which>weight|bias) type \((?P<t2>[^()]+)\) should be the same"
)


# PyTorch 0.4: "Expected object of type torch.cuda.FloatTensor but found type torch.FloatTensor for argument #2
# 'weight'" (a device mismatch) or "...torch.DoubleTensor but found type torch.FloatTensor..." (a dtype one).
LEGACY_OBJECT_TYPE = re.compile(
    r"Expected object of type (?:Variable\[)?(?P<exp>torch\.[\w.]+)\]? but found type (?:Variable\[)?"
    r"(?P<got>torch\.[\w.]+)\]? for argument #\d+ '(?P<arg>\w+)'"
)


def _conv(m: re.Match[str], said: str) -> DeviceErrorInfo | None:
    (in_dev, _), (w_dev, _) = legacy_type(m["t1"]), legacy_type(m["t2"])
    if in_dev is None or in_dev == w_dev:
        return None  # one device, two dtypes: tangtoc.diagnose.dtypes reads it
    # The side on the CPU is the culprit: the input (batch not moved) or the weight (model not moved).
    if is_host(in_dev):
        return _info("conv-type", said, "convolution", "input", in_dev, expected=w_dev)
    return _info("conv-type", said, "convolution", m["which"], w_dev, expected=in_dev)


def _same_device(m: re.Match[str], said: str) -> DeviceErrorInfo:
    # adaption.cpp: "<device of the tensors checked so far> and <device of this argument>".
    return _info("same-device", said, m["method"], m["arg"], m["d2"], expected=m["d1"])


def _got_is_on(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("got-is-on", said, m["method"], m["arg"], m["d2"], expected=m["d1"])


def _two_devices(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _odd_one_out(said, "two-devices", m["d1"], m["d2"])


def _where(m: re.Match[str], said: str) -> DeviceErrorInfo:
    devices = {"condition": m["c"].lower(), "x": m["x"].lower(), "y": m["y"].lower()}
    # The odd one is the argument whose device the other two do not share; with three devices, the CPU one.
    odd = [a for a, d in devices.items() if list(devices.values()).count(d) == 1]
    arg = odd[0] if len(odd) == 1 else next((a for a in odd if is_host(devices[a])), odd[0])
    others = {d for a, d in devices.items() if a != arg}
    return _info("where", said, "where", arg, devices[arg], expected=others.pop() if len(others) == 1 else None)


def _index(m: re.Match[str], said: str) -> DeviceErrorInfo:
    indexed = m["d"].lower()
    if is_host(indexed):
        cause, fix = LOOKUP_TABLE_ON_CPU
        return _info("index", said, "index", "self", indexed, cause=cause, fix=fix)
    return _info("index", said, "index", "indices", None, expected=indexed)


def _legacy_object(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("legacy", said, m.groupdict().get("method"), m["arg"], m["got"], expected=m["exp"])


def _legacy_type_object(m: re.Match[str], said: str) -> DeviceErrorInfo | None:
    (exp, _), (got, _) = legacy_type(m["exp"]), legacy_type(m["got"])
    if exp == got:
        return None  # one device, two dtypes: tangtoc.diagnose.dtypes reads it
    return _info("legacy", said, None, m["arg"], got, expected=exp)


def _check_same_gpu(m: re.Match[str], said: str) -> DeviceErrorInfo:
    # "expected it to be on GPU" names no device: MPS raises it too (DanielAvdar/tabnet#269).
    return _info("check-same-gpu", said, m["method"], m["arg"], "cpu")


def _gpu_index(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("check-same-gpu", said, m["method"], m["a1"], f"cuda:{m['d1']}", expected=f"cuda:{m['d2']}")


def _cpu_kernel(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("cpu-kernel", said, m["method"], m["arg"], m["got"], expected="cpu")


def _rnn(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("rnn", said, "rnn", m["what"], m["d2"], expected=m["d1"])


def _named_pair(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("named-pair", said, None, m["a"], m["d1"], expected=m["d2"])


def _argument_on(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return _info("argument-on", said, None, m["arg"], m["got"], expected=m["exp"])


def _mps_conv(m: re.Match[str], said: str) -> DeviceErrorInfo:
    d_in, d_w = m["d1"].lower(), m["d2"].lower()
    if is_host(d_in):
        return _info("mps-conv", said, "convolution", "input", d_in, expected=d_w)
    return _info("mps-conv", said, "convolution", "weight", d_w, expected=d_in)


def _cpu_only_kernel(m: re.Match[str], said: str) -> DeviceErrorInfo:
    # Convolution picks its kernel from the input: a CPU input selects the CPU-only slow_conv kernel, which the
    # dispatcher then looks up for the weight's accelerator and does not find (intel/torch-xpu-ops#5125).
    device = m["dev"].lower()
    return _info(
        "cpu-only-kernel",
        said,
        "convolution",
        "input",
        "cpu",
        expected=device,
        note=cpu_only_kernel_note(m["op"], device),
    )


def _generator(m: re.Match[str], said: str) -> DeviceErrorInfo:
    op_device, gen_device = m["exp"].lower(), m["got"].lower()
    cause, fix = generator_cause(op_device, gen_device)
    return _info("generator", said, None, "generator", gen_device, expected=op_device, cause=cause, fix=fix)


_Builder = Callable[[re.Match[str], str], DeviceErrorInfo | None]


def _fixed(wording: str, op: str | None = None, culprit: str | None = None) -> _Builder:
    """A wording whose cause and fix are fixed (:data:`~tangtoc.diagnose.fixed_causes.FIXED`)."""
    cause, fix = FIXED[wording]

    def build(m: re.Match[str], said: str) -> DeviceErrorInfo:
        return _info(wording, said, op, None, m.groupdict().get("d") or culprit, cause=cause, fix=fix)

    return build


def _expected_got(wording: str) -> _Builder:
    # "expected" is only the device of the operation's first tensor, not the right one: see _odd_one_out.
    def build(m: re.Match[str], said: str) -> DeviceErrorInfo:
        return _odd_one_out(said, wording, m["got"], m["exp"])

    return build


# (pattern, builder), most specific first; the bare stem comes last. Each wording's origin is recorded in
# tests/data/device_errors.txt.
PATTERNS: list[tuple[re.Pattern[str], _Builder]] = [
    (
        re.compile(
            rf"Expected all tensors to be on the same device, but found at least two devices, (?P<d1>{_DEV}) and "
            rf"(?P<d2>{_DEV})! \(when checking (?:argument|arugment) for argument (?P<arg>\w+) in method "
            r"(?P<method>\w+)\)"
        ),
        _same_device,
    ),
    (
        re.compile(
            rf"Expected all tensors to be on the same device, but got (?P<arg>\w+) is on (?P<d2>{_DEV}), different "
            rf"from other tensors on (?P<d1>{_DEV})(?: \(when checking argument in method (?P<method>\w+)\))?"
        ),
        _got_is_on,
    ),
    (
        re.compile(
            r"Expected all tensors to be on the same device\. (?P<method>\w+):? expected '(?P<arg>\w+)' to be "
            rf"(?:a )?CPU tensor, but got tensor on (?P<got>{_DEV})"
        ),
        _cpu_kernel,
    ),
    (
        re.compile(
            rf"Expected all tensors to be on the same device, but found at least two devices, (?P<d1>{_DEV}) and "
            rf"(?P<d2>{_DEV})!"
        ),
        _two_devices,
    ),
    (
        re.compile(rf"Expected all tensors to be on the same device\. Found: (?P<d1>{_DEV}), (?P<d2>{_DEV})"),
        _two_devices,
    ),
    # torch.cat in PyTorch 1.6-1.8.
    (
        re.compile(rf"All input tensors must be on the same device\. Received (?P<d1>{_DEV}) and (?P<d2>{_DEV})"),
        _two_devices,
    ),
    (
        re.compile(
            rf"Unhandled FakeTensor Device Propagation for (?P<op>[\w.]+), found two different devices "
            rf"(?P<d1>{_DEV}), (?P<d2>{_DEV})"
        ),
        _two_devices,
    ),
    (
        re.compile(
            rf"[Ee]xpected condition, x and y to be on the same device, but condition is on (?P<c>{_DEVI}) and x "
            rf"and y are on (?P<x>{_DEVI}) and (?P<y>{_DEVI}) respectively"
        ),
        _where,
    ),
    (
        re.compile(rf"Tensor on device (?P<got>{_DEV}) is not on the expected device (?P<exp>{_DEV})!"),
        _expected_got("expected-device"),
    ),
    # PyTorch 1.3-1.5 (TensorIterator), in both orders.
    (re.compile(rf"expected device (?P<exp>{_DEV}) but got device (?P<got>{_DEV})"), _expected_got("expected-got")),
    (CONV_TYPES, _conv),
    (
        re.compile(rf"indices should be either on cpu or on the same device as the indexed tensor \((?P<d>{_DEVI})\)"),
        _index,
    ),
    (
        re.compile(
            r"Expected object of device type (?P<exp>\w+) but got device type (?P<got>\w+) for argument #\d+ "
            r"'(?P<arg>\w+)' in call to (?P<method>\w+)"
        ),
        _legacy_object,
    ),
    (
        re.compile(
            r"Expected object of backend (?P<exp>\w+) but got backend (?P<got>\w+) for argument #\d+ '(?P<arg>\w+)'"
        ),
        _legacy_object,
    ),
    (LEGACY_OBJECT_TYPE, _legacy_type_object),
    (
        re.compile(
            r"Tensor for argument #\d+ '(?P<arg>\w+)' is on CPU, (?:Tensor for argument #\d+ '\w+' is on CPU, )?"
            r"but expected (?:it|them) to be on GPU \(while checking arguments for (?P<method>\w+)\)"
        ),
        _check_same_gpu,
    ),
    (
        re.compile(
            r"Expected tensor for argument #\d+ '(?P<a1>\w+)' to have the same device as tensor for argument #\d+ "
            r"'(?P<a2>\w+)'; but device (?P<d1>\d+) does not equal (?P<d2>\d+) \(while checking arguments for "
            r"(?P<method>\w+)\)"
        ),
        _gpu_index,
    ),
    (
        re.compile(
            r"Input and (?P<what>parameter|hidden) tensors are not at the same device, found input tensor at "
            rf"(?P<d1>{_DEVI}) and (?:parameter|hidden) tensor at (?P<d2>{_DEVI})"
        ),
        _rnn,
    ),
    (
        re.compile(
            rf"Expected (?P<a>\w+) and (?P<b>\w+) to be on the same device, but found (?P=a) on (?P<d1>{_DEV}) and "
            rf"(?P=b) on (?P<d2>{_DEV})"
        ),
        _named_pair,
    ),
    (
        re.compile(rf"Tensor for argument (?P<arg>\w+) is on (?P<got>{_DEV}) but expected on (?P<exp>{_DEV})"),
        _argument_on,
    ),
    (
        re.compile(
            rf"(?P<method>\w+): input\(device='(?P<d1>{_DEV})'\) and weight\(device='?(?P<d2>{_DEV})'\) must be on "
            "the same device"
        ),
        _mps_conv,
    ),
    (
        re.compile(
            r"The operator 'aten::(?P<op>_?slow_conv\w+)' is not currently implemented for the (?P<dev>\w+) device"
        ),
        _cpu_only_kernel,
    ),
    (
        re.compile(r"Could not run 'aten::(?P<op>_?slow_conv\w+)' with arguments from the '(?P<dev>\w+)' backend"),
        _cpu_only_kernel,
    ),
    (re.compile(r"Expected a '(?P<exp>\w+)' device type for generator but found '(?P<got>\w+)'"), _generator),
    (
        re.compile(r"Placeholder storage has not been allocated on MPS device!"),
        _fixed("mps-placeholder", culprit="cpu"),
    ),
    (re.compile(r"Cannot copy out of meta tensor; no data!"), _fixed("meta-copy", culprit="meta")),
    (
        re.compile(r"Input, output and indices must be on the current device"),
        _fixed("embedding-current-device", op="embedding"),
    ),
    (
        re.compile(r"Tensors of the same index must be on the same device and the same dtype except `step` tensors"),
        _fixed("optimizer-foreach", op="optimizer"),
    ),
    (re.compile(rf"can't convert (?:(?P<d>{_DEV}) device type|CUDA) tensor to numpy"), _fixed("numpy")),
    (re.compile(r"'lengths' argument should be a 1D CPU int64 tensor"), _fixed("pack-lengths")),
    (re.compile(r"Attempting to deserialize object on (?:a )?[A-Z]+ device"), _fixed("load-map-location")),
    (re.compile(r"Torch not compiled with CUDA enabled"), _fixed("no-cuda")),
    # The stem alone, as the seed article quotes it: nothing but "two devices met" can be read from it.
    (re.compile(r"Expected all tensors to be on the same device"), _fixed("stem")),
]

_COMPILED = re.compile(r"FakeTensor|Dynamo|torch\._dynamo|from user code:|Developer debug context|graph break")
_USER_CODE = re.compile(r'from user code:\s*\n\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_COMPILE_TARGET = re.compile(r"(?:call_function|call_module|call_method) (?P<target><[^>]+>|[\w.]+)")
_FAKE_OP = re.compile(r"for (aten\.[\w.]+)")


def _said(text: str, m: re.Match[str]) -> str:
    """What PyTorch said: the whole line(s) the wording is on, not just the matched part."""
    start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
    return text[start : None if end < 0 else end].strip()


def parse_device_error(error: BaseException | str) -> DeviceErrorInfo | None:
    """What a device error says, or ``None`` when ``error`` is not one of the wordings tangtoc knows."""
    text = error if isinstance(error, str) else str(error)
    for pattern, build in PATTERNS:
        m = pattern.search(text)
        info = None if m is None else build(m, _said(text, m))
        if info is None:
            continue
        if info.wording == "stem":
            info = dataclasses.replace(info, note=STEM_NOTE)
        if not _COMPILED.search(text):
            return info
        # torch.compile traced the code with fake tensors: the operation and the user's line are elsewhere.
        op = info.op
        fake_op = _FAKE_OP.search(m.group(0))
        target = _COMPILE_TARGET.search(text)
        if fake_op:
            op = op_name(fake_op.group(1))
        elif op is None and target:
            op = op_name(re.sub(r"^<built-in (?:function|method) (\w+).*>$", r"\1", target["target"]))
        user = _USER_CODE.search(text)
        location = f"{short_path(user['file'])}:{user['line']}" if user else None
        return dataclasses.replace(info, wording="compiled", op=op, compiled=True, location=location)
    return None

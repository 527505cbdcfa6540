"""``explain``: read any wording of PyTorch's device errors and say, in user terms, what is where and the fix.

PyTorch has worded "two devices met in one operation" a dozen ways over the years (see
``tests/data/device_errors.txt`` for real messages and where each comes from). Each pattern below
extracts what the message knows — the operation, the argument, the two devices — into a
:class:`DeviceErrorInfo`; :mod:`tangtoc.diagnose.roles` then translates the internal argument name
(``mat1`` of ``addmm``) into the user's (the input of a Linear layer) and the likely cause into a fix.
Given the model and the inputs, :func:`explain` also names the user's own tensors on the wrong device.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from tangtoc.diagnose.frames import is_library_file, short_path
from tangtoc.diagnose.roles import describe_op, is_host, likely_cause, role_of

_DEV = r"[a-z]+(?::\d+)?"  # cpu, cuda:0, mps:0, meta, xpu:1


@dataclass(frozen=True, slots=True)
class DeviceErrorInfo:
    """What one device-error message says, whatever its wording.

    ``argument`` is on ``culprit_device``; the other tensors of ``op`` are on ``expected_device``. Fields the
    wording does not state are ``None``. ``cause``/``fix`` are set for wordings whose cause is fixed by the
    wording itself (e.g. ``.numpy()`` on a CUDA tensor); otherwise they follow from the argument's role.
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


def _odd_one_out(d1: str, d2: str) -> tuple[str, str]:
    """(culprit, expected) when a wording names two devices but not which tensor is odd: the CPU one is."""
    return (d1, d2) if is_host(d1) and not is_host(d2) else (d2, d1)


def _legacy_type(text: str) -> tuple[str | None, str]:
    """(device, dtype) of a type name in a conv message: ``torch.cuda.FloatTensor``, ``CPUFloatType``, ``c10::Half``."""
    m = re.fullmatch(r"torch\.(?:(cuda|mps|xpu)\.)?(\w+)Tensor", text)
    if m:
        return m.group(1) or "cpu", m.group(2)
    m = re.fullmatch(r"(CUDA|CPU|MPS|XPU|HIP|Meta)(\w+)Type", text)
    if m:
        return m.group(1).lower().replace("hip", "cuda"), m.group(2)
    return None, text.removeprefix("c10::")  # dtype only: "float", "c10::Half"


def _conv(m: re.Match[str], said: str) -> DeviceErrorInfo:
    (in_dev, in_dtype), (w_dev, w_dtype) = _legacy_type(m["t1"]), _legacy_type(m["t2"])
    which = m["which"]
    if in_dev is None or in_dev == w_dev:
        return DeviceErrorInfo(
            "conv-type",
            said,
            op="convolution",
            cause=f"this is a dtype mismatch, not a device one: the input is {in_dtype}, the {which} is {w_dtype}",
            fix="run the forward pass under `torch.autocast(device_type, dtype=...)`, or convert the input to the "
            "model's dtype: `x = x.to(next(model.parameters()).dtype)`.",
        )
    # The side on the CPU is the culprit: the input (batch not moved) or the weight (model not moved).
    if is_host(in_dev):
        return DeviceErrorInfo("conv-type", said, "convolution", "input", in_dev, w_dev)
    return DeviceErrorInfo("conv-type", said, "convolution", which, w_dev, in_dev)


def _same_device(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("same-device", said, m["method"], m["arg"], m["d2"], m["d1"])


def _got_is_on(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("got-is-on", said, m["method"], m["arg"], m["d2"], m["d1"])


def _two_devices(m: re.Match[str], said: str) -> DeviceErrorInfo:
    culprit, expected = _odd_one_out(m["d1"], m["d2"])
    return DeviceErrorInfo("two-devices", said, culprit_device=culprit, expected_device=expected)


def _index(m: re.Match[str], said: str) -> DeviceErrorInfo:
    indexed = m["d"]
    if is_host(indexed):
        return DeviceErrorInfo(
            "index",
            said,
            "index",
            "self",
            indexed,
            None,
            cause="a lookup table (e.g. a noise schedule, a position table) stayed on the CPU, stored as a plain "
            "tensor attribute that `.to()` does not move, while the indices are on the accelerator",
            fix="register it as a buffer (`self.register_buffer('table', table, persistent=False)`) so `model.to()` "
            "moves it, or index with `table.to(idx.device)[idx]`.",
        )
    return DeviceErrorInfo("index", said, "index", "indices", None, indexed)


def _legacy_object(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("legacy", said, m["method"], m["arg"], m["got"].lower(), m["exp"].lower())


def _legacy_backend(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("legacy", said, None, m["arg"], m["got"].lower(), m["exp"].lower())


def _check_same_gpu(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("check-same-gpu", said, m["method"], m["arg"], "cpu", "cuda")


def _gpu_index(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("check-same-gpu", said, m["method"], m["a1"], f"cuda:{m['d1']}", f"cuda:{m['d2']}")


def _expected_device(m: re.Match[str], said: str) -> DeviceErrorInfo:
    # "expected" is only the device of the operation's first tensor: the odd one out is the CPU side.
    culprit, expected = _odd_one_out(m["got"], m["exp"])
    return DeviceErrorInfo("expected-device", said, None, None, culprit, expected)


def _cpu_kernel(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("cpu-kernel", said, m["method"], m["arg"], m["got"], "cpu")


def _rnn(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("rnn", said, "rnn", m["what"], m["d2"], m["d1"])


def _named_pair(m: re.Match[str], said: str) -> DeviceErrorInfo:
    return DeviceErrorInfo("named-pair", said, None, m["a"], m["d1"], m["d2"])


_Builder = Callable[[re.Match[str], str], DeviceErrorInfo]


def _fixed(wording: str, cause: str, fix: str, op: str | None = None) -> _Builder:
    def build(m: re.Match[str], said: str) -> DeviceErrorInfo:
        return DeviceErrorInfo(wording, said, op, culprit_device=m.groupdict().get("d"), cause=cause, fix=fix)

    return build


# (pattern, builder), most specific first. Each wording's origin is in tests/data/device_errors.txt.
_PATTERNS: list[tuple[re.Pattern[str], _Builder]] = [
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
    (
        re.compile(
            rf"Unhandled FakeTensor Device Propagation for (?P<op>[\w.]+), found two different devices "
            rf"(?P<d1>{_DEV}), (?P<d2>{_DEV})"
        ),
        _two_devices,
    ),
    (
        re.compile(
            r"Input type \((?P<t1>[^()]+)\) and (?P<which>weight|bias) type \((?P<t2>[^()]+)\) should be the same"
        ),
        _conv,
    ),
    (
        re.compile(rf"indices should be either on cpu or on the same device as the indexed tensor \((?P<d>{_DEV})\)"),
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
            r"Expected object of backend (?P<exp>\w+) but got backend (?P<got>\w+) for argument #\d+ "
            r"'(?P<arg>\w+)'"
        ),
        _legacy_backend,
    ),
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
    (re.compile(rf"Tensor on device (?P<got>{_DEV}) is not on the expected device (?P<exp>{_DEV})!"), _expected_device),
    (
        re.compile(
            r"Input and (?P<what>parameter|hidden) tensors are not at the same device, found input tensor at "
            rf"(?P<d1>{_DEV}) and (?:parameter|hidden) tensor at (?P<d2>{_DEV})"
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
        re.compile(r"Tensors of the same index must be on the same device and the same dtype except `step` tensors"),
        _fixed(
            "optimizer-foreach",
            "the optimizer's state lives on another device than its parameters: it was created or loaded before "
            "`model.to(device)` (the state stayed where it was)",
            "move the model first, then create the optimizer and call `optimizer.load_state_dict(...)`; it moves the "
            "state to each parameter's device. tt.check_devices(model, optimizer=opt) names each stray tensor.",
            op="optimizer",
        ),
    ),
    (
        re.compile(rf"can't convert (?P<d>{_DEV}) device type tensor to numpy"),
        _fixed(
            "numpy",
            "NumPy only reads host memory; the tensor is on the accelerator",
            "bring it back first, detached: `tt.to_numpy(t)` (or `t.detach().cpu().numpy()`). It waits for the "
            "device, so do it at log intervals, not every step.",
        ),
    ),
    (
        re.compile(r"'lengths' argument should be a 1D CPU int64 tensor"),
        _fixed(
            "pack-lengths",
            "pack_padded_sequence is the exception to 'everything on the device': it wants its lengths on the CPU",
            "pass `lengths.cpu()` (or keep the lengths as a CPU tensor or a list when moving the batch: "
            "`tt.to_device(batch, device, skip_keys=('lengths',))`).",
        ),
    ),
    (
        re.compile(r"Attempting to deserialize object on (?:a )?[A-Z]+ device"),
        _fixed(
            "load-map-location",
            "the checkpoint holds tensors saved on an accelerator that this machine does not have (no CUDA here, or "
            "fewer GPUs than the index it was saved from)",
            "load it onto the CPU, `torch.load(path, map_location='cpu')`, or onto a device that exists "
            "(`map_location=device`), then move it with `tt.to_device`. `tangtoc doctor` says why CUDA is missing.",
        ),
    ),
    (
        re.compile(r"Torch not compiled with CUDA enabled"),
        _fixed(
            "no-cuda",
            "this PyTorch build is CPU-only, so every '.cuda()' or device='cuda' fails",
            "pick the device instead of hard-coding it (`device = tt.pick_device()`), or install a CUDA build; "
            "`tangtoc doctor` says which.",
        ),
    ),
]
_COMPILED = re.compile(r"FakeTensor|Dynamo|torch\._dynamo|from user code:|Developer debug context|graph break")
_USER_CODE = re.compile(r'from user code:\s*\n\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_COMPILE_TARGET = re.compile(r"(?:call_function|call_module|call_method) (?P<target><[^>]+>|[\w.]+)")
_FAKE_OP = re.compile(r"for (aten\.[\w.]+)")


def parse_device_error(error: BaseException | str) -> DeviceErrorInfo | None:
    """What a device error says, or ``None`` when ``error`` is not one of the wordings tangtoc knows."""
    text = error if isinstance(error, str) else str(error)
    for pattern, build in _PATTERNS:
        m = pattern.search(text)
        if m is None:
            continue
        # What PyTorch said: the whole line(s) the wording is on, not just the matched part.
        start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
        info = build(m, text[start : None if end < 0 else end].strip())
        if not _COMPILED.search(text):
            return info
        # torch.compile traced the code with fake tensors: the operation and the user's line are elsewhere.
        op = info.op
        fake_op = _FAKE_OP.search(m.group(0))
        target = _COMPILE_TARGET.search(text)
        if fake_op:
            op = fake_op.group(1)
        elif op is None and target:
            op = re.sub(r"^<built-in (?:function|method) (\w+).*>$", r"\1", target["target"])
        user = _USER_CODE.search(text)
        location = f"{short_path(user['file'])}:{user['line']}" if user else None
        return dataclasses.replace(info, wording="compiled", op=op, compiled=True, location=location)
    return None


def _raised_at(error: BaseException) -> str | None:
    """The innermost line of the user's code in ``error``'s traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not is_library_file(f.filename)]
    return f"{short_path(frames[-1].filename)}:{frames[-1].lineno}" if frames else None


def _user_tensors(model: nn.Module | None, inputs: Any, info: DeviceErrorInfo) -> list[str]:
    """Lines naming the user's own tensors on the device the error says is wrong, and check_devices' findings."""
    from tangtoc.diagnose.mismatch import check_devices

    report = check_devices(model, *(() if inputs is None else (inputs,)))
    lines = [f"  - {f.message} Cause: {f.cause}. Fix: {f.fix}" for f in report.findings]
    wrong = info.culprit_device
    if wrong is None or lines:
        return lines
    names = [p.path for p in report.placements if str(p.device) == wrong or p.device.type == wrong]
    if names:
        shown = ", ".join(f"`{n}`" for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"  - on {wrong}: {shown}")
    return lines


def explain(error: BaseException | str, model: nn.Module | None = None, inputs: Any = None) -> str:
    """Explain a device error in user terms: what met where, the most likely cause, and the fix.

    ``error`` is the exception (or its message). With ``model`` and/or ``inputs`` (any batch: tensors,
    dicts, lists, dataclasses), the explanation also names the user's tensors on the wrong device by their
    path (``encoder.layers.3.attn.mask``, ``batch['input_ids']``) and the classic causes
    :func:`~tangtoc.diagnose.check_devices` finds. Messages that are not device errors get a short note
    saying so, never an exception, so ``explain`` is safe inside an ``except`` block.
    """
    from tangtoc.diagnose.guard import DeviceMismatchError

    if isinstance(error, DeviceMismatchError):
        return str(error)  # the guard's message already names the module, the tensors and the fix
    text = error if isinstance(error, str) else str(error)
    info = parse_device_error(text)
    if info is None:
        first = text.strip().splitlines()[0] if text.strip() else "(empty message)"
        return (
            f"Not a device-placement error that tangtoc recognises: {first!r}. It reads PyTorch's 'Expected all "
            "tensors to be on the same device' family, conv 'Input type ... weight type', indexing, torch.compile "
            "FakeTensor, RNN, optimizer-state and NumPy-conversion messages."
        )
    role = role_of(info.op, info.argument)
    lines = [f"PyTorch said: {info.said}"]
    if info.compiled:
        lines.append(
            "This came from torch.compile, which traced your code with fake tensors; the same operation fails "
            "without compile. Run the step eagerly under `tt.device_guard(model)` to have the tensor named."
        )
    if info.op:
        lines.append(f"Operation: {describe_op(info.op)}")
    if info.argument or info.culprit_device:
        what = f"`{info.argument}`" if info.argument else "one of its tensors"
        culprit = f"{what} ({role.term})" if role else what
        facts = [f"{culprit} is on {info.culprit_device}" if info.culprit_device else culprit]
        if info.expected_device:
            facts.append(f"the other tensors are on {info.expected_device}")
        lines.append(f"Culprit: {'; '.join(facts)}.")
    location = info.location or (None if isinstance(error, str) else _raised_at(error))
    if location:
        lines.append(f"At: {location}")
    if info.cause and info.fix:
        cause, fix = info.cause, info.fix
    else:
        cause, fix = likely_cause(role, info.culprit_device, info.expected_device)
    lines += [f"Most likely cause: {cause}.", f"Fix: {fix}"]
    if model is not None or inputs is not None:
        found = _user_tensors(model, inputs, info)
        lines += ["In what you passed:", *found] if found else ["In what you passed: every tensor is on one device."]
    return "\n".join(lines)

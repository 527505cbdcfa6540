"""``check_devices``: where every tensor of a training setup lives, and the classic mismatches before they crash.

Seed 5.1: "Expected all tensors to be on the same device" comes from data and model on different
devices. The message arrives late (at the first operation that mixes them) and names an internal
argument. This module looks at everything at once — parameters, buffers, tensors stored as plain module
attributes, inputs by their path in the batch, optimizer state, loss functions and metrics — and names each
tensor that is not where it should be, with the one-line fix.
"""

from __future__ import annotations

import reprlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tangtoc.device import DeviceLike, resolve
from tangtoc.move import named_tensors
from tangtoc.units import ReadsAsText

Kind = Literal["parameter", "buffer", "attribute", "input", "named", "optimizer state"]
Severity = Literal["error", "warning"]

# Attributes every nn.Module has (training, _parameters, _forward_hooks, ...): not user tensors.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_EXAMPLES = 4  # paths quoted per finding; the rest are counted


def describe_tensor(t: torch.Tensor) -> str:
    """``"shape (2, 7), int64, on cpu"``."""
    return f"shape {tuple(t.shape)}, {str(t.dtype).removeprefix('torch.')}, on {t.device}"


def is_cpu_scalar(t: torch.Tensor) -> bool:
    """A 0-d CPU tensor: PyTorch accepts it next to tensors on any device, as it does a Python number."""
    return t.dim() == 0 and t.device.type == "cpu"


def plain_tensor_attributes(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors stored on ``module`` or its submodules as plain attributes, by dotted path.

    ``self.mask = torch.ones(...)`` in ``__init__`` is not a registered buffer: ``module.to(device)``,
    ``state_dict()`` and DDP's broadcast all skip it, so it stays on the CPU while the model moves.
    Tensors inside plain lists, tuples and dicts are found too (``self.masks[0]``).
    """
    for mod_name, mod in module.named_modules(prefix=prefix):
        dot = f"{mod_name}." if mod_name else ""
        for name, value in vars(mod).items():
            if name in _MODULE_INTERNALS or isinstance(value, nn.Module):
                continue
            yield from named_tensors(value, dot + name)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one tensor lives. ``path`` is its dotted name or its path in the batch."""

    path: str
    kind: Kind
    device: torch.device
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def cpu_scalar(self) -> bool:
        return not self.shape and self.device.type == "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "device": str(self.device),
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: which tensors (``paths``), where they are (``found``), where they should be, why, and the fix."""

    code: str
    severity: Severity
    paths: tuple[str, ...]
    found: str
    expected: str
    message: str
    cause: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "paths": list(self.paths),
            "found": self.found,
            "expected": self.expected,
            "message": self.message,
            "cause": self.cause,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class DeviceReport(ReadsAsText):
    """Every tensor's device (:attr:`placements`), the device they should share, and the problems found."""

    expected: torch.device | None
    expected_reason: str
    placements: tuple[Placement, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when no finding is an error (warnings, such as a plain attribute on the right device, allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    def devices(self) -> dict[str, int]:
        """How many tensors live on each device."""
        return dict(Counter(str(p.device) for p in self.placements))

    def text(self) -> str:
        """The report as text, for a log or a notebook (also what ``print(report)`` shows)."""
        where = ", ".join(f"{n} on {d}" for d, n in self.devices().items()) or "no tensors"
        lines = [f"expected device: {self.expected} ({self.expected_reason})", f"tensors: {where}"]
        if not self.findings:
            lines.append("no problems found")
        for i, f in enumerate(self.findings, 1):
            lines += [f"{i}. [{f.severity}] {f.message}", f"   cause: {f.cause}", f"   fix: {f.fix}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected": None if self.expected is None else str(self.expected),
            "expected_reason": self.expected_reason,
            "ok": self.ok,
            "devices": self.devices(),
            "findings": [f.to_dict() for f in self.findings],
            "placements": [p.to_dict() for p in self.placements],
        }


def preferred_device(devices: Counter[torch.device]) -> torch.device | None:
    """The device a mix of tensors should share: the accelerator holding the most of them, else the CPU.

    Tensors start on the CPU and a forgotten ``.to()``/``device=`` leaves them there, so when the CPU and
    an accelerator mix, the CPU side is nearly always the one left behind.
    """
    if not devices:
        return None
    accelerators = Counter({d: n for d, n in devices.items() if d.type != "cpu"})
    return (accelerators or devices).most_common(1)[0][0]


def _quote(paths: list[str]) -> str:
    shown = ", ".join(f"`{p}`" for p in paths[:_EXAMPLES])
    return shown + (f" and {len(paths) - _EXAMPLES} more" if len(paths) > _EXAMPLES else "")


def _placement(path: str, kind: Kind, t: torch.Tensor) -> Placement:
    return Placement(path, kind, t.device, tuple(t.shape), t.dtype)


def _module_placements(module: nn.Module, prefix: str, kind_of_own: Kind | None) -> list[Placement]:
    dot = f"{prefix}." if prefix else ""
    out = [_placement(dot + n, kind_of_own or "parameter", t) for n, t in module.named_parameters()]
    out += [_placement(dot + n, kind_of_own or "buffer", t) for n, t in module.named_buffers()]
    out += [_placement(p, "attribute", t) for p, t in plain_tensor_attributes(module, prefix)]
    return out


def _param_names(modules: dict[str, nn.Module]) -> dict[int, str]:
    names = {}
    for prefix, module in modules.items():
        dot = f"{prefix}." if prefix else ""
        names.update({id(p): dot + n for n, p in module.named_parameters()})
    return names


def optimizer_state_findings(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[Finding]:
    """Optimizer state on another device than its parameter; parameters the model does not own.

    ``names`` maps ``id(parameter)`` to its dotted name. A 0-d CPU ``step`` is fine: Adam keeps it there
    on purpose unless ``capturable``/``fused``.
    """
    stray: dict[tuple[str, str], list[str]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device != p.device and not is_cpu_scalar(value):
                    name = names.get(id(p), f"<parameter {tuple(p.shape)}>")
                    stray.setdefault((str(value.device), str(p.device)), []).append(f"state[{name}][{key!r}]")
    findings = [
        Finding(
            "optimizer-state",
            "error",
            tuple(paths),
            found,
            expected,
            f"optimizer state is on {found} but its parameters are on {expected}: {_quote(paths)}.",
            "the state was created or loaded before the model was moved, and `model.to()` does not move optimizer "
            "state",
            "move the model first, then create the optimizer and call `optimizer.load_state_dict(...)` (it moves the "
            "state to each parameter's device).",
        )
        for (found, expected), paths in stray.items()
    ]
    if names:
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in names]
        if foreign:
            devices = sorted({str(p.device) for p in foreign})
            findings.append(
                Finding(
                    "optimizer-foreign-parameters",
                    "error",
                    tuple(f"<parameter {tuple(p.shape)} on {p.device}>" for p in foreign),
                    ", ".join(devices),
                    "the model's parameters",
                    f"the optimizer updates {len(foreign)} tensor(s) that are not parameters of the model (on "
                    f"{', '.join(devices)}).",
                    "the optimizer was created before the model's parameters were replaced, e.g. by a `.to()` that "
                    "could not move them in place, so training would update stale copies",
                    "create the optimizer after `model.to(device)`: "
                    "`optimizer = torch.optim.AdamW(model.parameters())`.",
                )
            )
    return findings


def expect_type(caller: str, name: str, value: Any, expected: type, fix: str, *, optional: bool = True) -> None:
    """Raise a ``TypeError`` naming ``caller``'s argument ``name`` when ``value`` is not an ``expected`` (nor
    ``None``, where ``optional``): otherwise it fails later, as an ``AttributeError`` from inside."""
    if isinstance(value, expected) or (optional and value is None):
        return
    label = {nn.Module: "torch.nn.Module", torch.optim.Optimizer: "torch.optim.Optimizer"}.get(
        expected, expected.__name__
    )
    raise TypeError(
        f"{caller}: {name} must be a {label}{' or None' if optional else ''}, got {type(value).__name__}: "
        f"{reprlib.repr(value)}. Fix: {fix}"
    )


PASS_THE_OPTIMIZER = "pass the optimizer object itself, e.g. optimizer=torch.optim.AdamW(model.parameters()), or none."


def check_devices(
    model: nn.Module | None = None,
    *inputs: Any,
    optimizer: torch.optim.Optimizer | None = None,
    device: DeviceLike | None = None,
    **named: Any,
) -> DeviceReport:
    """List where every tensor lives and flag what is not on the device they should share.

    Args:
        model: its parameters, buffers, and tensors stored as plain attributes (which ``.to()`` skips).
        inputs: batches of any shape (tensors, dicts, lists, dataclasses...), named ``input`` (one) or
            ``inputs[i]``, then by their path: ``input['pixel_values']``.
        optimizer: its state is compared with each parameter's device; parameters the model does not own
            are flagged (an optimizer created before the model's parameters were replaced).
        device: the device everything should be on. Without it, the accelerator holding the most tensors
            of the model, inputs and ``named`` objects, else the CPU (see :func:`preferred_device`).
        named: anything else that takes part, by name: loss functions, metrics, class weights
            (``criterion=loss_fn``, ``class_weights=w``). Modules are inspected like the model.

    A 0-d CPU tensor is listed but never flagged: PyTorch uses it as a Python number on any device. A model or
    optimizer of the wrong type raises a ``TypeError`` that says what to pass.
    """
    expect_type(
        "check_devices",
        "model",
        model,
        nn.Module,
        "pass the model first and batches after it, check_devices(model, batch); for batches alone, "
        "check_devices(None, batch).",
    )
    expect_type("check_devices", "optimizer", optimizer, torch.optim.Optimizer, PASS_THE_OPTIMIZER)
    placements: list[Placement] = []
    if model is not None:
        placements += _module_placements(model, "", None)
    for i, batch in enumerate(inputs):
        prefix = "input" if len(inputs) == 1 else f"inputs[{i}]"
        placements += [_placement(p or prefix, "input", t) for p, t in named_tensors(batch, prefix)]
    for name, obj in named.items():
        if isinstance(obj, nn.Module):
            placements += _module_placements(obj, name, "named")
        else:
            placements += [_placement(p or name, "named", t) for p, t in named_tensors(obj, name)]
    if optimizer is not None:
        placements += [
            _placement(f"optimizer.state[{i}][{k!r}]", "optimizer state", v)
            for i, state in enumerate(optimizer.state.values())
            for k, v in state.items()
            if isinstance(v, torch.Tensor)
        ]

    if device is not None:
        expected: torch.device | None = resolve(device)
        reason = "as asked"
    else:
        voters = Counter(p.device for p in placements if p.kind in ("parameter", "buffer", "input", "named"))
        expected = preferred_device(voters)
        reason = (
            "where the model, inputs and named objects are"
            if len(voters) <= 1
            else "the accelerator among the devices found; the CPU side is the usual one left behind"
        )
    findings = _findings(model, placements, expected, optimizer, named)
    return DeviceReport(expected, reason, tuple(placements), tuple(findings))


def _findings(
    model: nn.Module | None,
    placements: list[Placement],
    expected: torch.device | None,
    optimizer: torch.optim.Optimizer | None,
    named: dict[str, Any],
) -> list[Finding]:
    findings: list[Finding] = []
    modules = {"": model} if model is not None else {}
    modules.update({k: v for k, v in named.items() if isinstance(v, nn.Module)})
    if optimizer is not None:
        findings += optimizer_state_findings(optimizer, _param_names(modules))
    if expected is None:
        return findings
    want = str(expected)

    def off(kinds: tuple[str, ...]) -> dict[str, list[str]]:
        """Paths of the tensors of ``kinds`` not on the expected device, by device (CPU scalars are fine)."""
        groups: dict[str, list[str]] = {}
        for p in placements:
            if p.kind in kinds and p.device != expected and not p.cpu_scalar:
                groups.setdefault(str(p.device), []).append(p.path)
        return groups

    own = [p for p in placements if p.kind in ("parameter", "buffer")]
    for found, paths in off(("parameter", "buffer")).items():
        if len(paths) == len(own):
            findings.append(
                Finding(
                    "model-not-moved",
                    "error",
                    tuple(paths),
                    found,
                    want,
                    f"the whole model is on {found} ({len(paths)} parameters and buffers, e.g. {_quote(paths)}), "
                    f"not on {want} with the rest.",
                    "`model.to(device)` was never called on this model",
                    f"move the model once, after building it and before creating the optimizer: `model.to({want!r})`.",
                )
            )
        else:
            findings.append(
                Finding(
                    "spread-parameters",
                    "error",
                    tuple(paths),
                    found,
                    want,
                    f"{len(paths)} of the model's {len(own)} parameters and buffers are on {found}, the rest on "
                    f"{want}: {_quote(paths)}.",
                    "a layer created or replaced after `model.to()` stays where it was made",
                    f"call `model.to({want!r})` once the model is complete (if the model is split across devices on "
                    "purpose, e.g. with device_map, this is expected).",
                )
            )
    for p in placements:
        if p.kind != "attribute":
            continue
        attr = p.path.rsplit(".", 1)[-1].split("[", 1)[0]
        moved = p.device == expected
        consequence = (
            "will not move it (it is on the right device only for now)"
            if moved
            else f"left it behind when the model moved to {want}"
        )
        findings.append(
            Finding(
                "plain-attribute",
                "warning" if moved else "error",
                (p.path,),
                str(p.device),
                want,
                f"`{p.path}` is a tensor stored as a plain attribute on {p.device}, not a registered buffer.",
                "`.to()` moves only parameters and buffers, so it " + consequence,
                f"register it in __init__: `self.register_buffer({attr!r}, tensor, persistent=False)` (or "
                f"`persistent=True` to save it in the state_dict).",
            )
        )
    for found, paths in off(("input",)).items():
        findings.append(
            Finding(
                "input",
                "error",
                tuple(paths),
                found,
                want,
                f"input {_quote(paths)} is on {found}, but the model is on {want}.",
                "the batch was not moved to the model's device before the forward pass (harmless only for an input "
                "the model moves itself, as Hugging Face causal-LM models do with `labels`, or needs on the CPU, as "
                "`pack_padded_sequence` does with `lengths`: `tt.device_guard(model)` tells which, by running it)",
                f"move the batch before the forward pass: `batch = tt.to_device(batch, {want!r})`.",
            )
        )
    for found, paths in off(("named",)).items():
        findings.append(
            Finding(
                "left-behind",
                "error",
                tuple(paths),
                found,
                want,
                f"{_quote(paths)} {'is' if len(paths) == 1 else 'are'} on {found}, but the model is on {want}.",
                "a loss function's class weights or a metric's state were created on the CPU and not moved with the "
                "model",
                f"move it with the model: `{paths[0].split('.')[0].split('[')[0]}.to({want!r})` for a module, or "
                f"create the tensor with `device={want!r}`.",
            )
        )
    return findings

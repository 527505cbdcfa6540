"""check_devices: where every tensor lives, and each classic mismatch named before it crashes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import buggy_models as bm
from tangtoc.diagnose import check_devices
from tangtoc.diagnose.mismatch import plain_tensor_attributes, preferred_device
from tangtoc.errors import DeviceUnavailableError


@pytest.mark.parametrize("name", [n for n, build in bm.CASES.items() if build().finding])
def test_each_static_bug_is_found_before_it_crashes(name: str) -> None:
    case = bm.CASES[name]()
    report = check_devices(case.model, case.batch, **case.check_kwargs)
    assert not report.ok
    named = [
        f
        for f in report.findings
        if f.code == case.finding and (any(case.culprit in p for p in f.paths) or case.culprit in f.message)
    ]
    assert named, str(report)
    assert named[0].cause and named[0].fix


def test_healthy_setup_has_no_findings() -> None:
    model, x, y, criterion, opt = bm.healthy()
    criterion(model(x), y).backward()
    opt.step()
    report = check_devices(model, {"x": x, "y": y, "scale": torch.tensor(0.5)}, optimizer=opt, criterion=criterion)
    assert report.ok and not report.findings, str(report)
    assert report.expected == torch.device("meta")
    assert str(report).endswith("no problems found")


def test_adams_cpu_step_counter_is_not_a_finding() -> None:
    model = bm.Classifier().to("meta")
    opt = torch.optim.Adam(model.parameters())
    model(bm.features()).sum().backward()
    opt.step()  # exp_avg on meta, `step` a 0-d CPU tensor on purpose
    assert {v.device.type for s in opt.state.values() for v in s.values()} == {"meta", "cpu"}
    assert check_devices(model, optimizer=opt).findings == ()


@dataclass(frozen=True)
class Sample:
    pixels: torch.Tensor
    label: int


def test_every_tensor_is_listed_by_its_path() -> None:
    model = bm.TinyEncoder()
    batch = {"x": torch.randn(2, 6, 8), "extra": [Sample(torch.zeros(3), 1)]}
    report = check_devices(model, batch, class_weights=torch.ones(3))
    paths = {p.path: p.kind for p in report.placements}
    assert paths["layers.0.qkv.weight"] == "parameter"
    assert paths["layers.1.mask"] == "attribute"
    assert paths["input['x']"] == "input"
    assert paths["input['extra'][0].pixels"] == "input"
    assert paths["class_weights"] == "named"
    assert report.devices() == {"cpu": len(report.placements)}


def test_a_plain_attribute_on_the_right_device_is_a_warning_only() -> None:
    model = bm.TinyEncoder()  # everything on the CPU: the mask is where it should be, for now
    report = check_devices(model)
    assert report.ok
    warning = report.findings[0]
    assert (warning.code, warning.severity, warning.paths) == ("plain-attribute", "warning", ("layers.0.mask",))
    assert "will not move it (it is on the right device only for now)" in warning.cause


def test_plain_attributes_inside_containers_are_found() -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.masks = [torch.ones(2), torch.zeros(2)]
            self.table = {"pos": torch.arange(4)}
            self._private = torch.ones(1)
            self.register_buffer("kept", torch.ones(1))

    assert [p for p, _ in plain_tensor_attributes(Holder(), "h")] == [
        "h.masks[0]",
        "h.masks[1]",
        "h.table['pos']",
        "h._private",
    ]


def test_inputs_are_named_inputs_i_when_several_are_given() -> None:
    model = nn.Linear(4, 2).to("meta")
    report = check_devices(model, torch.randn(3, 4, device="meta"), torch.randn(3, 4))
    (finding,) = report.findings
    assert (finding.code, finding.paths, finding.found) == ("input", ("inputs[1]",), "cpu")
    assert finding.fix == "move the batch before the forward pass: `batch = tt.to_device(batch, 'meta')`."
    # A static look cannot tell a forgotten batch from an input the model handles itself: it says so.
    assert "harmless only for an input the model moves itself" in finding.cause
    assert "`tt.device_guard(model)` tells which" in finding.cause


def test_a_0d_cpu_input_is_a_scalar_not_a_mismatch() -> None:
    model = nn.Linear(4, 2).to("meta")
    report = check_devices(model, {"x": torch.randn(3, 4, device="meta"), "temperature": torch.tensor(0.7)})
    assert report.ok and not report.findings


def test_explicit_device_overrides_the_guess() -> None:
    model = nn.Linear(4, 2)
    guessed = check_devices(model)
    assert guessed.ok and guessed.expected == torch.device("cpu")
    asked = check_devices(model, device="meta")
    assert asked.expected == torch.device("meta") and asked.expected_reason == "as asked"
    assert asked.findings[0].code == "model-not-moved"
    assert "`model.to(device)` was never called" in asked.findings[0].cause


def test_an_unavailable_device_is_refused_with_the_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda' was requested, but"):
        check_devices(nn.Linear(2, 2), device="cuda")


def test_nothing_to_check() -> None:
    report = check_devices()
    assert report.expected is None and report.ok and report.placements == ()


def test_preferred_device_is_the_accelerator_holding_most_tensors() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert preferred_device(Counter({cpu: 10, meta: 1})) == meta  # the CPU side is the one left behind
    assert preferred_device(Counter({cpu: 3})) == cpu
    assert preferred_device(Counter()) is None


def test_report_serialises_to_json() -> None:
    case = bm.optimizer_loaded_before_move()
    data = json.loads(json.dumps(check_devices(case.model, optimizer=case.guard_kwargs["optimizer"]).to_dict()))
    assert data["ok"] is False
    assert data["findings"][0]["code"] == "optimizer-state"
    assert {"path", "kind", "device", "shape", "dtype"} <= set(data["placements"][0])


def test_format_lists_message_cause_and_fix() -> None:
    case = bm.loss_weights_on_cpu()
    text = check_devices(case.model, case.batch, **case.check_kwargs).text()
    assert "expected device: meta" in text
    assert "1. [error] `criterion.weight` is on cpu, but the model is on meta." in text
    assert "   fix: move it with the model: `criterion.to('meta')` for a module" in text


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (
            (5,),
            {},
            r"^check_devices: model must be a torch\.nn\.Module or None, got int: 5\. Fix: pass the model first "
            r"and batches after it, check_devices\(model, batch\); for batches alone, check_devices\(None, batch\)",
        ),
        (
            (nn.Linear(2, 2),),
            {"optimizer": "adam"},
            r"^check_devices: optimizer must be a torch\.optim\.Optimizer or None, got str: 'adam'\.",
        ),
    ],
)
def test_arguments_of_the_wrong_type_are_named(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):  # not an AttributeError from inside
        check_devices(*args, **kwargs)


def test_print_of_a_report_is_the_text_the_cli_shows() -> None:
    report = check_devices(torch.nn.Linear(2, 2), torch.ones(1, 2))
    assert str(report) == report.text() and str(report).startswith("expected device: cpu")
    assert report._repr_html_().startswith("<pre>expected device: cpu") and "DeviceReport(" not in str(report)

"""explain: every recorded wording of PyTorch's device and dtype errors, parsed and put in user terms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import buggy_models as bm
import tangtoc as tt
from tangtoc.diagnose import DeviceMismatchError, device_guard, explain, parse_device_error
from tangtoc.diagnose.dtypes import dtype_cause, parse_dtype_error
from tangtoc.diagnose.roles import canonical_op, likely_cause, op_name, role_of

DATA = Path(__file__).parent / "data"
# A public report: owner/repo#123, "owner/repo PR #123" or "owner/repo issue #123".
REFERENCE = re.compile(r"[\w.-]+/[\w.-]+(?:#| PR #| issue #)\d+")


def recorded(file: str) -> list[tuple[str, dict[str, str], str, str]]:
    """(name, expectations, message, source) for every block of a tests/data file."""
    blocks = []
    for chunk in re.split(r"^=== ", (DATA / file).read_text(), flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        lines = body.splitlines()
        expect_line = next(line for line in lines if line.startswith("# expect:"))
        expect = dict(item.strip().split("=", 1) for item in expect_line.removeprefix("# expect:").split("; "))
        source = " ".join(
            line.removeprefix("#").strip() for line in lines if line.startswith("#") and line is not expect_line
        )
        message = "\n".join(line for line in lines if not line.startswith("#")).strip()
        blocks.append((name.strip(), expect, message, source))
    return blocks


def shown(**fields: str | torch.dtype | None) -> dict[str, str]:
    """Parsed fields as the data files write them: operations by canonical name, dtypes short, "-" for None."""
    out = {}
    for key, value in fields.items():
        if key == "op" and isinstance(value, str):
            value = canonical_op(value) or op_name(value)
        out[key] = "-" if value is None else str(value).removeprefix("torch.")
    return out


RECORDED = [b[:3] for b in recorded("device_errors.txt")]
RECORDED_DTYPE = [b[:3] for b in recorded("dtype_errors.txt")]
SOURCES = [b[3] for b in recorded("device_errors.txt") + recorded("dtype_errors.txt")]


def test_the_data_files_cover_every_wording_the_issues_list() -> None:
    wordings = {expect["wording"] for _, expect, _ in RECORDED}
    # issue 4: old "found at least two devices ... (when checking argument ...)", new "but got X is on",
    # elementwise, conv "Input type ... weight type", indexing, torch.compile FakeTensor; issue 11: torch.where,
    # 1.3-1.5's "expected device", generators, MPS, meta, XPU; issue 17: the bare stem the article quotes
    assert {"same-device", "got-is-on", "two-devices", "conv-type", "index", "compiled"} <= wordings
    assert {"where", "expected-got", "generator", "mps-placeholder", "meta-copy", "stem"} <= wordings
    assert any("xpu" in message for _, _, message in RECORDED)
    dtype_wordings = {expect["wording"] for _, expect, _ in RECORDED_DTYPE}
    assert {"mat1-mat2", "conv-dtype", "scalar-type", "found-dtype"} <= dtype_wordings
    assert len(RECORDED) >= 60 and len(RECORDED_DTYPE) >= 20


def test_at_least_forty_recorded_messages_cite_the_public_report_they_come_from() -> None:
    assert sum(bool(REFERENCE.search(source)) for source in SOURCES) >= 40


@pytest.mark.parametrize(("name", "expect", "message"), RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_message_is_parsed(name: str, expect: dict[str, str], message: str) -> None:
    info = parse_device_error(message)
    assert info is not None, f"{name}: not recognised"
    got = shown(wording=info.wording, op=info.op, argument=info.argument)
    got |= shown(culprit=info.culprit_device, expected=info.expected_device)
    if "location" in expect:
        got["location"] = info.location or "-"
    want = {k: v for k, v in expect.items() if k != "says"}
    assert got == want


@pytest.mark.parametrize(("name", "expect", "message"), RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_message_is_explained_with_a_fix(name: str, expect: dict[str, str], message: str) -> None:
    text = explain(message)
    assert expect["says"] in text
    assert "Fix: " in text and "Most likely cause: " in text
    assert text.startswith("PyTorch said: ")


def test_aten_argument_is_translated_into_user_terms() -> None:
    text = explain(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        "(when checking argument for argument mat1 in method wrapper_CUDA_addmm)"
    )
    assert "Operation: addmm — the matrix multiply of a Linear layer" in text
    assert (
        "Culprit: `mat1` (the input of a Linear layer (activations, or your batch)) is on cpu; the other "
        "tensors are on cuda:0." in text
    )
    assert "Fix: move the batch before the forward pass: `batch = tt.to_device(batch, 'cuda:0')`" in text


def test_compiled_error_points_at_the_users_line() -> None:
    message = next(m for n, _, m in RECORDED if n == "compile-graph-break-2.13")
    text = explain(message)
    assert "This came from torch.compile" in text
    assert "At: <string>:3" in text
    assert "Operation: linear — a Linear layer" in text


def test_live_meta_error_is_explained_at_the_line_that_raised() -> None:
    with pytest.raises(RuntimeError) as caught:
        torch.randn(3, device="meta") + torch.randn(3)  # PyTorch's own check: meta vs a CPU operand
    text = explain(caught.value)
    assert "PyTorch said: Tensor on device cpu is not on the expected device meta!" in text
    assert re.search(r"At: tests/test_diagnose_explain.py:\d+", text)


def test_a_live_meta_model_moved_with_to_is_told_to_use_to_empty() -> None:
    model = nn.Linear(2, 2, device="meta")  # as accelerate's init_empty_weights builds it: shapes, no values
    with pytest.raises(NotImplementedError) as caught:
        model.to("cpu")
    text = explain(caught.value)
    assert "Culprit: a tensor is on meta." in text
    assert "Fix: allocate instead of copying, then fill the weights: `model.to_empty(device=device)`" in text


def test_explain_names_the_users_tensors_when_given_the_model() -> None:
    case = bm.plain_attribute_mask()
    with pytest.raises(RuntimeError, match="Tensor on device meta is not on the expected device cpu!") as caught:
        case.run()  # PyTorch's error names neither the mask nor the module
    text = explain(caught.value, model=case.model, inputs=case.batch)
    assert "In what you passed:" in text
    assert "`layers.0.mask` is a tensor stored as a plain attribute" in text
    assert "self.register_buffer('mask', tensor, persistent=False)" in text


def test_explain_lists_tensors_on_the_wrong_device_when_no_classic_cause_applies() -> None:
    model = nn.Linear(4, 2)  # on the CPU, while the message says the CPU side is the odd one
    text = explain(
        "Expected all tensors to be on the same device, but got weight is on cpu, different from other tensors on "
        "cuda:0 (when checking argument in method wrapper_CUDA_addmm)",
        model=model,
    )
    assert "  - on cpu: `weight`, `bias`" in text


def test_explain_says_when_everything_passed_is_on_one_device() -> None:
    text = explain("Tensor on device cpu is not on the expected device meta!", model=nn.Linear(2, 2).to("meta"))
    assert text.endswith("In what you passed: every tensor is on one device.")


@pytest.mark.parametrize(
    "message",
    [
        "mat1 and mat2 shapes cannot be multiplied (4x3 and 4x2)",
        # a device-side assert is an out-of-range index or label, not a placement error
        "RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported",
        "../aten/src/ATen/native/cuda/Loss.cu:240: nll_loss_forward_reduce_cuda_kernel_2d: block: [0,0,0], thread: "
        "[0,0,0] Assertion `t >= 0 && t < n_classes` failed.",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
        # a bad device string (rupeshs/fastsdcpu#355), not two devices meeting
        "RuntimeError: Expected one of cpu, cuda, ipu, xpu, mkldnn, opengl, opencl, ideep, hip, ve, fpga, maia, xla, "
        "lazy, vulkan, mps, meta, hpu, mtia, privateuseone device type at start of device string: GPU",
    ],
)
def test_what_is_neither_a_placement_nor_a_dtype_error_gets_a_note_not_an_exception(message: str) -> None:
    assert parse_device_error(message) is None and parse_dtype_error(message) is None
    first = message.splitlines()[0]
    assert explain(RuntimeError(message)).startswith(
        f"Not a device-placement or dtype error that tangtoc recognises: {first!r}."
    )


def test_an_empty_message_gets_a_note() -> None:
    assert explain("").startswith("Not a device-placement or dtype error that tangtoc recognises: '(empty message)'")


def test_the_guards_own_error_is_returned_as_is() -> None:
    case = bm.embedding_fed_cpu_ids()
    with pytest.raises(DeviceMismatchError) as caught, device_guard(case.model):
        case.run()
    assert explain(caught.value) == str(caught.value)


@pytest.mark.parametrize(
    ("name", "canonical", "plain"),
    [
        ("wrapper_CUDA___slow_conv2d_forward", "convolution", "slow_conv2d_forward"),
        ("wrapper_CUDA__index_select", "index_select", "index_select"),
        ("_th_index_select", "index_select", "index_select"),
        ("_thnn_conv2d_forward", "convolution", "conv2d_forward"),
        ("aten._foreach_lerp_.List", "optimizer", "foreach_lerp_"),
        ("aten.addmm.default", "addmm", "addmm"),
        ("__radd__", "elementwise", "__radd__"),
        ("Tensor.__getitem__", "index", "__getitem__"),
        ("masked_fill_", "masked_fill", "masked_fill_"),
        ("wrapper_CUDA_nll_loss_forward", "nll_loss", "nll_loss_forward"),
        ("aten._to_copy.default", None, "to_copy"),
    ],
)
def test_operation_names_in_every_spelling(name: str, canonical: str | None, plain: str) -> None:
    assert canonical_op(name) == canonical
    assert op_name(name) == plain


def test_argument_roles_with_and_without_the_operation() -> None:
    assert role_of("embedding", "input").kind == "index"  # F.embedding(input=ids, weight=table)
    assert role_of("nll_loss_forward", "weight").kind == "loss-weights"
    assert role_of(None, "hx").kind == "hidden"  # distinctive name, operation unknown
    assert role_of(None, "weight") is None  # too generic to guess
    assert role_of("some_new_op", "mat2") is None


def test_two_accelerators_are_never_blamed_on_a_forgotten_to() -> None:
    cause, fix = likely_cause(None, "cuda:1", "cuda:0")
    assert "tensors on two accelerators (cuda:1 and cuda:0)" in cause
    assert "torch.cuda.set_device(local_rank)" in fix


LIVE_CUDA_ERRORS = {
    "linear": lambda: F.linear(torch.randn(2, 3), torch.randn(4, 3, device="cuda")),
    "elementwise": lambda: torch.randn(3, device="cuda") + torch.randn(3),
    "loss-weights": lambda: F.cross_entropy(
        torch.randn(4, 3, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda"), weight=torch.ones(3)
    ),
    "conv": lambda: nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8, device="cuda")),
    "index": lambda: torch.randn(5)[torch.tensor([1], device="cuda")],
    "embedding": lambda: nn.Embedding(10, 3).cuda()(torch.tensor([1, 2])),
    "where": lambda: torch.where(
        torch.ones(3, dtype=torch.bool, device="cuda"), torch.ones(3, device="cuda"), torch.ones(3)
    ),
    "generator": lambda: torch.randperm(5, device="cuda", generator=torch.Generator()),
    "cat": lambda: torch.cat([torch.ones(2, device="cuda"), torch.ones(2)]),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(LIVE_CUDA_ERRORS))
def test_this_pytorchs_own_cuda_wordings_are_recognised(name: str) -> None:
    # The recorded messages cover past releases; this catches a rewording in the installed one.
    with pytest.raises(RuntimeError) as caught:
        LIVE_CUDA_ERRORS[name]()
    info = parse_device_error(caught.value)
    assert info is not None, f"unrecognised wording: {caught.value}"
    assert info.culprit_device in ("cpu", None) or info.expected_device == "cpu"
    assert "Most likely cause: " in explain(caught.value)


# Only the wordings that say where the culprit is: for the others the check below has nothing to compare.
SIDED = [r for r in RECORDED if r[1]["culprit"] != "-"]


@pytest.mark.parametrize(("name", "expect", "message"), SIDED, ids=[r[0] for r in SIDED])
def test_the_fix_never_moves_a_tensor_to_the_device_it_is_already_on(
    name: str, expect: dict[str, str], message: str
) -> None:
    info = parse_device_error(message)
    assert info is not None and info.culprit_device == expect["culprit"]
    fix = next(line for line in explain(message).splitlines() if line.startswith("Fix: "))
    on = info.culprit_device
    # The sentences that address the culprit itself ("create it on ...", "move them with the batch: `ids.to(...)`")
    # must not send it to its own device; moving the *other* tensors there is right (`model.to('cuda:0')`).
    assert not re.search(rf"\b(?:create|move|bring) (?:it|them)\b[^;]*'{re.escape(on)}'", fix), fix
    if info.argument:
        assert f"{info.argument}.to('{on}')" not in fix, fix


def test_every_fixed_cause_belongs_to_a_recorded_wording_and_reaches_the_user() -> None:
    from tangtoc.diagnose.fixed_causes import FIXED

    messages = {expect["wording"]: message for _, expect, message in RECORDED}
    assert set(FIXED) <= set(messages)
    for wording, (cause, fix) in FIXED.items():
        text = explain(messages[wording])
        assert f"Most likely cause: {cause}.\nFix: {fix}" in text, wording


def test_an_operand_on_the_accelerator_among_cpu_tensors_is_not_told_to_go_there() -> None:
    # phil-bergmann/tracking_wo_bnw#172: the run was meant for the CPU, one tensor was on CUDA.
    text = explain(next(m for n, _, m in RECORDED if n == "cat-cpu-run"))
    assert "Culprit: `tensors` (one of the tensors joined) is on cuda:0; the other tensors are on cpu." in text
    assert (
        "Fix: move what stayed behind: `model.to('cuda:0')` and `batch = tt.to_device(batch, 'cuda:0')`, and "
        "create new tensors with `device=x.device`; if you meant to run on the CPU, bring this one back instead "
        "(`.cpu()`)." in text
    )


def test_the_guard_path_addresses_the_side_left_on_the_cpu_too() -> None:
    # The guard and check_devices reach the same rule through likely_cause: a loss weight already on the
    # accelerator must not be told to go there.
    from tangtoc.diagnose.roles import Role, likely_cause

    cause, fix = likely_cause(Role("the class weights of the loss", "loss-weights"), "cuda:0", "cpu")
    assert cause.startswith("the class weights of the loss is on cuda:0 while the operation's other tensors")
    assert "w.to(" not in fix and fix.startswith("move what stayed behind: `model.to('cuda:0')`")


def test_the_articles_own_sentence_is_recognised_by_its_stem() -> None:
    text = tt.explain(RuntimeError("Expected all tensors to be on the same device."))
    assert text.startswith("PyTorch said: Expected all tensors to be on the same device.")
    assert "Note: this is only the start of PyTorch's message" in text
    assert "Most likely cause: two tensors of one operation live on different devices" in text
    assert "`batch = tt.to_device(batch, device)`" in text and "`with tt.device_guard(model):`" in text
    assert "Culprit:" not in text  # the stem names no tensor and no device: nothing is made up


def test_a_stem_in_a_longer_message_still_prefers_the_full_wording() -> None:
    info = parse_device_error(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"
    )
    assert info is not None and info.wording == "two-devices"


@pytest.mark.parametrize(
    ("kernel", "op", "overload"),
    [
        ("wrapper_CUDA_scatter__value", "scatter_", "value"),
        ("wrapper_scatter__value", "scatter_", "value"),
        ("wrapper_CUDA_add_Tensor", "add", "Tensor"),
        ("wrapper_CUDA__index_select", "index_select", None),
        ("wrapper___cat", "cat", None),
        ("wrapper_CUDA___slow_conv2d_forward", "slow_conv2d_forward", None),
    ],
)
def test_kernel_names_are_cleaned_into_operation_and_overload(kernel: str, op: str, overload: str | None) -> None:
    info = parse_device_error(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        f"(when checking argument for argument self in method {kernel})"
    )
    assert info is not None and (info.op, info.overload) == (op, overload)


def test_the_overload_is_shown_after_the_operation() -> None:
    text = explain(next(m for n, _, m in RECORDED if n == "scatter-value-two-gpus"))
    assert "Operation: scatter_ (value) — a gather/scatter" in text


@pytest.mark.parametrize(("name", "expect", "message"), RECORDED_DTYPE, ids=[r[0] for r in RECORDED_DTYPE])
def test_recorded_dtype_message_is_parsed(name: str, expect: dict[str, str], message: str) -> None:
    assert parse_device_error(message) is None, f"{name}: read as a placement error"
    info = parse_dtype_error(message)
    assert info is not None, f"{name}: not recognised"
    got = shown(wording=info.wording, op=info.op, argument=info.argument)
    got |= shown(found=info.found, other=info.other, expected=info.expected)
    assert got == {k: v for k, v in expect.items() if k != "says"}


@pytest.mark.parametrize(("name", "expect", "message"), RECORDED_DTYPE, ids=[r[0] for r in RECORDED_DTYPE])
def test_recorded_dtype_message_is_explained_with_a_fix(name: str, expect: dict[str, str], message: str) -> None:
    text = explain(message)
    assert text.startswith("PyTorch said: ")
    assert "This is a dtype mismatch, not a device one" in text
    assert expect["says"] in text
    assert "Fix: " in text and "Most likely cause: " in text


def test_numpys_float64_through_to_device_is_named_by_its_path() -> None:
    # Issue 17, trap 2: tt.to_device keeps NumPy's float64, as torch.from_numpy does; a float32 model refuses it.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    batch = tt.to_device({"x": np.random.randn(5, 4), "y": np.array([0, 1, 1, 0, 1])}, "cpu")
    with pytest.raises(RuntimeError, match="mat1 and mat2 must have the same dtype") as caught:
        model(batch["x"])
    text = explain(caught.value, model=model, inputs=batch)
    assert "Culprit: `mat1` (the input of a Linear layer (activations, or your batch)) is float64; `mat2` " in text
    assert "NumPy arrays are float64 by default" in text
    assert "`tt.to_device(batch, device, float_dtype=torch.float32)`" in text
    assert "`tt.as_tensor(arr, device, dtype=torch.float32)`" in text
    assert text.endswith("In what you passed: in float64: `input['x']`")
    assert re.search(r"At: tests/test_diagnose_explain.py:\d+", text)


def test_a_wording_without_dtypes_takes_them_from_what_was_passed() -> None:
    model = nn.Linear(3, 2)
    batch = {"features": torch.from_numpy(np.random.randn(2, 3)), "ids": torch.tensor([1, 2])}
    text = explain("RuntimeError: mat1 and mat2 must have the same dtype", model=model, inputs=batch)
    assert "Culprit: `mat1` (the input of a Linear layer (activations, or your batch)) is float64;" in text
    assert "the message does not name the dtypes" not in text
    assert text.endswith("In what you passed: in float64: `input['features']`")


def test_a_float64_weight_is_blamed_on_the_model_not_on_numpy_data() -> None:
    text = explain("mat1 and mat2 must have the same dtype, but got Float and Double")
    assert "Culprit: `mat2` (the weight of a Linear layer) is float64; `mat1` (the input of a Linear layer" in text
    assert "Fix: convert the model once after building it, `model.to(torch.float32)`" in text


def test_a_live_conv_dtype_error_names_the_input() -> None:
    model = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError) as caught:
        model(x)
    text = explain(caught.value, model=model, inputs=x)
    assert "Culprit: `input` (the input of a Conv layer (an image batch or a feature map)) is float64" in text
    assert text.endswith("In what you passed: in float64: `input`")


@pytest.mark.parametrize(
    ("found", "expected", "weights", "cause", "fix"),
    [
        (torch.float64, torch.float32, False, "NumPy arrays are float64 by default", "`x = x.float()`"),
        (torch.float64, torch.bfloat16, False, "computes in bfloat16", "float_dtype=torch.bfloat16"),
        (torch.float64, torch.float32, True, "`model.double()`", "`model.to(torch.float32)`"),
        (torch.float32, torch.float64, False, "another tensor of the operation is float64", "float_dtype="),
        (torch.float32, torch.float16, False, "`model.half()`", "torch.autocast(device_type, dtype=...)"),
        (torch.int64, torch.float32, False, "an integer tensor (int64)", "`y = y.to(torch.float32)`"),
    ],
)
def test_dtype_cause_for_the_guard(
    found: torch.dtype, expected: torch.dtype, weights: bool, cause: str, fix: str
) -> None:
    got_cause, got_fix = dtype_cause(found, expected, "`x`", weights)
    assert cause in got_cause and fix in got_fix
    assert got_cause.startswith("`x` is ")


def test_explain_passes_on_the_guards_dtype_message_unchanged() -> None:
    from tangtoc.diagnose import DtypeMismatchError, device_guard, explain

    model = torch.nn.Linear(8, 3)
    with pytest.raises(DtypeMismatchError) as caught, device_guard(model):
        model(torch.randn(4, 8, dtype=torch.float64))
    assert explain(caught.value) == str(caught.value)
    assert "float64" in str(caught.value)

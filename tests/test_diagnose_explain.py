"""explain: every recorded wording of PyTorch's device errors, parsed and put in user terms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import buggy_models as bm
from tangtoc.diagnose import DeviceMismatchError, device_guard, explain, parse_device_error
from tangtoc.diagnose.roles import canonical_op, likely_cause, op_name, role_of

DATA = Path(__file__).parent / "data" / "device_errors.txt"


def recorded() -> list[tuple[str, dict[str, str], str]]:
    """(name, expectations, message) for every block of tests/data/device_errors.txt."""
    blocks = []
    for chunk in re.split(r"^=== ", DATA.read_text(), flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        lines = body.splitlines()
        expect_line = next(line for line in lines if line.startswith("# expect:"))
        expect = dict(item.strip().split("=", 1) for item in expect_line.removeprefix("# expect:").split("; "))
        message = "\n".join(line for line in lines if not line.startswith("#")).strip()
        blocks.append((name.strip(), expect, message))
    return blocks


RECORDED = recorded()


def test_the_data_file_covers_every_wording_the_issue_lists() -> None:
    wordings = {expect["wording"] for _, expect, _ in RECORDED}
    # old "found at least two devices ... (when checking argument ...)", new "but got X is on", elementwise,
    # conv "Input type ... weight type", indexing, torch.compile FakeTensor
    assert {"same-device", "got-is-on", "two-devices", "conv-type", "index", "compiled"} <= wordings
    assert len(RECORDED) >= 30


@pytest.mark.parametrize(("name", "expect", "message"), RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_message_is_parsed(name: str, expect: dict[str, str], message: str) -> None:
    info = parse_device_error(message)
    assert info is not None, f"{name}: not recognised"
    op = None if info.op is None else canonical_op(info.op) or op_name(info.op)
    got = {
        "wording": info.wording,
        "op": op or "-",
        "argument": info.argument or "-",
        "culprit": info.culprit_device or "-",
        "expected": info.expected_device or "-",
    }
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


def test_not_a_device_error_gets_a_note_not_an_exception() -> None:
    text = explain(ValueError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x2)"))
    assert text.startswith("Not a device-placement error that tangtoc recognises: 'mat1 and mat2 shapes cannot")
    assert explain("").startswith("Not a device-placement error that tangtoc recognises: '(empty message)'")


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

"""tangtoc.step: how a batch becomes a loss, decided once; the precision's peak; the work a batch counts."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tangtoc.step import (
    LossRule,
    Precision,
    batch_size_of,
    default_optimizer,
    peak_key,
    resolve_precision,
    work_counter,
)


class Returns(nn.Module):
    """A model whose forward returns ``make(loss, logits)``, the loss a real one (it requires grad)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.make = make

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        logits = self.lin(x)
        loss = F.cross_entropy(logits, y) if y is not None else None
        return self.make(loss, logits)


class Output(OrderedDict):
    """Like transformers' ModelOutput: a mapping of its non-None fields, with attributes too."""

    def __init__(self, loss: torch.Tensor | None, logits: torch.Tensor) -> None:
        super().__init__({k: v for k, v in (("loss", loss), ("logits", logits)) if v is not None})
        self.loss, self.logits = loss, logits


class Attr:
    def __init__(self, loss: torch.Tensor | None, logits: torch.Tensor) -> None:
        self.loss, self.logits = loss, logits


X, Y = torch.randn(5, 4), torch.randint(0, 3, (5,))


@pytest.mark.parametrize(
    "make",
    [
        lambda loss, logits: loss,  # the loss itself
        lambda loss, logits: (logits, loss),  # nanoGPT
        lambda loss, logits: [loss, logits.detach().sum()],  # a detached 0-dim metric beside it is no loss
        lambda loss, logits: {"loss": loss, "logits": logits},
        Output,  # a Hugging Face ModelOutput
        Attr,  # any object with .loss
    ],
    ids=["tensor", "tuple", "list-with-metric", "dict", "model-output", "attribute"],
)
def test_the_loss_is_found_in_what_models_return(make: Any) -> None:
    model = Returns(make)
    rule = LossRule()
    loss = rule.first(model, (X, Y))
    expected = F.cross_entropy(model.lin(X), Y)
    assert loss.dim() == 0 and loss.requires_grad and torch.equal(loss, expected)
    assert torch.equal(rule.bind(model)((X, Y)), expected)  # the decided rule finds it again


def test_a_mapping_batch_is_passed_as_keywords() -> None:
    model = Returns(lambda loss, logits: loss)
    rule = LossRule()
    assert torch.equal(rule.first(model, {"y": Y, "x": X}), F.cross_entropy(model.lin(X), Y))


def test_the_rule_is_decided_once_and_not_searched_again() -> None:
    calls: list[str] = []

    def pick(out: Any) -> torch.Tensor:
        calls.append("pick")
        return out[1]

    model = Returns(lambda loss, logits: (logits, loss))
    rule = LossRule(loss_from=pick)
    rule.first(model, (X, Y))
    fast = rule.bind(model)
    fast((X, Y))
    assert calls == ["pick", "pick"] and rule.decided


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda loss, logits: (loss, loss * 2), r"tuple of 2 \(\[0\] Tensor\(\) float32, requires grad, \[1\] .*2 are"),
        (lambda loss, logits: (logits, logits.sum().detach()), r"requires grad, and none is\. Fix: loss_from=<index>"),
        (lambda loss, logits: Output(None, logits), r"returned a Output without a loss \(logits\).*'labels'"),
        (lambda loss, logits: logits, r"must return the loss as a one-element tensor, got shape \(5, 3\)"),
        (lambda loss, logits: "text", r"must return the loss as a one-element tensor, got str"),
    ],
    ids=["two-losses", "no-loss-in-tuple", "output-without-loss", "logits", "not-a-tensor"],
)
def test_ambiguous_or_missing_losses_name_what_was_found(make: Any, message: str) -> None:
    rule = LossRule()
    with pytest.raises(ValueError, match=message):
        rule.first(Returns(make), (X, Y))
    assert not rule.decided  # nothing half-decided for a later batch to trust


@pytest.mark.parametrize(
    ("loss_from", "make"),
    [
        (0, lambda loss, logits: (loss, loss * 2)),
        ("total", lambda loss, logits: {"total": loss, "aux": loss * 2}),
        ("main", lambda loss, logits: type("O", (), {"main": loss, "aux": loss * 2})()),
        (lambda out: out[0] + out[1], lambda loss, logits: (loss, loss * 2)),
    ],
    ids=["index", "key", "attribute", "function"],
)
def test_loss_from_settles_it(loss_from: Any, make: Any) -> None:
    model = Returns(make)
    loss = LossRule(loss_from=loss_from).first(model, (X, Y))
    base = F.cross_entropy(model.lin(X), Y)
    assert torch.allclose(loss, 3 * base if callable(loss_from) else base)


def test_a_wrong_loss_from_names_what_there_is() -> None:
    model = Returns(lambda loss, logits: {"loss": loss, "logits": logits})
    with pytest.raises(
        ValueError, match=r"loss_from='total', but the model's dict has no such key .*keys: loss, logits"
    ):
        LossRule(loss_from="total").first(model, (X, Y))
    with pytest.raises(ValueError, match=r"loss_from=5 is an index, but the model returned Tensor"):
        LossRule(loss_from=5).first(Returns(lambda loss, logits: loss), (X, Y))
    with pytest.raises(ValueError, match="Pass one of them"):
        LossRule(F.cross_entropy, loss_from="loss")
    with pytest.raises(TypeError, match="loss_from must be a key or attribute name, an index or a function"):
        LossRule(loss_from=1.5)  # type: ignore[arg-type]


def test_a_model_that_does_not_take_the_targets_is_explained() -> None:
    """advise --factory returning (model, (x, y)) without a loss_fn: torch says only "forward() takes 2
    positional arguments but 3 were given"."""
    with pytest.raises(
        ValueError,
        match=r"^without a loss_fn the model is called as model\(\*batch\).*tuple of 2 and the model's forward\(input",
    ):
        LossRule(who="").first(nn.Linear(4, 3), (X, Y))


def test_with_a_loss_fn_a_mapping_gives_its_labels() -> None:
    model = Returns(lambda loss, logits: logits)
    rule = LossRule(F.cross_entropy)
    loss = rule.first(model, {"x": X, "labels": Y})
    assert torch.equal(loss, F.cross_entropy(model.lin(X), Y))
    with pytest.raises(ValueError, match=r"this batch has no 'labels' key \(keys: x, y\)"):
        LossRule(F.cross_entropy).first(model, {"x": X, "y": Y})
    with pytest.raises(ValueError, match=r"fit: a loss_fn trains on batches \(inputs, targets\), got a tuple of 3"):
        LossRule(F.cross_entropy).first(model, (X, Y, Y))


def test_under_no_grad_evaluation_finds_the_loss_too() -> None:
    model = Returns(lambda loss, logits: (logits, loss))
    with torch.no_grad():
        loss = LossRule().first(model, (X, Y), training=False)
    assert loss.dim() == 0
    with torch.no_grad(), pytest.raises(ValueError, match="does not require grad"):
        LossRule().first(Returns(lambda loss, logits: loss), (X, Y))


@pytest.mark.parametrize(
    ("precision", "peaks", "dtype", "kind", "key"),
    [
        ("fp32", {"float32": 1, "tf32": 8}, None, "matmul", "float32"),
        ("tf32", {"float32": 1, "tf32": 8}, None, "matmul", "tf32"),
        ("tf32", {"float32": 1}, None, "matmul", "float32"),  # no TF32 on the part
        ("fp32", {"float32": 1, "tf32": 8}, "float32", "conv", "tf32"),
        ("bf16", {"float32": 1, "bfloat16": 9, "float16": 9}, None, "matmul", "bfloat16"),
        ("bf16", {"float32": 1, "float16": 9}, None, "matmul", "float16"),  # a T4: fp16 autocast
        ("fp16", {"float32": 1, "bfloat16": 9, "float16": 9}, None, "matmul", "float16"),
    ],
)
def test_peak_key(precision: str, peaks: dict, dtype: str | None, kind: str, key: str) -> None:
    assert peak_key(precision, peaks, dtype=dtype, kind=kind) == key


def test_fit_and_advise_precisions_take_their_peaks() -> None:
    peaks = {"float32": 60e12, "tf32": 490e12, "bfloat16": 990e12}
    assert Precision.exactly("fp32", "cuda").peak_flops(peaks) == 60e12  # advise's fp32: PyTorch's defaults
    assert Precision("fp32", None, "cuda").peak_flops(peaks) == 490e12  # fit's fp32 runs TF32 matmuls
    assert resolve_precision("fp32", torch.device("cpu")).peak_flops(None) is None
    with pytest.raises(ValueError, match="precision must be fp32, tf32, bf16 or fp16, got 'fp8'"):
        Precision.exactly("fp8", "cpu")


def test_one_default_optimizer_fused_on_cuda() -> None:
    params = list(nn.Linear(2, 2).parameters())
    cpu = default_optimizer(params, "cpu")
    assert isinstance(cpu, torch.optim.AdamW) and cpu.defaults["lr"] == 1e-3 and not cpu.defaults["fused"]
    assert default_optimizer(params, "cuda").defaults["fused"] is True


def test_tokens_are_input_ids_without_padding() -> None:
    ids = torch.randint(0, 100, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 3:] = 0  # 3 padded positions
    batch = {"attention_mask": mask, "input_ids": ids, "labels": ids}
    samples, tokens, flops = work_counter(nn.Linear(1, 1), batch)(batch)
    assert samples == 4 and isinstance(tokens, torch.Tensor) and int(tokens) == 21 and flops == 0.0
    assert work_counter(nn.Linear(1, 1), (ids, ids))((ids, ids))[:2] == (4, 24)  # (idx, targets): the ids
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    assert work_counter(nn.Linear(1, 1), (x, y))((x, y))[:2] == (4, 0)  # no token ids: labels are no tokens


def test_batch_size_of_any_batch() -> None:
    import numpy as np

    assert batch_size_of({"input_ids": torch.zeros(3, 5)}) == 3
    assert batch_size_of((np.zeros((7, 2)), np.zeros(7))) == 7
    with pytest.raises(ValueError, match="holds no tensor"):
        batch_size_of(["text"])


def test_fit_takes_loss_from() -> None:
    import tangtoc as tt

    model = Returns(lambda loss, logits: (loss, loss * 2))  # two candidates: fit cannot choose
    with pytest.raises(ValueError, match="fit: the model returned a tuple of 2"):
        tt.fit(model, [(X, Y)], steps=1, progress=False, device="cpu")
    before = float(F.cross_entropy(model.lin(X), Y).detach())  # the one step's loss, before its update
    result = tt.fit(model, [(X, Y)], steps=1, log_every=1, progress=False, device="cpu", loss_from=0)
    assert result.loss == pytest.approx(before, rel=1e-6)
    with pytest.raises(TypeError, match="fit: loss_from must be a key or attribute name"):
        tt.fit(model, [(X, Y)], steps=1, progress=False, device="cpu", loss_from=1.5)  # type: ignore[arg-type]

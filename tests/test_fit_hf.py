"""The models people have, trained by tt.fit and advised by tt.advise with no adapter code: Hugging Face models
(tiny configs built here, nothing downloaded) on dict and BatchEncoding batches, and a nanoGPT-style model that
returns ``(logits, loss)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tangtoc as tt

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # the tiny configs' token ids outside the vocabulary: not used here

VOCAB, SEQ = 128, 16


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def _bert_classifier() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _token_batches(n: int, *, labels: str = "ids", batch: int = 4) -> list[dict[str, torch.Tensor]]:
    """Learnable token data: each sequence counts up from a random start, so the next token is predictable."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (batch, 1), generator=g)
        ids = (start + torch.arange(SEQ)) % VOCAB
        mask = torch.ones_like(ids)
        mask[0, SEQ - 4 :] = 0  # some padding
        targets = ids if labels == "ids" else (start.squeeze(1) % 3)  # classes: the start, mod 3
        out.append({"input_ids": ids, "attention_mask": mask, "labels": targets})
    return out


def _fit(model: nn.Module, data: Any, steps: int = 30, **kwargs: Any) -> tt.FitResult:
    return tt.fit(model, data, steps=steps, log_every=5, progress=False, device="cpu", **kwargs)


def _falls(result: tt.FitResult) -> tuple[float, float]:
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < 0.9 * losses[0], losses
    return losses[0], losses[-1]


def test_a_causal_lm_trains_on_dict_batches() -> None:
    model = _gpt2()
    result = _fit(model, _token_batches(8), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3))
    _falls(result)
    # tokens/s counts input_ids without the padding: 4 x 16 - 4 per batch
    record = result.history[-1]
    assert record["tokens_per_s"] == pytest.approx(record["samples_per_s"] * 60 / 4)


def test_a_causal_lm_trains_on_batch_encodings() -> None:
    batches = [transformers.BatchEncoding(b) for b in _token_batches(8)]
    model = _gpt2()
    _falls(_fit(model, batches, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3)))


def test_a_sequence_classifier_trains_with_its_labels() -> None:
    model = _bert_classifier()
    data = _token_batches(8, labels="class", batch=8)
    _falls(_fit(model, data, steps=40, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3)))


def test_a_mapping_batch_with_a_loss_fn_gives_it_the_labels() -> None:
    model = _bert_classifier()
    data = _token_batches(8, labels="class", batch=8)

    def loss_fn(output: Any, labels: torch.Tensor) -> torch.Tensor:
        assert output.loss is None  # the model was not given the labels: the loss is ours
        return F.cross_entropy(output.logits, labels)

    _falls(_fit(model, data, steps=40, loss_fn=loss_fn, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3)))


class NanoGPT(nn.Module):
    """Written the nanoGPT way: ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.block = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, VOCAB)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        h = self.embed(idx)
        logits = self.head(h + self.block(h))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
        return logits, loss


def _nano_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b["input_ids"], (b["input_ids"] + 1) % VOCAB) for b in _token_batches(n)]


def test_a_nanogpt_style_model_trains() -> None:
    torch.manual_seed(0)
    model = NanoGPT()
    result = _fit(model, _nano_batches(8), optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3))
    _falls(result)
    assert result.tokens_per_s == pytest.approx(result.samples_per_s * SEQ)


@pytest.mark.parametrize("which", ["gpt2", "nanogpt"])
def test_resuming_is_bitwise(which: str, tmp_path: Path) -> None:
    make, data = (_gpt2, _token_batches(6)) if which == "gpt2" else (NanoGPT, _nano_batches(6))
    torch.manual_seed(0)
    straight = make()
    _fit(straight, data, steps=6)
    torch.manual_seed(0)
    first = make()
    _fit(first, data, steps=3, checkpoint_dir=tmp_path)
    torch.manual_seed(0)
    resumed = make()
    result = _fit(resumed, data, steps=6, checkpoint_dir=tmp_path)
    assert result.start_step == 3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("which", ["gpt2", "nanogpt"])
def test_advise_measures_and_counts_them(which: str) -> None:
    model, batch = (_gpt2(), _token_batches(1)[0]) if which == "gpt2" else (NanoGPT(), _nano_batches(1)[0])
    advice = tt.advise(model, batch, steps=100, targets=["h100"], min_time=0.01, max_time=0.2, threads=1)
    assert advice.batch_size == 4 and advice.measured[0].device == "cpu"
    assert advice.count is not None and advice.count.flops > 0 and advice.predicted
    assert "aten._fused_adamw_" in {r.op for r in advice.count.by_op()}  # fit's optimizer, as on CUDA

"""tangtoc.models: exact GPT-2 parameter count, FLOPs formulas, the forward contract fit relies on, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tangtoc.data import decode, encode
from tangtoc.models import GPT, GPT_SIZES, MLP, MLP_SIZES, GPTConfig, MLPConfig, gpt_config, mlp_config
from tangtoc.train import CheckpointError, fit


def _on_meta(name: str) -> GPT:
    with torch.device("meta"):  # shapes only: the 124M model costs no memory and no init time
        return GPT(gpt_config(name))


def test_gpt2_has_exactly_the_published_parameter_count() -> None:
    model = _on_meta("gpt2")
    assert model.num_params() == 124_439_808
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_gpt2_flops_per_token_is_6n_plus_attention() -> None:
    model = _on_meta("gpt2")
    n = 124_439_808 - 1024 * 768
    assert model.flops_per_token() == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert model.flops_per_token(seq_len=256) == 6 * n + 12 * 12 * 12 * 64 * 256


def test_sizes_shrink_from_gpt2_to_tiny() -> None:
    counts = [_on_meta(name).num_params() for name in GPT_SIZES]
    assert GPT_SIZES[0] == "gpt2" and GPT_SIZES[-1] == "tiny" and "mini" in GPT_SIZES
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n_head", 0, r"GPTConfig.n_head must be a positive int, got 0"),
        ("vocab_size", 2.5, r"GPTConfig.vocab_size must be a positive int"),
        ("n_embd", 100, r"GPTConfig.n_embd must be divisible by n_head, got n_embd=100, n_head=12"),
        ("dropout", 1.0, r"GPTConfig.dropout must be a float in \[0, 1\)"),
        ("block_size", True, r"GPTConfig.block_size must be a positive int"),
    ],
)
def test_gpt_config_names_the_bad_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{field: value})


def test_gpt_config_by_name_and_overrides() -> None:
    assert gpt_config("gpt2", vocab_size=256).vocab_size == 256
    with pytest.raises(ValueError, match=r"unknown GPT size 'huge'; expected one of gpt2, small, mini, tiny"):
        gpt_config("huge")
    with pytest.raises(TypeError, match=r"unknown field\(s\) n_layers"):
        gpt_config("tiny", n_layers=3)
    with pytest.raises(ValueError, match=r"GPTConfig.n_layer must be a positive int, got -1"):
        gpt_config("tiny", n_layer=-1)


def test_forward_returns_logits_or_the_loss() -> None:
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny"))
    idx = torch.randint(0, 256, (3, 16))
    targets = torch.randint(0, 256, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 256)
    loss = model(idx, targets)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1)))
    # Untrained, the prediction is close to uniform: loss ~ ln(256).
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.3


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny")).eval()
    idx = torch.randint(0, 256, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    # Changing tokens 8.. must not change the predictions at positions 0..7.
    torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8])
    assert not torch.allclose(model(idx)[:, 8:], model(changed)[:, 8:])


def test_too_long_sequence_says_the_limit() -> None:
    model = GPT(gpt_config("tiny"))
    with pytest.raises(ValueError, match=r"sequence length 33 exceeds block_size 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"GPT expects token ids of shape \(batch, time\), got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))


def test_generate_appends_tokens_reproducibly_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny"))
    start = torch.zeros(2, 1, dtype=torch.long)
    out1 = model.generate(start, 40, top_k=5, generator=torch.Generator().manual_seed(1))
    out2 = model.generate(start, 40, top_k=5, generator=torch.Generator().manual_seed(1))
    assert out1.shape == (2, 41)  # longer than block_size: the context is cropped, not rejected
    assert torch.equal(out1, out2)
    assert model.training
    greedy = model.generate(start, 3, top_k=1)
    assert torch.equal(greedy, model.generate(start, 3, top_k=1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": -1}, r"max_new_tokens must be >= 0, got -1"),
        ({"max_new_tokens": 1, "temperature": 0.0}, r"temperature must be > 0, got 0.0; for greedy decoding use top_k"),
        ({"max_new_tokens": 1, "top_k": 0}, r"top_k must be in \[1, 256\] or None, got 0"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPT(gpt_config("tiny")).generate(torch.zeros(1, 1, dtype=torch.long), **kwargs)


def test_encode_and_generate_compose() -> None:
    model = GPT(gpt_config("tiny"))
    out = model.generate(encode("def ")[None], 5, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.long and decode(out[0]).startswith("def ")
    as_bytes = torch.tensor([list(b"def ")], dtype=torch.uint8)  # a byte tensor is widened, not refused
    same = model.generate(as_bytes, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, out)


@pytest.mark.parametrize(
    ("idx", "error", "match"),
    [
        (torch.zeros(1, 3), TypeError, r"generate needs token ids \(an integer tensor\), got dtype torch.float32"),
        (torch.zeros(3, dtype=torch.long), ValueError, r"shape \(batch, time\) .* got shape \(3,\)\. Fix: .*\[None\]"),
        (encode("")[None], ValueError, r"time >= 1, got shape \(1, 0\)"),
    ],
)
def test_generate_says_what_a_prompt_must_be(idx: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GPT(gpt_config("tiny")).generate(idx, 1)


def test_from_checkpoint_rebuilds_the_trained_gpt_without_its_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", n_layer=1))
    batch = (torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32)))
    fit(model, [batch], steps=2, checkpoint_dir=tmp_path, progress=False, device="cpu")
    for path in (tmp_path, tmp_path / "step-00000002.pt"):  # the run's folder means its newest checkpoint
        loaded = GPT.from_checkpoint(path, device="cpu")
        assert loaded.config == model.config and not loaded.training
        theirs = model.state_dict()
        assert loaded.state_dict().keys() == theirs.keys()
        assert all(torch.equal(v, theirs[k]) for k, v in loaded.state_dict().items())


def test_from_checkpoint_refuses_what_holds_no_gpt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*missing: no such file or folder"):
        GPT.from_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint \(no step-NNNNNNNN\.pt file\)"):
        GPT.from_checkpoint(tmp_path)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    fit(MLP(MLPConfig(in_features=4, out_features=2)), [(x, y)], loss_fn=F.cross_entropy, steps=1,
        checkpoint_dir=tmp_path, progress=False, device="cpu")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"holds a MLP\(in_features=4, hidden=64, .*\), not a GPT"):
        GPT.from_checkpoint(tmp_path)


def test_mlp_shapes_and_flops() -> None:
    model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3, depth=2))
    assert model(torch.randn(5, 8)).shape == (5, 3)
    assert model.flops_per_sample() == 6 * (8 * 16 + 16 * 16 + 16 * 3)
    linear = MLP(MLPConfig(in_features=4, out_features=2, depth=0))
    assert [type(m).__name__ for m in linear.net] == ["Linear"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden": 0}, r"MLPConfig.hidden must be a positive int, got 0"),
        ({"depth": -1}, r"MLPConfig.depth must be an int >= 0, got -1"),
    ],
)
def test_mlp_config_names_the_bad_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLPConfig(**kwargs)


def test_mlp_sizes_by_name() -> None:
    widths = [mlp_config(name).hidden for name in MLP_SIZES]
    assert widths == sorted(widths, reverse=True)
    assert mlp_config("mini", in_features=784).in_features == 784
    with pytest.raises(ValueError, match=r"unknown MLP size 'huge'; expected one of large, small, mini, tiny"):
        mlp_config("huge")
    with pytest.raises(TypeError, match=r"unknown field\(s\) width"):
        mlp_config("tiny", width=3)

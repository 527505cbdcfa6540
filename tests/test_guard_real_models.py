"""device_guard on working third-party models: silent on every one, exact where plain PyTorch on a GPU would fail.

Models are built from tiny configs in the test (nothing downloaded). Each runs a whole training step on the CPU under
the guard, where nothing may be refused or recorded. Where a model can run on ``meta`` (which plays the GPU here),
the inputs a real user leaves on the CPU — and that the model handles itself — are tried too: the guard must let
them through and only record them. Some transformers models cannot run on ``meta`` with an attention mask (their
padding checks read the mask on the host); those run on the CPU only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from tangtoc.diagnose import DeviceMismatchError, device_guard
from tangtoc.diagnose.guard import OffDeviceInput

transformers = pytest.importorskip("transformers")

META, CPU = torch.device("meta"), torch.device("cpu")
VOCAB = 50


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    transformers.logging.set_verbosity_error()  # tiny configs trip warnings about token ids; they are not the test


def _tiny(model: str, config: str, attn: str = "sdpa", **fields: Any) -> nn.Module:
    """``transformers.<model>`` built from ``transformers.<config>(**fields)``, random weights, nothing downloaded."""
    built = getattr(transformers, config)(**fields)
    built._attn_implementation = attn
    return getattr(transformers, model)(built)


def _gpt2(attn: str = "sdpa") -> nn.Module:
    sizes = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 32}
    return _tiny("GPT2LMHeadModel", "GPT2Config", attn, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, **sizes)


def _bert() -> nn.Module:
    sizes = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    return _tiny("BertForSequenceClassification", "BertConfig", vocab_size=VOCAB, num_labels=3, **sizes)


def _t5() -> nn.Module:
    sizes = {"d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 2, "num_heads": 2}
    tokens = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
    return _tiny("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, **sizes, **tokens)


def _bart() -> nn.Module:
    sizes = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}
    heads = {"encoder_attention_heads": 2, "decoder_attention_heads": 2, "max_position_embeddings": 32}
    tokens = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2}
    return _tiny("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB, **sizes, **heads, **tokens)


def _llama(attn: str = "sdpa") -> nn.Module:
    sizes = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    tokens = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 32}
    return _tiny("LlamaForCausalLM", "LlamaConfig", attn, vocab_size=VOCAB, num_key_value_heads=1, **sizes, **tokens)


def _batch(device: torch.device, labels: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 8), generator=gen)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0  # a padded second sequence
    target = torch.tensor([0, 2]) if labels == "class" else ids
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": target.to(device)}


HF_MODELS: dict[str, tuple[Callable[[], nn.Module], str, dict[str, Any]]] = {
    "GPT2LMHeadModel": (_gpt2, "tokens", {}),
    "BertForSequenceClassification": (_bert, "class", {}),
    "T5ForConditionalGeneration": (_t5, "tokens", {}),
    "BartForConditionalGeneration": (_bart, "tokens", {}),
    "LlamaForCausalLM": (_llama, "tokens", {"use_cache": False}),
    "LlamaForCausalLM, use_cache=True": (_llama, "tokens", {"use_cache": True}),
}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_a_transformers_training_step_on_the_cpu_is_silent(name: str) -> None:
    build, labels, extra = HF_MODELS[name]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = device_guard(model, optimizer=opt)
    with guard:
        out = model(**_batch(CPU, labels), **extra)
        out.loss.backward()
        opt.step()
        if extra.get("use_cache"):  # one decoding step on the cache, as generate() does
            model(input_ids=torch.tensor([[5], [6]]), cache=out.past_key_values, use_cache=True)
    assert torch.isfinite(out.loss)
    assert guard.off_device_inputs == ()


@pytest.mark.parametrize("build", [_gpt2, _t5], ids=["GPT2LMHeadModel", "T5ForConditionalGeneration"])
def test_generate_with_its_cache_on_the_cpu_is_silent(build: Callable[[], nn.Module]) -> None:
    model = build().eval()
    ids = _batch(CPU, "tokens")["input_ids"][:, :5]
    guard = device_guard(model)
    with guard, torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2
    assert guard.off_device_inputs == ()


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["GPT2LMHeadModel", "LlamaForCausalLM"])
def test_labels_left_on_the_cpu_are_moved_by_the_model_so_the_guard_only_records_them(
    build: Callable[[str], nn.Module],
) -> None:
    # Causal-LM losses in transformers call `labels.to(logits.device)`: this runs on a GPU, so it must run here.
    # Eager attention: the SDPA mask path reads the padding mask on the host, which meta cannot do.
    model = build("eager").to(META)
    batch = {**_batch(META, "tokens"), "labels": _batch(CPU, "tokens")["labels"]}
    guard = device_guard(model)
    with guard:
        assert model(**batch, use_cache=True).loss.device == META
    assert guard.off_device_inputs == (OffDeviceInput("model", "labels", "cpu", "meta", calls=1),)


@pytest.mark.parametrize(
    ("build", "labels", "match"),
    [
        # BertForSequenceClassification computes its loss without moving the labels: cross_entropy on cuda:0
        # logits and CPU labels fails on a GPU, so the guard must stop it too, naming the labels.
        (_bert, "class", r"cross_entropy got tensors on cpu and meta(.|\n)*probably computed from input `labels`"),
        # Seq2seq models shift the labels into decoder_input_ids on the labels' device: the decoder's embedding
        # then gets CPU ids (a GPU fails there too).
        (_t5, "tokens", r"`decoder.embed_tokens` \(Embedding\) got `input` on cpu(.|\n)*computed from input `labels`"),
    ],
    ids=["BertForSequenceClassification", "T5ForConditionalGeneration"],
)
def test_labels_a_model_does_not_move_are_named_when_they_mix(
    build: Callable[[], nn.Module], labels: str, match: str
) -> None:
    model = build().to(META)
    ids = _batch(META, labels)["input_ids"]  # no attention mask: its host-side padding check cannot run on meta
    with pytest.raises(DeviceMismatchError, match=match), device_guard(model):
        model(input_ids=ids, labels=_batch(CPU, labels)["labels"])


# ------------------------------------------------------------------------------------------ torch.nn models


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


class CausalEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        return self.head(self.encoder(x, mask=mask, is_causal=True))


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0]


class ResidualConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.stem(images)
        h = F.relu(h + self.block(h))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _lstm(device: torch.device) -> tuple[nn.Module, tuple]:
    ids = torch.randint(1, VOCAB, (3, 6), device=device)
    return LSTMClassifier(), (ids, torch.tensor([6, 2, 4]))  # lengths on the CPU, as pack_padded_sequence requires


def _causal(device: torch.device) -> tuple[nn.Module, tuple]:
    return CausalEncoder(), (torch.randn(2, 6, 16, device=device),)


def _mha(device: torch.device) -> tuple[nn.Module, tuple]:
    padding = torch.zeros(2, 5, dtype=torch.bool, device=device)
    padding[1, 3:] = True
    return SelfAttention(), (torch.randn(2, 5, 16, device=device), padding)


def _conv(device: torch.device) -> tuple[nn.Module, tuple]:
    return ResidualConvNet(), (torch.randn(2, 3, 8, 8, device=device),)


def _bag(device: torch.device) -> tuple[nn.Module, tuple]:
    return nn.EmbeddingBag(VOCAB, 8, mode="mean"), (
        torch.randint(0, VOCAB, (7,), device=device),
        torch.tensor([0, 3], device=device),  # offsets on the device: CUDA's embedding_bag refuses CPU offsets
    )


TORCH_MODELS = {"LSTM+pack_padded_sequence": _lstm, "TransformerEncoder causal": _causal, "MultiheadAttention": _mha}
TORCH_MODELS |= {"residual ConvNet": _conv, "EmbeddingBag": _bag}
# TransformerEncoder checks on the host that the mask is causal (`bool((mask == causal).all())`): not on meta.
ON_META = [name for name in TORCH_MODELS if name != "TransformerEncoder causal"]


@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_a_torch_nn_training_step_on_the_cpu_is_silent(name: str) -> None:
    torch.manual_seed(0)
    model, inputs = TORCH_MODELS[name](CPU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = device_guard(model, optimizer=opt)
    with guard:
        model(*inputs).float().pow(2).mean().backward()
        opt.step()
    assert guard.off_device_inputs == ()


@pytest.mark.parametrize("name", ON_META)
def test_a_torch_nn_model_on_the_accelerator_is_silent(name: str) -> None:
    model, inputs = TORCH_MODELS[name](META)
    model.to(META)
    guard = device_guard(model)
    with guard:
        assert model(*inputs).device == META
    expected = (OffDeviceInput("model", "lengths", "cpu", "meta", calls=1),) if name.startswith("LSTM") else ()
    assert guard.off_device_inputs == expected


def test_accelerate_moving_inputs_in_its_hook_is_silent() -> None:
    # accelerate's big-model hooks (device_map) wrap forward and move the inputs there, after our pre-hook saw them.
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(META)
    add_hook_to_module(model, AlignDevicesHook(execution_device=META, io_same_device=False))
    guard = device_guard(model)
    with guard:
        assert model(torch.randn(2, 4)).device == META
    assert guard.off_device_inputs == (OffDeviceInput("model", "input", "cpu", "meta", calls=1),)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(HF_MODELS))
@pytest.mark.parametrize("labels_on", ["cuda", "cpu"])
def test_on_cuda_the_guard_refuses_exactly_what_pytorch_refuses(name: str, labels_on: str) -> None:
    # The ground truth: plain PyTorch on a GPU. A model that moves its labels itself runs; one that does not fails.
    build, labels, extra = HF_MODELS[name]
    torch.manual_seed(0)
    model = build().cuda()
    batch = {**_batch(torch.device("cuda"), labels), "labels": _batch(torch.device(labels_on), labels)["labels"]}
    try:
        model(**batch, **extra).loss.backward()
    except RuntimeError as refused:  # where PyTorch refuses, the guard must refuse first, naming the labels
        assert labels_on == "cpu", refused
        with pytest.raises(DeviceMismatchError, match="labels"), device_guard(model):
            model(**batch, **extra)
        return
    guard = device_guard(model)
    with guard:
        model(**batch, **extra).loss.backward()
    moved = (OffDeviceInput("model", "labels", "cpu", "cuda:0", calls=1),) if labels_on == "cpu" else ()
    assert guard.off_device_inputs == moved


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_on_cuda_torch_nn_models_are_silent(name: str) -> None:
    cuda = torch.device("cuda")
    model, inputs = TORCH_MODELS[name](cuda)
    model.to(cuda)
    guard = device_guard(model)
    with guard:
        model(*inputs).float().sum().backward()
    lengths = (OffDeviceInput("model", "lengths", "cpu", "cuda:0", calls=1),) if name.startswith("LSTM") else ()
    assert guard.off_device_inputs == lengths

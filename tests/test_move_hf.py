"""to_device on the real transformers objects users move every step: BatchEncoding, BatchFeature, a model's
output and its KV caches. Everything is built in the test (a one-layer GPT-2); nothing is downloaded.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import tangtoc as tt

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers import BatchEncoding, BatchFeature, DynamicCache, EncoderDecoderCache  # noqa: E402
from transformers.cache_utils import Cache  # noqa: E402

CPU = torch.device("cpu")
META = torch.device("meta")


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def run(model: torch.nn.Module, ids: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
    """Logits and the filled cache of one forward pass; the cache is found by type, whatever the output calls it
    (``past_key_values`` before transformers 5, ``cache`` after)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(ids, use_cache=True, **{name: cache})
    return out.logits, next(v for v in out.values() if isinstance(v, Cache))


def devices(obj: object) -> set[torch.device]:
    return {t.device for _, t in tt.named_tensors(obj)}


def test_batch_encoding_is_copied_with_skip_keys_and_encodings_kept() -> None:
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    encodings = tok.encode_batch(["a b", "b a"])
    ids, labels = torch.tensor([e.ids for e in encodings]), torch.ones(2, 2, dtype=torch.long)
    enc = BatchEncoding({"input_ids": ids, "labels": labels, "extra": [torch.ones(1)]}, encoding=encodings)
    out = tt.to_device(enc, "meta", skip_keys=("labels",))
    assert type(out) is BatchEncoding and out is not enc
    assert out["input_ids"].device == META
    assert out["extra"][0].device == META  # BatchEncoding.to leaves nested lists behind
    assert out["labels"] is labels  # skip_keys holds inside the mapping, which BatchEncoding.to ignores
    assert out.word_ids(1) == [0, 1]  # the fast tokenizer's encodings survive the copy
    # The caller's BatchEncoding is as it was (its own .to would have moved it in place).
    assert enc["input_ids"] is ids and enc["extra"][0].device == CPU


def test_batch_feature_is_copied_and_float_dtype_casts_only_floats() -> None:
    pixels = [torch.ones(3, 4, 4, dtype=torch.float64), torch.ones(3, 4, 4, dtype=torch.float64)]
    mask = torch.ones(2, 4, dtype=torch.long)
    feat = BatchFeature({"pixel_values": pixels, "pixel_mask": mask})
    out = tt.to_device(feat, "meta", float_dtype=torch.float32)
    assert type(out) is BatchFeature
    assert [(t.device, t.dtype) for t in out["pixel_values"]] == [(META, torch.float32)] * 2
    assert (out["pixel_mask"].device, out["pixel_mask"].dtype) == (META, torch.long)
    assert feat["pixel_values"] is pixels and pixels[0].dtype == torch.float64 and feat["pixel_mask"] is mask


def test_model_output_moves_with_its_dynamic_cache(gpt2: torch.nn.Module) -> None:
    with torch.no_grad():
        output = gpt2(torch.ones(2, 3, dtype=torch.long), use_cache=True)
    cache = next(v for v in output.values() if isinstance(v, Cache))
    assert type(cache) is DynamicCache and len(list(tt.named_tensors(cache))) == 2  # keys and values of one layer
    moved = tt.to_device(output, "meta")
    assert type(moved) is type(output)
    moved_cache = next(v for v in moved.values() if isinstance(v, Cache))
    assert type(moved_cache) is DynamicCache
    assert devices(moved) == {META}  # logits and every cached key and value
    assert moved_cache.layers[0].device == META
    assert devices(output) == {CPU} and cache.layers[0].device == CPU


def test_moved_cache_is_a_working_cache_and_the_original_is_untouched(gpt2: torch.nn.Module) -> None:
    ids = torch.tensor([[5, 6, 7]])
    _, cache = run(gpt2, ids)
    copy = tt.to_device(cache, "cpu", float_dtype=torch.float32)  # cpu -> cpu still returns a copy
    assert copy is not cache
    next_logits, grown = run(gpt2, torch.tensor([[8]]), copy)
    full_logits, _ = run(gpt2, torch.tensor([[5, 6, 7, 8]]))
    torch.testing.assert_close(next_logits[:, -1], full_logits[:, -1])
    assert grown.get_seq_length() == 4
    assert cache.get_seq_length() == 3  # the caller's cache did not grow


def test_encoder_decoder_cache_moves_both_caches(gpt2: torch.nn.Module) -> None:
    _, self_attn = run(gpt2, torch.ones(1, 3, dtype=torch.long))
    _, cross_attn = run(gpt2, torch.ones(1, 5, dtype=torch.long))
    cache = EncoderDecoderCache(self_attn, cross_attn)
    out = tt.to_device({"past": cache}, "meta")["past"]
    assert type(out) is EncoderDecoderCache
    assert len(list(tt.named_tensors(out))) == 4
    assert devices(out) == {META}
    assert out.cross_attention_cache.get_seq_length() == 5
    assert devices(cache) == {CPU}

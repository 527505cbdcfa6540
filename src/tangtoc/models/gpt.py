"""A GPT-2-family decoder written for tangtoc: pre-norm blocks, causal attention, GELU MLP, tied embeddings.

The shape follows GPT-2 (Radford et al., 2019) as nanoGPT re-implements it, so the ``gpt2`` configuration has
exactly the published 124,439,808 parameters (vocabulary 50257, 1024 positions, 12 layers, 12 heads, width 768,
biases in every linear layer and layer norm, the output head sharing the token-embedding matrix).

Calling convention, chosen to match :func:`tangtoc.fit`'s ``loss_fn=None`` contract ("the model returns the
loss itself from ``model(*batch)``"):

* ``model(idx)`` returns the logits, shape ``(B, T, vocab_size)``;
* ``model(idx, targets)`` returns the mean cross-entropy loss, a 0-dimensional tensor.

So a batch ``(idx, targets)`` trains with ``fit(model, loader)`` and no loss function.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tangtoc.models.configs import named_config


@dataclass(kw_only=True, slots=True)
class GPTConfig:
    """The shape of a GPT model. Validated on creation; errors name the field.

    Attributes:
        vocab_size: number of token ids (256 for the byte-level corpora of :mod:`tangtoc.data`).
        block_size: the longest sequence the model accepts (number of learned positions).
        n_layer: transformer blocks.
        n_head: attention heads per block; must divide ``n_embd``.
        n_embd: width of the residual stream.
        dropout: dropout probability in attention and MLP outputs (0 disables it).
        bias: biases in linear layers and layer norms, as in GPT-2.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}.")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}. "
                f"Fix: pick n_embd as a multiple of n_head, e.g. {self.n_head * max(1, self.n_embd // self.n_head)}."
            )
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig.dropout must be a float in [0, 1), got {self.dropout!r}.")
        if not isinstance(self.bias, bool):
            raise TypeError(f"GPTConfig.bias must be a bool, got {type(self.bias).__name__}: {self.bias!r}.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


# Named shapes. `gpt2` is the published GPT-2 small; the others use the byte vocabulary (256) of tangtoc's corpora.
_CONFIGS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(),  # 124,439,808 parameters
    # nanoGPT's "shakespeare-char" shape: 10.8M parameters, minutes per hundred steps on a CPU.
    "small": GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384),
    # 0.84M parameters: on the stdlib corpus its loss falls from 5.5 to 2.3 in 300 steps of 16 x 128 tokens,
    # about a minute on one CPU core (`tangtoc train gpt --size mini --threads 1`).
    "mini": GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128),
    # 35K parameters, for tests: a training step takes a millisecond or two on a CPU.
    "tiny": GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32),
}
GPT_SIZES: tuple[str, ...] = tuple(_CONFIGS)


def gpt_config(name: str, **overrides: int | float | bool) -> GPTConfig:
    """The named configuration (one of :data:`GPT_SIZES`), with any field overridden, e.g.
    ``gpt_config("gpt2", vocab_size=256)``. Overrides are validated like a fresh :class:`GPTConfig`."""
    return named_config(_CONFIGS, name, overrides, "GPT")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # One fused kernel (flash / memory-efficient on CUDA) instead of an explicit T x T mask.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU is the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x)); the residual stream itself is never normalised."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-2-family language model. See the module docstring for what ``forward`` returns."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig (e.g. gpt_config('mini')), got {type(config).__name__}.")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds tokens and scores the next one
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), so the residual stream's variance does not
        # grow with depth (two residual additions per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> GPT:
        """The GPT saved in a checkpoint of :func:`tangtoc.fit` (or ``tangtoc train gpt``), in eval mode: ``path`` is
        a checkpoint file, or a run's folder for its newest checkpoint. The shape comes from the config stored
        beside the weights, so the size it was trained at need not be known. Loaded with ``weights_only=True``.

        Raises :class:`~tangtoc.train.CheckpointError` when there is no checkpoint there, or it holds no GPT config
        (another model, or a checkpoint written before tangtoc stored configs).
        """
        # tangtoc.train stands above models/ (it trains them): imported here, when called, not when models load.
        from tangtoc.errors import CheckpointError
        from tangtoc.train.checkpoint import describe_model, find_checkpoint, load_checkpoint

        found = find_checkpoint(path)
        state = load_checkpoint(found)
        saved = state.get("model_config")
        if saved is None or saved.get("class") != cls.__name__:
            holds = "no model config" if saved is None else f"a {describe_model(saved)}"
            raise CheckpointError(
                f"{found} holds {holds}, not a {cls.__name__}, so the model cannot be rebuilt from it. For a "
                "checkpoint without a config, build the model yourself and load state['model'] (from "
                "tangtoc.train.load_checkpoint) into it."
            )
        model = cls(GPTConfig(**saved["config"]))
        model.load_state_dict(state["model"])
        return model.to(device).eval() if device is not None else model.eval()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameters, the tied embedding counted once. ``non_embedding=True`` leaves out the position
        embeddings (a table lookup, no arithmetic); the token embedding stays in, because as the output head
        it is a real matmul per token."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward and backward): ``6N + 12·L·H·Q·T`` (PaLM, appendix B).

        ``N`` is :meth:`num_params` with ``non_embedding=True`` (every weight that is multiplied per token, the
        tied embedding/head included, the position table left out); ``L`` layers, ``H`` heads, ``Q`` head
        width, ``T`` the sequence length (``seq_len``, default ``block_size``). The attention term counts the
        full ``T x T`` score matrix, as PaLM and nanoGPT do, although causal kernels skip half of it.
        """
        cfg = self.config
        t = cfg.block_size if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * t

    def _hidden(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got shape {tuple(idx.shape)}.")
        seq_len = idx.size(1)
        if seq_len > self.config.block_size:
            raise ValueError(
                f"sequence length {seq_len} exceeds block_size {self.config.block_size}. Fix: crop the input to "
                f"the last {self.config.block_size} tokens, or build the model with a larger block_size."
            )
        pos = torch.arange(seq_len, device=idx.device)  # made on the device: no host-to-device copy per call
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` for ``idx`` ``(B, T)``; with ``targets`` ``(B, T)``, the mean
        cross-entropy loss instead (a 0-dim tensor; targets equal to -1 are ignored)."""
        logits = self.lm_head(self._hidden(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to each row of ``idx`` ``(B, T)`` and return ``(B, T + n)``.

        ``idx`` may hold any integer dtype (``tangtoc.data.encode`` gives ``int64``; a ``uint8`` byte tensor is
        widened once, here). Sampling divides the logits by ``temperature`` and, with ``top_k``, keeps only the k
        likeliest tokens. Pass a ``generator`` (on the model's device) for reproducible samples. The model is put
        in eval mode for the call and restored afterwards. The sequence fed to the model is cropped to
        ``block_size``.
        """
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"generate needs token ids (an integer tensor), got dtype {idx.dtype}.")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(
                f"generate needs token ids of shape (batch, time) with time >= 1, got shape {tuple(idx.shape)}. "
                "Fix: a prompt of at least one token, as a row: encode(text)[None]."
            )
        idx = idx.long()  # the embedding takes int64 (and int32); the token ids appended below are int64
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; for greedy decoding use top_k=1.")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.config.vocab_size}] or None, got {top_k}.")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size :]
                # Only the last position's logits are needed: one (B, C) x (C, V) matmul instead of (B*T, C) x (C, V).
                logits = self.lm_head(self._hidden(context)[:, -1, :]).float() / temperature
                if top_k is not None:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
                idx = torch.cat((idx, nxt), dim=1)
        finally:
            self.train(was_training)
        return idx

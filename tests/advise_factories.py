"""Workload factories for `tangtoc advise --factory` tests: one that works, and each way one can be wrong."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def good() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    return _tiny(), (torch.randn(16, 8), torch.randint(0, 3, (16,))), F.cross_entropy


def good_without_loss() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _tiny()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.net(x), y)

    return WithLoss(), (torch.randn(16, 8), torch.randint(0, 3, (16,)))


def pair_without_loss_fn() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    return _tiny(), (torch.randn(16, 8), torch.randint(0, 3, (16,)))  # the model takes x only, and no loss_fn


def _load_weights() -> None:
    raise FileNotFoundError("weights.pt not found (simulated)")


def raises() -> tuple[nn.Module, torch.Tensor]:
    _load_weights()
    return _tiny(), torch.randn(4, 8)


def returns_model_only() -> nn.Module:
    return _tiny()


def returns_three_wrong() -> tuple[object, torch.Tensor]:
    return "not a model", torch.randn(4, 8)


def returns_batch_without_tensors() -> tuple[nn.Module, list[str]]:
    return _tiny(), ["a", "b"]


def loss_not_scalar() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    return _tiny(), (torch.randn(4, 8), torch.randint(0, 3, (4,))), lambda out, y: out  # the logits, not a loss


def shapes_do_not_multiply() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    return _tiny(), (torch.randn(4, 5), torch.randint(0, 3, (4,))), F.cross_entropy  # the model takes 8 features


NOT_A_FUNCTION = 42


def id_outside_vocabulary() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids).mean(1))  # IndexError: ids go up to 99, the table has 10 rows

    return Classifier(), (torch.randint(0, 100, (4, 5)), torch.randint(0, 3, (4,))), F.cross_entropy


def hf_causal_lm() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Hugging Face model (tiny, built here) and a dict batch with labels: the model returns its loss."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    ids = torch.randint(0, 64, (4, 16))
    return transformers.GPT2LMHeadModel(config), {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
    }


def nanogpt_style() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """``forward(idx, targets) -> (logits, loss)``, as nanoGPT's model."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(64, 16), nn.Linear(16, 64)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.head(self.embed(idx))
            return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    ids = torch.randint(0, 64, (4, 16))
    return Tiny(), (ids, (ids + 1) % 64)


class LstmClassifier(nn.Module):
    """Text classification as tutorials write it: embed the tokens, run an LSTM, classify its last hidden state."""

    def __init__(self, vocab: int = 100, embed: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(ids))
        return self.head(h[-1])


def lstm_classifier(batch_size: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    """The LSTM classifier on token ids of 12 steps: a factory that takes --batch-size."""
    torch.manual_seed(0)
    return (
        LstmClassifier(),
        (torch.randint(0, 100, (batch_size, 12)), torch.randint(0, 4, (batch_size,))),
        F.cross_entropy,
    )


def fnet_style(batch_size: int = 8) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    """FNet's token mixing (the real part of a 2-D FFT in place of attention): an op with no FLOP formula."""

    class FNetBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm = nn.Embedding(100, 16), nn.LayerNorm(16)
            self.ff, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            x = self.norm(x + torch.fft.fft2(x).real)
            return self.head(F.gelu(self.ff(x)).mean(1))

    torch.manual_seed(0)
    return FNetBlock(), (torch.randint(0, 100, (batch_size, 12)), torch.randint(0, 4, (batch_size,))), F.cross_entropy


def ignores_batch_size(batch_size: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], object]:
    return good()  # takes the parameter, and builds its batch at 16 whatever it is given

"""A library of realistic device bugs, each with the name every diagnosis must give.

On a CPU-only machine ``meta`` plays the accelerator: models and batches that should be "on the GPU" are on
``meta``, and whatever was left behind is on the CPU, exactly as a forgotten ``.to(device)`` leaves it. Each
builder returns a fresh :class:`Case`. Lines where a bug is planted carry a ``# BUG:`` comment that the tests
look up, so no line number is hard-coded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ACCEL = torch.device("meta")  # plays the GPU
CLASSES = 3


@dataclass
class Case:
    """A setup with one device (or dtype) bug.

    ``run`` performs the training step where the bug bites. ``culprit`` is the name (dotted path, input
    name, or creating function) that both the guard's error and check_devices' finding must contain;
    ``guard_match`` is a regex for the guard's message; ``finding`` is the check_devices finding code, or
    ``None`` when the bug only exists while the code runs (a tensor created inside forward).
    """

    name: str
    model: nn.Module
    batch: Any
    run: Callable[[], object]
    culprit: str
    guard_match: str
    finding: str | None
    guard_kwargs: dict[str, Any] = field(default_factory=dict)
    check_kwargs: dict[str, Any] = field(default_factory=dict)


class Classifier(nn.Module):
    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 16), nn.ReLU())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class NoisyClassifier(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.zeros(x.shape)  # BUG: created without device=
        return super().forward(x + noise)


class ScaledClassifier(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.tensor([0.5])  # BUG: a 1-element tensor, not a 0-d scalar


class ScalarScaledClassifier(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.tensor(0.5)  # a 0-d CPU tensor: a scalar, legal on any device


class MaskedAttention(nn.Module):
    def __init__(self, dim: int = 8, length: int = 6) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mask = torch.tril(torch.ones(length, length))  # BUG: a plain attribute, not a registered buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        t = x.shape[1]
        scores = (q @ k.transpose(-2, -1)).masked_fill(self.mask[:t, :t] == 0, float("-inf"))
        return scores.softmax(-1) @ v


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MaskedAttention() for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class TokenClassifier(nn.Module):
    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(token_ids).mean(1))


class ShiftedTokenClassifier(TokenClassifier):
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(token_ids[:, 1:])  # the embedding gets a slice: a new tensor, not the input itself


class StandardizedClassifier(Classifier):
    """Standardizes its input with statistics computed in NumPy (e.g. by scikit-learn), kept as arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.mean, self.std = np.zeros(8), np.ones(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)  # BUG: float64 statistics promote x
        return super().forward(x)


class WeightedClassifier(Classifier):
    """Weighs its features by importances computed in NumPy."""

    def __init__(self) -> None:
        super().__init__()
        self.importance = np.ones(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * torch.tensor(self.importance))  # BUG: torch.tensor keeps NumPy's float64


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(images).mean((2, 3)))


@contextlib.contextmanager
def moved_in_place() -> Iterator[None]:
    """Make ``module.to(meta)`` keep the Parameter objects, as ``module.to("cuda")`` does.

    On CUDA, ``.to()`` swaps each parameter's data in place, so an optimizer built before the move still
    holds the model's parameters (and its state stays behind). CPU->meta cannot do that by ``.data``
    assignment; swap_tensors gives the same effect.
    """
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def features(device: torch.device = ACCEL, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 8, device=device)


def labels(device: torch.device = ACCEL, batch: int = 4) -> torch.Tensor:
    return torch.randint(0, CLASSES, (batch,), device=device)


def _forward(model: nn.Module, x: Any) -> Callable[[], object]:
    return lambda: model(x)


def model_not_moved() -> Case:
    model, x = Classifier(), features()  # the batch was moved, the model was not
    return Case(
        "model_not_moved",
        model,
        x,
        _forward(model, x),
        "model",
        r"`model` \(Classifier\) got `x` on meta.*"
        r"its parameters are on cpu(.|\n)*`model` \(Classifier\) is still on cpu",
        "model-not-moved",
    )


def created_in_forward() -> Case:
    model, x = NoisyClassifier().to(ACCEL), features()
    return Case(
        "created_in_forward",
        model,
        x,
        _forward(model, x),
        "torch.zeros",
        r"Tensor.add got tensors on cpu and meta inside the forward of `model`(.|\n)*created by torch.zeros at "
        r".*buggy_models.py:\d+ in the forward of `model`, without device=",
        None,
    )


def plain_attribute_mask() -> Case:
    model, x = TinyEncoder().to(ACCEL), torch.randn(2, 6, 8, device=ACCEL)
    return Case(
        "plain_attribute_mask",
        model,
        x,
        _forward(model, x),
        "layers.0.mask",
        r"inside the forward of `layers.0` \(MaskedAttention\)(.|\n)*`layers.0.mask`, a plain tensor attribute",
        "plain-attribute",
    )


def loss_weights_on_cpu() -> Case:
    model, x, y = Classifier().to(ACCEL), features(), labels()
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 1.0]))  # BUG: built on the CPU, never moved
    return Case(
        "loss_weights_on_cpu",
        model,
        (x, y),
        lambda: criterion(model(x), y),
        "criterion",
        r"`criterion` \(CrossEntropyLoss\) got `input`, `target` on meta, but its buffers are on cpu(.|\n)*"
        r"Fix: .*`criterion.to\('meta'\)`",
        "left-behind",
        guard_kwargs={"criterion": criterion},
        check_kwargs={"criterion": criterion},
    )


def _trained_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """An Adam whose state (exp_avg, exp_avg_sq) was loaded from a checkpoint while the model was on the CPU."""
    warm = torch.optim.Adam(model.parameters())
    F.cross_entropy(model(features(torch.device("cpu"))), labels(torch.device("cpu"))).backward()
    warm.step()
    opt = torch.optim.Adam(model.parameters())
    opt.load_state_dict(warm.state_dict())  # BUG: state loaded before model.to(device)
    return opt


def optimizer_loaded_before_move() -> Case:
    model = Classifier()
    opt = _trained_optimizer(model)
    with moved_in_place():
        model.to(ACCEL)
    x, y = features(), labels()

    def run() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return Case(
        "optimizer_loaded_before_move",
        model,
        (x, y),
        run,
        "state[body.0.weight]['exp_avg']",
        r"optimizer.step\(\) would mix devices: optimizer state is on cpu but its parameters are on meta: "
        r"`state\[body.0.weight\]\['exp_avg'\]`",
        "optimizer-state",
        guard_kwargs={"optimizer": opt},
        check_kwargs={"optimizer": opt},
    )


def optimizer_created_before_replacing_move() -> Case:
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # BUG: built before a .to() that replaces the parameters
    model.to(ACCEL)  # cpu -> meta cannot move in place: the model gets new Parameter objects
    x, y = features(), labels()

    def run() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return Case(
        "optimizer_created_before_replacing_move",
        model,
        (x, y),
        run,
        "not parameters of the model",
        r"optimizer.step\(\) would mix devices: the optimizer updates 4 tensor\(s\) that are not parameters of the "
        r"model \(on cpu\)",
        "optimizer-foreign-parameters",
        guard_kwargs={"optimizer": opt},
        check_kwargs={"optimizer": opt},
    )


def embedding_fed_cpu_ids() -> Case:
    model = TokenClassifier().to(ACCEL)
    ids = torch.randint(0, 50, (2, 7))  # BUG: token ids left on the CPU
    return Case(
        "embedding_fed_cpu_ids",
        model,
        {"token_ids": ids},
        lambda: model(token_ids=ids),
        "token_ids",
        r"`model` \(TokenClassifier\) got `token_ids` on cpu, but its parameters are on meta(.|\n)*"
        r"the batch \(or a tensor made from it\) was not moved",
        "input",
    )


def sliced_cpu_ids() -> Case:
    model = ShiftedTokenClassifier().to(ACCEL)
    ids = torch.randint(0, 50, (2, 7))  # BUG: token ids left on the CPU, sliced before the embedding
    return Case(
        "sliced_cpu_ids",
        model,
        {"token_ids": ids},
        lambda: model(ids),
        "token_ids",
        r"`embed` \(Embedding\) got `input` on cpu, but its parameters are on meta(.|\n)*"
        r"probably computed from input `token_ids` of `model`",
        "input",
    )


def embedding_bag_cpu_offsets() -> Case:
    model = nn.EmbeddingBag(50, 8, mode="mean").to(ACCEL)
    ids, offsets = torch.randint(0, 50, (6,), device=ACCEL), torch.tensor([0, 4])  # BUG: offsets left on the CPU
    return Case(
        "embedding_bag_cpu_offsets",
        model,
        {"input": ids, "offsets": offsets},
        lambda: model(ids, offsets),
        "offsets",
        r"`model` \(EmbeddingBag\) got `offsets` on cpu, but its parameters are on meta",
        "input",
    )


def conv_fed_cpu_image() -> Case:
    model = ConvNet().to(ACCEL)
    images = torch.randn(2, 3, 8, 8)  # BUG: the image batch was not moved
    return Case(
        "conv_fed_cpu_image",
        model,
        {"images": images},
        _forward(model, images),
        "images",
        r"`model` \(ConvNet\) got `images` on cpu, but its parameters are on meta",
        "input",
    )


def one_element_cpu_tensor() -> Case:
    model, x = ScaledClassifier().to(ACCEL), features()
    return Case(
        "one_element_cpu_tensor",
        model,
        x,
        _forward(model, x),
        "torch.tensor",
        r"Tensor.mul got tensors on cpu and meta(.|\n)*`other`: shape \(1,\), float32, on cpu(.|\n)*"
        r"created by torch.tensor at .*buggy_models.py:\d+ in the forward of `model`, without device=",
        None,
    )


def layer_added_after_move() -> Case:
    model = Classifier().to(ACCEL)
    model.head = nn.Linear(16, CLASSES)  # BUG: replaced after model.to(), so it stays on the CPU
    x = features()
    return Case(
        "layer_added_after_move",
        model,
        x,
        _forward(model, x),
        "head",
        r"`head` \(Linear\) got `input` on meta, but its parameters are on cpu(.|\n)*`model.head.to\('meta'\)`",
        "spread-parameters",
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        model_not_moved,
        created_in_forward,
        plain_attribute_mask,
        loss_weights_on_cpu,
        optimizer_loaded_before_move,
        optimizer_created_before_replacing_move,
        embedding_fed_cpu_ids,
        sliced_cpu_ids,
        embedding_bag_cpu_offsets,
        conv_fed_cpu_image,
        one_element_cpu_tensor,
        layer_added_after_move,
    )
}


# Dtype bugs: PyTorch refuses them on the CPU as on CUDA, so these run on the CPU (on meta, linear and matmul accept
# two dtypes silently). The guard names the culprit only once PyTorch has refused the call.
def numpy_float64_batch() -> Case:
    model = Classifier()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 8)))  # BUG: float64, NumPy's default
    return Case(
        "numpy_float64_batch",
        model,
        x,
        _forward(model, x),
        "input `x` of `model`",
        r"linear got tensors in float64 and float32 inside the forward of `body.0` \(Linear\); PyTorch refused: "
        r"mat1 and mat2 must have the same dtype(.|\n)*`input`: shape \(4, 8\), float64, on cpu; input `x` of `model`",
        None,
    )


def numpy_statistics_in_forward() -> Case:
    model, x = StandardizedClassifier(), features(torch.device("cpu"))
    return Case(
        "numpy_statistics_in_forward",
        model,
        x,
        _forward(model, x),
        "StandardizedClassifier",
        r"linear got tensors in float64 and float32 inside the forward of `body.0`(.|\n)*`input`: shape \(4, 8\), "
        r"float64, on cpu; input `input` of `body`, made float64 in the forward of `model` \(StandardizedClassifier\), "
        r"whose own inputs are not float64",
        None,
    )


def numpy_weights_in_forward() -> Case:
    model, x = WeightedClassifier(), features(torch.device("cpu"))
    return Case(
        "numpy_weights_in_forward",
        model,
        x,
        _forward(model, x),
        "torch.tensor",
        r"`input`: shape \(4, 8\), float64, on cpu; input `input` of `body`, probably computed from a tensor created "
        r"by torch.tensor at .*buggy_models.py:\d+ in the forward of `model`(.|\n)*Most likely cause: a tensor created "
        r"by torch.tensor",
        None,
    )


def numpy_float64_image() -> Case:
    model = ConvNet()
    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 8, 8)))  # BUG: float64 pixels
    return Case(
        "numpy_float64_image",
        model,
        images,
        _forward(model, images),
        "input `images` of `model`",
        r"conv2d got tensors in float64 and float32 inside the forward of `conv` \(Conv2d\); PyTorch refused: "
        r"Input type \(double\) and bias type \(float\) should be the same",
        None,
    )


DTYPE_CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (numpy_float64_batch, numpy_statistics_in_forward, numpy_weights_in_forward, numpy_float64_image)
}


def healthy() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module, torch.optim.Optimizer]:
    """A correct setup on the accelerator, with a 0-d CPU scalar in its forward (legal)."""
    model = ScalarScaledClassifier().to(ACCEL)
    criterion = nn.CrossEntropyLoss(weight=torch.ones(CLASSES)).to(ACCEL)
    return model, features(), labels(), criterion, torch.optim.SGD(model.parameters(), lr=0.1)

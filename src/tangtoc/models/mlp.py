"""A small multilayer perceptron for classification or regression, with its training FLOPs per sample."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tangtoc.models.configs import named_config


@dataclass(kw_only=True, slots=True)
class MLPConfig:
    """The shape of an :class:`MLP`: ``in_features -> hidden (x depth, ReLU) -> out_features``.

    Validated on creation; errors name the field.
    """

    in_features: int = 32
    hidden: int = 64
    out_features: int = 10
    depth: int = 2  # hidden layers; 0 makes a plain linear model

    def __post_init__(self) -> None:
        for name in ("in_features", "hidden", "out_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLPConfig.{name} must be a positive int, got {value!r}.")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"MLPConfig.depth must be an int >= 0, got {self.depth!r}.")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_CONFIGS: dict[str, MLPConfig] = {
    # 55M parameters on 1024 features: big enough that a GPU pays off (tangtoc advise's "use the GPU" example).
    "large": MLPConfig(in_features=1024, hidden=4096, depth=4),
    "small": MLPConfig(hidden=512, depth=4),
    "mini": MLPConfig(hidden=128, depth=2),
    "tiny": MLPConfig(hidden=32, depth=1),
}
MLP_SIZES: tuple[str, ...] = tuple(_CONFIGS)


def mlp_config(name: str, **overrides: int) -> MLPConfig:
    """The named configuration (one of :data:`MLP_SIZES`; 10 classes, 32 features except ``large``'s 1024), with
    any field overridden, e.g. ``mlp_config("mini", in_features=784)``."""
    return named_config(_CONFIGS, name, overrides, "MLP")


class MLP(nn.Module):
    """``Linear -> ReLU`` repeated ``depth`` times, then a ``Linear`` head. Returns raw outputs (logits);
    train it with a loss function, e.g. ``fit(model, loader, loss_fn=F.cross_entropy)``."""

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = MLPConfig() if config is None else config
        if not isinstance(config, MLPConfig):
            raise TypeError(f"MLP needs an MLPConfig, got {type(config).__name__}.")
        widths = [config.in_features] + [config.hidden] * config.depth + [config.out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def flops_per_sample(self) -> float:
        """Training FLOPs per sample (forward and backward): 6 x the weights of the linear layers.

        Each weight costs one multiply-add (2 FLOPs) forward and two backward (gradients of the input and of
        the weight); biases and ReLUs are a few FLOPs per unit and left out, as in the 6N rule for transformers.
        """
        return 6.0 * sum(m.weight.numel() for m in self.net if isinstance(m, nn.Linear))

"""A small convolutional classifier for images (CIFAR-10's 3 x 32 x 32 by default), with its training FLOPs per
sample.

Each stage is ``Conv3x3 -> BatchNorm -> ReLU`` followed by a 2 x 2 max-pool that halves the image; after the last
stage a global average pool and one linear layer give the class logits. Like :class:`~tangtoc.models.MLP` it
returns raw logits; train it with a loss function, e.g. ``fit(model, loader, loss_fn=F.cross_entropy)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(kw_only=True, slots=True)
class CNNConfig:
    """The shape of a :class:`CNN`. Validated on creation; errors name the field.

    Attributes:
        in_channels: channels of the input images (3 for RGB).
        image_size: height and width of the (square) input images.
        channels: output channels of each stage; one stage per entry, each halving the image.
        classes: number of output logits.
    """

    in_channels: int = 3
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    classes: int = 10

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"CNNConfig.{name} must be a positive int, got {value!r}.")
        chans = self.channels
        if (
            not isinstance(chans, tuple)
            or not chans
            or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in chans)
        ):
            raise ValueError(f"CNNConfig.channels must be a non-empty tuple of positive ints, got {chans!r}.")
        if self.image_size < 2 ** len(chans):
            raise ValueError(
                f"CNNConfig.image_size {self.image_size} is too small for {len(chans)} stages, each of which "
                f"halves the image. Fix: image_size >= {2 ** len(chans)}, or fewer channels entries."
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CNN(nn.Module):
    """``(Conv3x3 -> BatchNorm -> ReLU -> MaxPool2x2) x stages -> global average pool -> Linear``."""

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = CNNConfig() if config is None else config
        if not isinstance(config, CNNConfig):
            raise TypeError(f"CNN needs a CNNConfig, got {type(config).__name__}.")
        layers: list[nn.Module] = []
        previous = config.in_channels
        for width in config.channels:
            # No conv bias: the BatchNorm right after it has its own shift.
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, config.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CNN expects images of shape (batch, channels, height, width), got {tuple(x.shape)}.")
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C) -> (B, classes)

    def flops_per_sample(self) -> float:
        """Training FLOPs per sample (forward and backward) of the convolutions and the head.

        A 3 x 3 convolution costs 2 FLOPs per weight per output pixel forward, twice that backward (gradients of
        the input and of the weight), so 6 x weights x output pixels; the first stage needs no input gradient,
        so it costs 4 x. BatchNorm, ReLU and pooling are a few FLOPs per element and left out. The count is for
        images of ``config.image_size``.
        """
        cfg = self.config
        flops, size, previous = 0.0, cfg.image_size, cfg.in_channels
        for i, width in enumerate(cfg.channels):
            per_pass = 2.0 * previous * width * 9 * size * size
            flops += per_pass * (2 if i == 0 else 3)
            size //= 2
            previous = width
        return flops + 6.0 * previous * cfg.classes

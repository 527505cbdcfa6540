"""The built-in workloads: a model with its data and loss, by name and size, for ``tangtoc train`` and ``advise``.

``gpt`` (:class:`~tangtoc.models.GPT`, byte-level: trained on the Python standard library's source or a text the
user names), ``mlp`` and ``cnn`` (synthetic classification). :func:`example` gives one batch of synthetic data, as
:func:`tangtoc.advise` takes it; :func:`training` gives train and validation loaders on a device, as
:func:`tangtoc.fit` takes them. Every name and size is validated here, once, with a message that lists the choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tangtoc.data import ResidentLoader, stdlib_corpus, synthetic_classification, text_corpus
from tangtoc.models import GPT, GPT_SIZES, MLP, MLP_SIZES, gpt_config, mlp_config
from tangtoc.models.cnn import CNN, CNNConfig
from tangtoc.units import fmt_bytes

CNN_SIZES = {"small": CNNConfig(), "large": CNNConfig(channels=(64, 128, 256, 512))}
SIZES = {"mlp": MLP_SIZES, "cnn": tuple(CNN_SIZES), "gpt": GPT_SIZES}
TRAINABLE = ("gpt", "mlp")  # with built-in training data

#: One example batch (advise): small enough for a CPU step in milliseconds.
EXAMPLE_SIZE = {"mlp": "mini", "cnn": "small", "gpt": "mini"}
EXAMPLE_BATCH = {"mlp": 64, "cnn": 64, "gpt": 8}
#: Training (train): the batch of a real run.
TRAIN_BATCH = {"gpt": 16, "mlp": 256}
EVAL_WINDOWS = 256  # held-out GPT windows evaluated: enough for a stable mean, a second or so on a CPU
MLP_SAMPLES, MLP_EVAL_SAMPLES = 16_384, 2048


@dataclass(frozen=True, slots=True)
class Example:
    """A model, one batch of its data, and its loss function (``None``: the model returns its loss)."""

    model: nn.Module
    batch: Any
    loss_fn: Callable[..., torch.Tensor] | None
    description: str


@dataclass(frozen=True, slots=True)
class Training:
    """A model and its train and validation loaders on one device, with its loss function and a description of
    the data."""

    model: nn.Module
    train: ResidentLoader
    val: ResidentLoader
    loss_fn: Callable[..., torch.Tensor] | None
    data: str


def check(name: str, size: str | None, batch_size: int | None = None, *, names: tuple[str, ...] = tuple(SIZES)) -> str:
    """``size`` (default :data:`EXAMPLE_SIZE`'s) if ``name`` has it; a ValueError listing the choices if not."""
    if name not in names:
        raise ValueError(f"unknown workload {name!r}; the built-in ones are: {', '.join(names)}.")
    size = size or EXAMPLE_SIZE[name]
    if size not in SIZES[name]:
        raise ValueError(f"unknown {name} size {size!r}; the sizes are: {', '.join(SIZES[name])}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    return size


def example(name: str, size: str | None = None, batch_size: int | None = None) -> Example:
    """The built-in ``name`` (``"mlp"``, ``"cnn"``, ``"gpt"``) at ``size`` with one batch of synthetic data,
    seeded: the same model and batch every time."""
    size = check(name, size, batch_size)
    b = EXAMPLE_BATCH[name] if batch_size is None else batch_size
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mlp":
        cfg = mlp_config(size)
        x = torch.randn(b, cfg.in_features, generator=gen)
        y = torch.randint(0, cfg.out_features, (b,), generator=gen)
        about = f"mlp {size} ({cfg.in_features}-{cfg.hidden}x{cfg.depth}-{cfg.out_features})"
        return Example(MLP(cfg), (x, y), F.cross_entropy, about)
    if name == "cnn":
        ccfg = CNN_SIZES[size]
        x = torch.randn(b, ccfg.in_channels, ccfg.image_size, ccfg.image_size, generator=gen)
        y = torch.randint(0, ccfg.classes, (b,), generator=gen)
        chans = "-".join(map(str, ccfg.channels))
        about = f"cnn {size} ({ccfg.image_size}x{ccfg.image_size} images, channels {chans})"
        return Example(CNN(ccfg), (x, y), F.cross_entropy, about)
    gcfg = gpt_config(size)
    idx = torch.randint(0, gcfg.vocab_size, (b, gcfg.block_size + 1), generator=gen)
    return Example(GPT(gcfg), (idx[:, :-1], idx[:, 1:]), None, f"gpt {size} (sequence {gcfg.block_size})")


def training(
    name: str,
    size: str,
    device: torch.device,
    *,
    batch_size: int | None = None,
    data: str = "stdlib",
    max_bytes: int = 4 * 2**20,
    seed: int = 0,
) -> Training:
    """The built-in ``name`` (``"gpt"`` or ``"mlp"``) at ``size`` on ``device``, with its data resident there.

    ``gpt`` trains on byte windows of ``data`` (``"stdlib"``: the Python standard library's source; or a text file
    or folder), at most ``max_bytes``; ``mlp`` on synthetic classification (``data`` must stay ``"stdlib"``).
    """
    check(name, size, batch_size, names=TRAINABLE)
    b = batch_size or TRAIN_BATCH[name]
    if name == "gpt":
        cfg = gpt_config(size, vocab_size=256) if size == "gpt2" else gpt_config(size)  # bytes: 256 symbols
        corpus = stdlib_corpus(max_bytes=max_bytes) if data == "stdlib" else text_corpus(data, max_bytes=max_bytes)
        x, y = corpus.windows(cfg.block_size)
        xv, yv = corpus.windows(cfg.block_size, split="val")
        # drop_last: one shape for every step, so a compiled model is not recompiled for a short last batch.
        train = ResidentLoader(x, y, batch_size=b, device=device, seed=seed, drop_last=True)
        val = ResidentLoader(xv[:EVAL_WINDOWS], yv[:EVAL_WINDOWS], batch_size=b, shuffle=False, device=device)
        n_bytes = corpus.train.numel() + corpus.val.numel()
        about = (
            f"{corpus.source}: {fmt_bytes(n_bytes)} in {corpus.files} files, {x.shape[0]:,} windows of {cfg.block_size}"
        )
        return Training(GPT(cfg).to(device), train, val, None, about)
    if data != "stdlib":
        raise ValueError("mlp trains on synthetic classification data only; drop --data.")
    mcfg = mlp_config(size)
    features, classes = mcfg.in_features, mcfg.out_features
    x, y = synthetic_classification(MLP_SAMPLES, features=features, classes=classes, seed=seed)
    xv, yv = synthetic_classification(MLP_EVAL_SAMPLES, features=features, classes=classes, seed=seed + 1)
    train = ResidentLoader(x, y, batch_size=b, device=device, seed=seed, drop_last=True)
    val = ResidentLoader(xv, yv, batch_size=b, shuffle=False, device=device)
    about = f"synthetic classification: {MLP_SAMPLES:,} samples, {features} features, {classes} classes"
    return Training(MLP(mcfg).to(device), train, val, F.cross_entropy, about)

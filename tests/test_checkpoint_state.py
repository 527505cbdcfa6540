"""What goes into a checkpoint must come back out of it: states a safe load refuses, views the checksums must read.

* A schedule whose state holds an object ``torch.load(weights_only=True)`` refuses (a ``LambdaLR`` over a callable
  object keeping a function, as a nanoGPT-style ``get_lr`` object may) was saved in every checkpoint, and resume then
  refused tangtoc's own file, saying it had been tampered with. Now refused before training, with the fix.
* A complex buffer that is a conjugate view (``x.conj()``) made the checksum of the checkpoint fail with a
  ``RuntimeError`` at the first save.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tangtoc.errors import CheckpointError
from tangtoc.train import fit, list_checkpoints, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test


class Slope(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w + 0 * x.sum()


class CosineLr:
    """nanoGPT's get_lr as a callable object: LambdaLR saves its __dict__, here with a function in it."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total, self.curve = warmup, total, math.cos

    def __call__(self, it: int) -> float:
        if it < self.warmup:
            return (it + 1) / (self.warmup + 1)
        return 0.5 * (1 + self.curve(math.pi * min(1.0, (it - self.warmup) / (self.total - self.warmup))))


def _run(directory: Path, steps: int) -> None:
    fit(Slope(), [torch.ones(1)], optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        scheduler=lambda o: LambdaLR(o, CosineLr(2, 8)), steps=steps, checkpoint_dir=directory, checkpoint_every=2,
        progress=False, device="cpu")  # fmt: skip


def test_a_schedule_whose_checkpoints_could_not_be_resumed_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"the learning-rate schedule \(LambdaLR\) holds math\.cos") as info:
        _run(tmp_path, 4)
    assert "tampered" not in str(info.value) and "find out who wrote" not in str(info.value)
    assert list_checkpoints(tmp_path) == []  # refused before any step, not at resume after a crash


def test_save_checkpoint_refuses_a_state_its_own_load_would_refuse(tmp_path: Path) -> None:
    state = {"step": 1, "model": {"w": torch.ones(2)}, "optimizer": {"hook": math.cos}, "rng": {}, "data": {}}
    with pytest.raises(CheckpointError, match=r"its 'optimizer' entry holds math\.cos, which torch\.load"):
        save_checkpoint(state, tmp_path, keep_last=2)
    assert list_checkpoints(tmp_path) == []


def test_a_conjugate_view_buffer_is_checksummed_and_verified(tmp_path: Path) -> None:
    z = torch.randn(4, dtype=torch.complex64)
    negated = torch._neg_view(torch.randn(3))  # the negative bit: the other lazy view
    state = {"step": 1, "model": {"freqs": z.conj(), "neg": negated}, "optimizer": {}, "rng": {}, "data": {}}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path, keep_last=2))
    assert torch.equal(loaded["model"]["freqs"], z.conj()) and torch.equal(loaded["model"]["neg"], negated)

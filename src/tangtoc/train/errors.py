"""The typed errors of :mod:`tangtoc.train`; each also subclasses the built-in exception a user would catch."""

from __future__ import annotations

from pathlib import Path

import torch

from tangtoc.errors import TangtocError

# torch >= 2.5 has torch.OutOfMemoryError; torch.cuda.OutOfMemoryError is the same class under its old name.
TorchOutOfMemoryError: type[RuntimeError] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class NonFiniteLossError(TangtocError, FloatingPointError):
    """The training loss became NaN or infinite. ``step`` is the first step (1-based) whose loss was not finite;
    ``checkpoint`` the newest checkpoint written before it (``None`` when there is none)."""

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class CheckpointError(TangtocError, RuntimeError):
    """A checkpoint cannot be used: truncated or corrupt, holding objects that could run code, or made for
    another model."""


class TrainingOutOfMemoryError(TangtocError, TorchOutOfMemoryError):
    """The device ran out of memory during a training step; the message says what to change.
    Subclasses ``torch.OutOfMemoryError``, so existing ``except torch.cuda.OutOfMemoryError`` clauses still work."""


class DistributedError(TangtocError, RuntimeError):
    """A distributed run cannot start or go on: the master cannot be reached, its port is taken, the ranks do not
    see the same checkpoints, or this setup cannot be trained on several processes. The message says which and
    what to change."""

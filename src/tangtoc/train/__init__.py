"""Training on one device: :func:`fit` with precision, compilation, accumulation, metrics, atomic checkpoints,
resumption and preemption handling."""

from tangtoc.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tangtoc.train.config import FitConfig
from tangtoc.train.errors import CheckpointError, NonFiniteLossError, TrainingOutOfMemoryError
from tangtoc.train.fit import FitEvent, FitResult, default_optimizer, fit
from tangtoc.train.precision import Precision, resolve_precision

__all__ = [
    "CheckpointError",
    "FitConfig",
    "FitEvent",
    "FitResult",
    "NonFiniteLossError",
    "Precision",
    "TrainingOutOfMemoryError",
    "default_optimizer",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_precision",
    "save_checkpoint",
]

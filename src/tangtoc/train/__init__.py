"""Training on one device or many (torchrun: DDP, FSDP2): :func:`fit` with precision, compilation, accumulation,
metrics, learning-rate schedules, atomic and checksummed checkpoints, resumption and preemption handling."""

from tangtoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    DistributedError,
    FolderInUseError,
    NonFiniteLossError,
    SkippedCheckpointWarning,
    TrainingOutOfMemoryError,
)
from tangtoc.step import Precision, resolve_precision
from tangtoc.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tangtoc.train.config import FitConfig
from tangtoc.train.distributed import TorchrunEnv, torchrun_env
from tangtoc.train.fit import FitEvent, FitResult, default_optimizer, fit
from tangtoc.train.schedule import WarmupCosine, warmup_cosine

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "DistributedError",
    "FitConfig",
    "FitEvent",
    "FitResult",
    "FolderInUseError",
    "NonFiniteLossError",
    "Precision",
    "SkippedCheckpointWarning",
    "TorchrunEnv",
    "TrainingOutOfMemoryError",
    "WarmupCosine",
    "default_optimizer",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_precision",
    "save_checkpoint",
    "torchrun_env",
    "warmup_cosine",
]

"""Training on one device or many (torchrun: DDP, FSDP2): :func:`fit` with precision, compilation, accumulation,
metrics, atomic checkpoints, resumption and preemption handling."""

from tangtoc.step import Precision, resolve_precision
from tangtoc.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tangtoc.train.config import FitConfig
from tangtoc.train.distributed import TorchrunEnv, torchrun_env
from tangtoc.train.errors import CheckpointError, DistributedError, NonFiniteLossError, TrainingOutOfMemoryError
from tangtoc.train.fit import FitEvent, FitResult, default_optimizer, fit

__all__ = [
    "CheckpointError",
    "DistributedError",
    "FitConfig",
    "FitEvent",
    "FitResult",
    "NonFiniteLossError",
    "Precision",
    "TorchrunEnv",
    "TrainingOutOfMemoryError",
    "default_optimizer",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_precision",
    "save_checkpoint",
    "torchrun_env",
]

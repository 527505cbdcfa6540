"""The typed errors tangtoc raises.

Every error says what was asked, what was found, and how to fix it. Each one also subclasses the
built-in exception a user would already catch (``ValueError``, ``RuntimeError``), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tangtoc.diagnose.nosync import Sync

# torch >= 2.5 has torch.OutOfMemoryError; torch.cuda.OutOfMemoryError is the same class under its old name.
TorchOutOfMemoryError: type[RuntimeError] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class TangtocError(Exception):
    """Base class of every error tangtoc raises on purpose."""


class DeviceUnavailableError(TangtocError, RuntimeError):
    """A device was named that this machine or this PyTorch build cannot provide."""


class InvalidDeviceError(TangtocError, ValueError):
    """A device string that PyTorch does not know at all (``"gpu"``, ``"cdua"``)."""


class MixedDevicesError(TangtocError, ValueError):
    """An object that was expected to live on one device lives on several."""


class UsageError(TangtocError, ValueError):
    """A command-line flag's value that cannot work; the CLI reports it with exit status 2."""


class WrongResultError(TangtocError, AssertionError):
    """A benchmarked kernel's output disagrees with the float64 CPU reference: its time is not reported."""


class DataTooLargeError(TangtocError, MemoryError):
    """A data set asked to live on a device does not fit in the memory it may take there."""


class CorpusError(TangtocError, ValueError):
    """A text corpus could not be built: the path holds no readable text, or the split is impossible."""


class OutputError(TangtocError, OSError):
    """A result file could not be written (no space, no permission, a symlink or device at the path); the message
    says which file and why. The work that produced the result is done: callers still show it."""


class BatchStructureError(TangtocError, ValueError):
    """A batch cannot be walked: it contains itself (a cycle of lists, dicts, tuples or dataclasses), or it is
    nested deeper than Python's recursion limit. The message names the path."""


class UnmovableError(TangtocError, TypeError):
    """An object in a batch that :func:`~tangtoc.move.to_device` cannot move faithfully (an iterator it would
    consume, an object it cannot copy); the message names it and says what to pass instead."""


class GuardError(TangtocError, RuntimeError):
    """What :func:`device_guard` raises. A ``RuntimeError``, like the PyTorch errors it replaces, so existing
    ``except RuntimeError`` code keeps working.

    ``module`` is the dotted path of the module involved (``None`` outside any guarded module), ``culprits`` the
    names of the odd tensors, ``found`` their device (or dtype) and ``expected`` the one they should have.
    """

    def __init__(
        self, message: str, *, module: str | None, culprits: tuple[str, ...], found: str, expected: str
    ) -> None:
        super().__init__(message)
        self.module = module
        self.culprits = culprits
        self.found = found
        self.expected = expected


class DeviceMismatchError(GuardError):
    """Tensors on different devices met in a module call or an operation; raised before the kernel runs."""


class DtypeMismatchError(GuardError):
    """PyTorch refused tensors of two dtypes in one operation; raised from its error (kept as ``__cause__``)."""


class CountError(TangtocError, RuntimeError):
    """A training step that cannot be counted without data (it reads tensor values, or its shapes depend on them)."""


class FactoryError(UsageError):
    """The user's factory raised; ``details`` is its traceback, with tangtoc's own frames left out."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ScriptError(TangtocError, ValueError):
    """A script given to ``tangtoc audit`` or ``profile`` cannot be run: Python itself would refuse it (its
    encoding, its syntax). Nothing was run."""


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


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose bytes are damaged: not a readable zip or pickle, cut short, or its tensors no longer match
    the checksums written with them. Not an attack: nothing in it was refused for being code. ``path`` is the file,
    ``reason`` what is wrong with it in a few words."""

    def __init__(self, message: str, *, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class FolderInUseError(TangtocError, RuntimeError):
    """Another run (another process, or another thread of this one) holds the folder this run would write
    checkpoints or metrics into. ``pid`` and ``host`` name the holder when it could be read (``None`` otherwise)."""

    def __init__(self, message: str, *, pid: int | None, host: str | None) -> None:
        super().__init__(message)
        self.pid = pid
        self.host = host


class SkippedCheckpointWarning(UserWarning):
    """Resuming skipped a damaged checkpoint and continued from an older one; the message names both."""


class SyncError(TangtocError, RuntimeError):
    """A region guarded by :func:`~tangtoc.diagnose.nosync.no_sync` made the host wait for the device (on the CPU:
    would, on a GPU). ``sync`` (a :class:`~tangtoc.diagnose.nosync.Sync`) says what synced and where; the message
    names the call at the user's line, why it waits and the fix."""

    def __init__(self, sync: Sync) -> None:
        super().__init__(sync.message)
        self.sync = sync


class SyncWarning(UserWarning):
    """What :func:`~tangtoc.diagnose.nosync.no_sync` warns with under ``on_sync="warn"``, once per operation and
    line in a region."""

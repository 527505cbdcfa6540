"""The typed errors tangtoc raises.

Every error says what was asked, what was found, and how to fix it. Each one also subclasses the
built-in exception a user would already catch (``ValueError``, ``RuntimeError``), so existing
``except`` clauses keep working.
"""

from __future__ import annotations


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

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

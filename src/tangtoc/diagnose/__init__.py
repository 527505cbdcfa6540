"""Diagnose device errors and hidden synchronizations (seed 5.1, 3.2, 6.3).

* :func:`check_devices` — where every parameter, buffer, input, optimizer-state and loss tensor lives, and the
  classic mismatches (plain tensor attributes, optimizer state loaded before the move...) before they crash;
* :func:`explain` — any wording of PyTorch's device errors, and of its dtype errors (NumPy's float64), in user
  terms, with the fix;
* :func:`device_guard` — catch a mismatch before the kernel runs and name the module, the tensor and the fix;
* :func:`audit` — per training step, every cross-device copy, every host-device synchronization and every
  tensor born on the CPU, each at the user's ``file:line``;
* :func:`profile` — where each training step's wall time goes (data, copies, forward, backward, optimizer, syncs,
  other host time), and what bounds the step, with the first change to make;
* :func:`no_sync` — a region (a test, a hot path) that must not make the host wait for the device: raises at the
  first sync, naming the call and its line.
"""

from tangtoc.diagnose.audit import Audit, AuditReport, StopAudit, audit, mark_step
from tangtoc.diagnose.dtypes import DtypeErrorInfo, parse_dtype_error
from tangtoc.diagnose.explain import DeviceErrorInfo, explain, parse_device_error
from tangtoc.diagnose.guard import DeviceGuard, OffDeviceInput, device_guard
from tangtoc.diagnose.mismatch import DeviceReport, Finding, Placement, check_devices
from tangtoc.diagnose.nosync import NoSync, Sync, no_sync
from tangtoc.diagnose.profile import Profile, StopProfile, profile
from tangtoc.diagnose.profile_report import ProfileReport
from tangtoc.errors import DeviceMismatchError, DtypeMismatchError, GuardError, SyncError, SyncWarning

__all__ = [
    "Audit",
    "AuditReport",
    "DeviceErrorInfo",
    "DeviceGuard",
    "DeviceMismatchError",
    "DeviceReport",
    "DtypeErrorInfo",
    "DtypeMismatchError",
    "Finding",
    "GuardError",
    "NoSync",
    "OffDeviceInput",
    "Placement",
    "Profile",
    "ProfileReport",
    "StopAudit",
    "StopProfile",
    "Sync",
    "SyncError",
    "SyncWarning",
    "audit",
    "check_devices",
    "device_guard",
    "explain",
    "mark_step",
    "no_sync",
    "parse_device_error",
    "parse_dtype_error",
    "profile",
]

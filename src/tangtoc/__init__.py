"""tangtoc (Vietnamese *tăng tốc*, "speed up"): PyTorch training on the GPU, correct and fast.

import tangtoc as tt
device = tt.pick_device()               # TANGTOC_DEVICE > argument > cuda > mps > xpu > cpu
batch = tt.to_device(batch, device)     # dicts, lists, namedtuples, dataclasses, NumPy, HF batches and caches
loss_v, acc_v = tt.fetch(loss, acc)     # many scalars, one transfer, one sync
m = tt.measure(fn, device=device)       # synchronized, warmed up, median and IQR
tt.fit(model, loader, steps=1000)       # resumable, preemption-safe, one sync per log interval
tt.fit(model, loader, steps=1000, scheduler=tt.warmup_cosine(100))  # linear warmup, cosine to the end
with tt.no_sync(): step()               # fails at the first host-device sync, naming the line
"""

from tangtoc.advise import Advice, advise
from tangtoc.bench import Measurement, measure
from tangtoc.data import Prefetcher, ResidentLoader
from tangtoc.device import DeviceInfo, available_devices, describe, pick_device, resolve, synchronize
from tangtoc.diagnose import (
    DeviceMismatchError,
    DeviceReport,
    DtypeMismatchError,
    audit,
    check_devices,
    device_guard,
    explain,
    no_sync,
    profile,
)
from tangtoc.errors import (
    BatchStructureError,
    DeviceUnavailableError,
    InvalidDeviceError,
    MixedDevicesError,
    SyncError,
    TangtocError,
    UnmovableError,
)
from tangtoc.move import as_tensor, device_of, fetch, named_tensors, pin, to_cpu, to_device, to_numpy
from tangtoc.train import CheckpointError, FitResult, NonFiniteLossError, TrainingOutOfMemoryError, fit, warmup_cosine

__version__ = "0.1.0"

__all__ = [
    "Advice",
    "BatchStructureError",
    "CheckpointError",
    "DeviceInfo",
    "DeviceMismatchError",
    "DeviceReport",
    "DeviceUnavailableError",
    "DtypeMismatchError",
    "FitResult",
    "InvalidDeviceError",
    "Measurement",
    "MixedDevicesError",
    "NonFiniteLossError",
    "Prefetcher",
    "ResidentLoader",
    "SyncError",
    "TangtocError",
    "TrainingOutOfMemoryError",
    "UnmovableError",
    "__version__",
    "advise",
    "as_tensor",
    "audit",
    "available_devices",
    "check_devices",
    "describe",
    "device_guard",
    "device_of",
    "explain",
    "fetch",
    "fit",
    "measure",
    "named_tensors",
    "no_sync",
    "pick_device",
    "pin",
    "profile",
    "resolve",
    "synchronize",
    "to_cpu",
    "to_device",
    "to_numpy",
    "warmup_cosine",
]

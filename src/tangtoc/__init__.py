"""tangtoc (Vietnamese *tăng tốc*, "speed up"): PyTorch training on the GPU, correct and fast.

    import tangtoc as tt
    device = tt.pick_device()               # TANGTOC_DEVICE > argument > cuda > mps > xpu > cpu
    batch = tt.to_device(batch, device)     # dicts, lists, namedtuples, dataclasses, NumPy arrays
    loss_v, acc_v = tt.fetch(loss, acc)     # many scalars, one transfer, one sync
"""

from tangtoc.device import DeviceInfo, available_devices, describe, pick_device, resolve, synchronize
from tangtoc.errors import DeviceUnavailableError, InvalidDeviceError, MixedDevicesError, TangtocError
from tangtoc.move import as_tensor, device_of, fetch, named_tensors, pin, to_cpu, to_device, to_numpy

__version__ = "0.1.0"

__all__ = [
    "DeviceInfo",
    "DeviceUnavailableError",
    "InvalidDeviceError",
    "MixedDevicesError",
    "TangtocError",
    "__version__",
    "as_tensor",
    "available_devices",
    "describe",
    "device_of",
    "fetch",
    "named_tensors",
    "pick_device",
    "pin",
    "resolve",
    "synchronize",
    "to_cpu",
    "to_device",
    "to_numpy",
]

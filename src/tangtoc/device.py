"""Which device to use, whether it exists, and what it is.

``pick_device`` replaces the seed's ``torch.device("cuda" if torch.cuda.is_available() else "cpu")``
(seed 4.1): it honours an override, understands torchrun, and when an explicit request cannot be met it
says *why* (CPU-only build, no driver, ``CUDA_VISIBLE_DEVICES``, index out of range) instead of failing
later with a bare ``AssertionError: Torch not compiled with CUDA enabled``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tangtoc import hardware
from tangtoc.errors import DeviceUnavailableError, InvalidDeviceError

DeviceLike = str | int | torch.device

ENV_VAR = "TANGTOC_DEVICE"
#: Device kinds tangtoc accepts by name; ``auto`` means "the best one present".
KINDS = ("auto", "cpu", "cuda", "mps", "xpu", "meta")
# Names people type that PyTorch does not know, and what they meant.
_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "apple": "mps", "metal": "mps", "intel": "xpu"}
_HIDING_VALUES = {"", "-1", "none", "nodevfiles", "void"}


@dataclass(frozen=True, slots=True)
class CudaFacts:
    """What decides whether CUDA can be used here; gathered by :func:`cuda_facts`, injectable in tests."""

    built_with_cuda: bool  # torch.version.cuda is set (a CUDA build of PyTorch)
    device_count: int
    driver_present: bool  # an NVIDIA kernel driver or nvidia-smi was found
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as set, None when unset
    torch_version: str = torch.__version__

    @property
    def visible_hides_all(self) -> bool:
        return self.visible_devices is not None and self.visible_devices.strip().lower() in _HIDING_VALUES


@functools.lru_cache(maxsize=1)
def nvidia_driver_present() -> bool:
    """True when an NVIDIA kernel driver is loaded or ``nvidia-smi`` is on the PATH.

    Cached: a driver does not come or go while a process runs, and ``to_device(batch, "auto")`` asks on every
    batch (looking on disk and along the PATH costs tens of microseconds)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def cuda_facts() -> CudaFacts:
    built = torch.version.cuda is not None
    # device_count() never raises and does not initialise CUDA in the forked-subprocess sense.
    count = torch.cuda.device_count() if built else 0
    return CudaFacts(
        built_with_cuda=built,
        device_count=count,
        driver_present=nvidia_driver_present(),
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def why_no_cuda(facts: CudaFacts, index: int | None = None) -> str | None:
    """Explain why ``cuda`` (or ``cuda:index``) cannot be used, with the fix; ``None`` when it can."""
    if not facts.built_with_cuda:
        driver = (
            "An NVIDIA driver IS present, so the GPU is there but this PyTorch cannot use it."
            if facts.driver_present
            else "No NVIDIA driver was found either."
        )
        return (
            f"this PyTorch build is CPU-only (torch {facts.torch_version}, torch.version.cuda is None). {driver} "
            "Fix: install a CUDA build, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu128`."
        )
    if facts.device_count == 0:
        if facts.visible_hides_all:
            return (
                f"CUDA_VISIBLE_DEVICES={facts.visible_devices!r} hides every GPU from this process. "
                "Fix: `unset CUDA_VISIBLE_DEVICES` or set it to the GPU ids to use, e.g. CUDA_VISIBLE_DEVICES=0."
            )
        if not facts.driver_present:
            return (
                "PyTorch has CUDA support but no NVIDIA driver was found (no /proc/driver/nvidia/version, no "
                "nvidia-smi). Fix: install the NVIDIA driver, or in a container run with `--gpus all`."
            )
        return (
            "PyTorch has CUDA support and a driver is present, but torch.cuda.device_count() is 0; the driver may be "
            "older than this build's CUDA "
            f"({torch.version.cuda}). Fix: check `nvidia-smi`, update the driver or install a matching torch build."
        )
    if index is not None and index >= facts.device_count:
        seen = f"{facts.device_count} CUDA device{'s' if facts.device_count != 1 else ''} visible"
        ids = ", ".join(f"cuda:{i}" for i in range(facts.device_count))
        hint = (
            f" (CUDA_VISIBLE_DEVICES={facts.visible_devices!r} limits what this process sees; indices are "
            "renumbered from 0)"
            if facts.visible_devices is not None
            else ""
        )
        return f"index {index} is out of range: {seen} ({ids}){hint}. Fix: use one of {ids}."
    return None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def _parse(spec: DeviceLike) -> torch.device | None:
    """Turn a user's device spec into a ``torch.device`` (``None`` for ``"auto"``), without checking it exists."""
    if isinstance(spec, torch.device):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return torch.device("cuda", _index(spec))
    if not isinstance(spec, str):
        raise TypeError(f"device must be a str, int or torch.device, got {type(spec).__name__}: {spec!r}.")
    text = spec.strip().lower()
    if not text:
        # An unset shell variable (`--device "$DEV"`) is a mistake to report, not a request for any device.
        raise InvalidDeviceError(
            f"the device is an empty string ({spec!r}). Fix: pass 'auto' for the best device present, or name "
            f"one: {', '.join(KINDS[1:])}, or an indexed form like 'cuda:1'."
        )
    if text == "auto":
        return None
    kind, colon, index = text.partition(":")
    numbered = index.isascii() and index.isdigit()  # "٣".isdigit() too, which torch does not read
    if kind in KINDS and kind != "auto" and (numbered or not colon):
        # int(): torch.device("cuda:01") raises "Invalid device string" where 01 can only mean 1.
        return torch.device(kind, _index(int(index))) if colon else torch.device(kind)
    meant = _ALIASES.get(text) or (kind if kind in KINDS else _ALIASES.get(kind))
    if meant is None:
        close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
        meant = close[0] if close else None
    if meant is not None and numbered and ":" not in meant and meant != "auto":
        meant += f":{index}"  # the name was wrong, the index was not: 'gpu:1' meant 'cuda:1'
    bad_index = f"{index!r} after ':' is not" if index else "nothing after ':' is"
    problem = f": {bad_index} a device index (0, 1, ...)." if colon and not numbered else "."
    suggestion = f" Did you mean {meant!r}?" if meant else ""
    raise InvalidDeviceError(
        f"unknown device {spec!r}{problem}{suggestion} Valid names: {', '.join(KINDS)}, or an indexed form like "
        "'cuda:1'."
    )


# PyTorch keeps a device index in 8 bits (c10::DeviceIndex): torch.device("cuda", 256) is cuda:0.
_MAX_INDEX = 127


def _index(n: int) -> int:
    if n < 0:
        raise InvalidDeviceError(f"device index must be >= 0, got {n}.")
    if n > _MAX_INDEX:
        raise InvalidDeviceError(
            f"device index must be <= {_MAX_INDEX}, got {n}: PyTorch keeps device indices in 8 bits, so a larger "
            "one would wrap around to another device. Fix: use the index of a device this machine has."
        )
    return n


def check_available(device: torch.device) -> None:
    """Raise :class:`DeviceUnavailableError`, saying why and how to fix it, when ``device`` cannot be used here."""
    asked = str(device)
    if device.type in ("cpu", "meta"):
        return
    if device.type == "cuda":
        reason = why_no_cuda(cuda_facts(), device.index)
        if reason:
            raise DeviceUnavailableError(f"device {asked!r} was requested, but {reason}")
    elif device.type == "mps":
        if not _mps_available():
            built = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_built()
            why = (
                "MPS needs macOS 12.3 or newer on Apple silicon"
                if built
                else "this PyTorch build has no MPS support (it exists only in macOS builds)"
            )
            raise DeviceUnavailableError(f"device {asked!r} was requested, but {why}. Fix: use 'cpu' or 'auto'.")
    elif device.type == "xpu":
        if not _xpu_available():
            raise DeviceUnavailableError(
                f"device {asked!r} was requested, but torch.xpu.is_available() is False (no Intel GPU, or a build "
                "without XPU support). Fix: use 'cpu' or 'auto', or install PyTorch's XPU build."
            )
    else:
        raise DeviceUnavailableError(f"device {asked!r} is not a kind tangtoc supports ({', '.join(KINDS)}).")


def _canonical(device: torch.device) -> torch.device:
    """Give an index to ``cuda``/``xpu``/``mps`` so it compares equal to ``tensor.device``."""
    if device.type in ("cpu", "meta"):
        return torch.device(device.type) if device.index is not None else device  # tensors report plain "cpu"
    if device.index is not None:
        return device
    if device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "xpu":
        return torch.device("xpu", torch.xpu.current_device())
    return torch.device(device.type, 0)


@functools.lru_cache(maxsize=64)
def _validated(spec: DeviceLike) -> torch.device:
    # Cached because to_device() resolves its target on every batch; failures raise and are not cached.
    parsed = _parse(spec)
    assert parsed is not None
    check_available(parsed)
    return parsed


def resolve(device: DeviceLike | None) -> torch.device:
    """Turn any device spec into a usable, indexed ``torch.device``; ``None``/``"auto"`` means :func:`pick_device`.

    Raises :class:`InvalidDeviceError` for names that are not devices and :class:`DeviceUnavailableError`
    for devices this machine cannot provide.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return pick_device()
    if not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be a str, int or torch.device, got {type(device).__name__}: {device!r}.")
    return _canonical(_validated(device))


def pick_device(prefer: DeviceLike | None = None) -> torch.device:
    """Choose the device to run on.

    Order: the ``TANGTOC_DEVICE`` environment variable (set empty, as by ``TANGTOC_DEVICE= cmd``, it counts as
    unset), then ``prefer``, then the best one present (cuda > mps > xpu > cpu). An empty ``prefer`` is refused:
    ``"auto"`` asks for the best one. Under torchrun (``LOCAL_RANK`` set) the automatic choice is
    ``cuda:LOCAL_RANK``. An explicit request is validated, and one that cannot be met raises
    :class:`DeviceUnavailableError` (the device does not exist here, with the reason and the fix) or
    :class:`InvalidDeviceError` (the name is not a device at all).
    """
    env = os.environ.get(ENV_VAR)
    spec: DeviceLike | None = env if env else prefer
    try:
        parsed = _parse(spec) if spec is not None else None
        if parsed is not None:
            check_available(parsed)
            return _canonical(parsed)
    except (DeviceUnavailableError, InvalidDeviceError) as e:
        if env:
            raise type(e)(f"{e} (It came from the environment: {ENV_VAR}={env!r}.)") from None
        raise
    facts = cuda_facts()
    if facts.device_count > 0:
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank and local_rank.isdigit() else torch.cuda.current_device()
        reason = why_no_cuda(facts, index)
        if reason:
            raise DeviceUnavailableError(f"torchrun set LOCAL_RANK={local_rank}, but {reason}")
        return torch.device("cuda", index)
    if _mps_available():
        return torch.device("mps")
    if _xpu_available():
        return torch.device("xpu", 0)
    return torch.device("cpu")


def _new_tf32_api() -> bool:
    # torch >= 2.9 has per-backend fp32_precision settings; once a program uses them, the legacy getter
    # torch.get_float32_matmul_precision() raises ("mix of the legacy and new APIs"), so we must use them too.
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def tf32_matmul_enabled() -> bool:
    """Whether float32 matmuls on CUDA may use TF32 tensor cores in this process, whichever API set it."""
    if _new_tf32_api() and torch.backends.cuda.matmul.fp32_precision != "none":
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


@contextlib.contextmanager
def float32_math(*, tf32_matmul: bool, tf32_conv: bool = True) -> Iterator[None]:
    """Run float32 matmuls (and cuDNN convolutions) on TF32 tensor cores or in full FP32, restoring both settings
    on exit. TF32 keeps a 10-bit mantissa that training tolerates and is about 8x the FP32 rate on Ampere and newer.
    PyTorch's defaults are FP32 matmuls and TF32 convolutions."""
    if _new_tf32_api():
        matmul_cfg, conv_cfg = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        saved = matmul_cfg.fp32_precision, conv_cfg.fp32_precision
        matmul_cfg.fp32_precision = "tf32" if tf32_matmul else "ieee"
        conv_cfg.fp32_precision = "tf32" if tf32_conv else "ieee"
        try:
            yield
        finally:
            matmul_cfg.fp32_precision, conv_cfg.fp32_precision = saved
        return
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if tf32_matmul else "highest")
    torch.backends.cudnn.allow_tf32 = tf32_conv
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


def available_devices() -> list[torch.device]:
    """Every device this process can compute on: the CPU first, then each GPU."""
    found = [torch.device("cpu")]
    found += [torch.device("cuda", i) for i in range(cuda_facts().device_count)]
    if _mps_available():
        found.append(torch.device("mps"))
    if _xpu_available():
        found += [torch.device("xpu", i) for i in range(torch.xpu.device_count())]
    return found


def accelerators_in_use() -> tuple[torch.device, ...]:
    """The accelerators whose work a host-side timing must wait for: every CUDA device once CUDA is initialized in
    this process, MPS and XPU where present. Starts nothing (an uninitialized CUDA has no work queued)."""
    found = []
    if torch.cuda.is_initialized():
        found += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append(torch.device("mps"))
    if _xpu_available():
        found += [torch.device("xpu", i) for i in range(torch.xpu.device_count())]
    return tuple(found)


def synchronize(device: torch.device) -> None:
    """Wait until all work queued on ``device`` is done; a no-op on the CPU and ``meta``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a device is and what it can do. Memory in bytes, peaks in FLOP/s, bandwidth in bytes/s.

    Fields that do not apply to a device, or that are not known for it, are ``None`` (never a guess).
    """

    kind: str
    index: int | None
    name: str
    total_memory: int | None
    free_memory: int | None
    compute_capability: tuple[int, int] | None
    multiprocessors: int | None
    bf16_supported: bool | None
    tf32_matmul: bool | None  # TF32 used for float32 matmuls in this process (see tf32_matmul_enabled)
    tf32_cudnn: bool | None
    torch_version: str
    cuda_version: str | None
    cudnn_version: int | None
    cpu_model: str
    cpu_cores: int
    torch_threads: int
    peak_flops: dict[str, float] | None = None
    memory_bandwidth: float | None = None
    spec_source: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}" if self.index is not None else self.kind


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    """CPU cores this process may use (respects affinity and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _host_memory() -> tuple[int | None, int | None]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = 1024
        return int(fields["MemTotal"].split()[0]) * kib, int(fields["MemAvailable"].split()[0]) * kib
    except (OSError, KeyError, ValueError):
        return None, None


def describe(device: DeviceLike | None = None) -> DeviceInfo:
    """Describe ``device`` (default: :func:`pick_device`), including published peaks where they are known."""
    dev = resolve(device)
    common = dict(
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        cudnn_version=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cpu_model=cpu_model(),
        cpu_cores=cpu_cores(),
        torch_threads=torch.get_num_threads(),
    )
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        spec = hardware.lookup(props.name)
        return DeviceInfo(
            kind="cuda",
            index=dev.index,
            name=props.name,
            total_memory=total,
            free_memory=free,
            compute_capability=(props.major, props.minor),
            multiprocessors=props.multi_processor_count,
            bf16_supported=props.major >= 8,  # of this device (is_bf16_supported() asks the current one)
            tf32_matmul=tf32_matmul_enabled(),
            tf32_cudnn=bool(torch.backends.cudnn.allow_tf32),
            peak_flops=dict(spec.peak_flops) if spec else None,
            memory_bandwidth=spec.memory_bandwidth if spec else None,
            spec_source=spec.source if spec else None,
            **common,
        )
    if dev.type in ("cpu", "meta"):
        total, free = _host_memory() if dev.type == "cpu" else (None, None)
        return DeviceInfo(
            kind=dev.type,
            index=None,
            name=common["cpu_model"] if dev.type == "cpu" else "meta (shapes only, no data)",
            total_memory=total,
            free_memory=free,
            compute_capability=None,
            multiprocessors=None,
            bf16_supported=dev.type == "cpu",
            tf32_matmul=None,
            tf32_cudnn=None,
            **common,
        )
    # mps / xpu: what PyTorch exposes portably; no published peaks in the table.
    name = torch.xpu.get_device_name(dev) if dev.type == "xpu" else "Apple GPU (MPS)"
    return DeviceInfo(
        kind=dev.type,
        index=dev.index,
        name=name,
        total_memory=None,
        free_memory=None,
        compute_capability=None,
        multiprocessors=None,
        bf16_supported=None,
        tf32_matmul=None,
        tf32_cudnn=None,
        **common,
    )

"""Which arithmetic a training step uses: bf16 or fp16 autocast, or plain fp32; and TF32 matmuls on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from tangtoc.device import float32_math

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True, slots=True)
class Precision:
    """A resolved precision: ``name`` is ``"bf16"``, ``"fp16"`` or ``"fp32"``; ``dtype`` the autocast dtype
    (``None`` for fp32, which runs without autocast)."""

    name: str
    dtype: torch.dtype | None
    device_type: str

    def autocast(self) -> AbstractContextManager[object]:
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16, whose narrow exponent range underflows small gradients; ``None`` otherwise
        (bf16 has fp32's range and needs none). Note that its ``step`` reads an inf/NaN flag on the host: one
        synchronisation per step, the price of fp16."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def peak_key(self) -> str:
        """The key of :attr:`tangtoc.DeviceInfo.peak_flops` that bounds this precision's matmuls."""
        if self.dtype is not None:
            return str(self.dtype).removeprefix("torch.")
        # fit() runs float32 on CUDA under tf32_matmuls: its bound is the TF32 peak. Taking the FP32 peak
        # (7x lower on an H100) would report impossible MFU, nanoGPT's "104% MFU" mistake.
        return "tf32" if self.device_type == "cuda" else "float32"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turn ``"auto" | "bf16" | "fp16" | "fp32"`` into a :class:`Precision` for ``device``.

    ``auto``: bf16 on CUDA GPUs that support it (Ampere and newer) and on XPU, fp16 with a GradScaler on older
    CUDA GPUs, fp32 elsewhere. On a CPU with native bf16 (AVX512-BF16, AMX), ask for ``"bf16"`` explicitly.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
    kind = device.type
    # Of this device: torch.cuda.is_bf16_supported() answers for the current one.
    cuda_bf16 = kind == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if name == "auto":
        if kind == "cuda":
            name = "bf16" if cuda_bf16 else "fp16"
        else:
            name = "bf16" if kind == "xpu" else "fp32"
    elif name == "bf16" and kind == "cuda" and not cuda_bf16:
        cc = torch.cuda.get_device_capability(device)
        raise ValueError(
            f"precision='bf16' was requested, but {torch.cuda.get_device_name(device)} (compute capability "
            f"{cc[0]}.{cc[1]}) has no bf16 support; it needs 8.0 (Ampere) or newer. Fix: precision='fp16' or 'auto'."
        )
    return Precision(name=name, dtype=_DTYPES[name], device_type=kind)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (about 8x the FP32 rate on Ampere and
    newer, with a 10-bit mantissa that training tolerates); restore both settings on exit. No-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    with float32_math(tf32_matmul=True, tf32_conv=True):
        yield

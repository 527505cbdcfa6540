"""Published peak rates of accelerators, each with the document it comes from.

These numbers feed MFU and roofline estimates. A wrong peak gives nonsense such as nanoGPT's
"104% MFU on an H100" (it hard-coded the A100's 312 TFLOP/s), so the rules are:

* every entry cites its source; peaks are **dense** (no 2:4 sparsity), in FLOP/s, at boost clock;
* a device that is not in the table gets ``None`` from :func:`lookup`, never a neighbour's numbers;
* dtype keys are ``"float64"`` (the FP64 tensor-core rate where the part has one, as cuBLAS uses it
  for float64 matmuls), ``"float32"`` (plain FP32 on CUDA cores), ``"tf32"``, ``"bfloat16"``,
  ``"float16"``, ``"float8"`` (tensor cores where the part has them); a dtype the part does not
  accelerate is simply absent;
* a MIG slice, a laptop part or a cut-down regional variant is *not* the full part: ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

T = 1e12  # one TFLOP/s
GBPS = 1e9  # one GB/s (decimal, as datasheets use)


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """Peak rates of one accelerator model, as published by its vendor."""

    name: str
    peak_flops: Mapping[str, float]  # dense FLOP/s per dtype key
    memory_bandwidth: float  # bytes/s
    memory_bytes: int
    source: str  # where the numbers come from
    note: str = ""


def _spec(name: str, flops_t: dict[str, float], bw_gbps: float, mem_gb: int, source: str, note: str = ""):
    return HardwareSpec(
        name=name,
        peak_flops=MappingProxyType({k: v * T for k, v in flops_t.items()}),
        memory_bandwidth=bw_gbps * GBPS,
        memory_bytes=mem_gb * 10**9,
        source=source,
        note=note,
    )


_A100_SRC = "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"  # noqa: E501
_H100_SRC = (
    "NVIDIA H100 Tensor Core GPU datasheet (resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet)"
)
_A100_FLOPS = {"float64": 19.5, "float32": 19.5, "tf32": 156, "bfloat16": 312, "float16": 312}
_H100_SXM_FLOPS = {"float64": 67, "float32": 67, "tf32": 494.5, "bfloat16": 989.5, "float16": 989.5, "float8": 1979}

A100_SXM_80GB = _spec("NVIDIA A100 SXM 80GB", _A100_FLOPS, 2039, 80, _A100_SRC)
A100_SXM_40GB = _spec("NVIDIA A100 SXM 40GB", _A100_FLOPS, 1555, 40, _A100_SRC)
A100_PCIE_80GB = _spec("NVIDIA A100 PCIe 80GB", _A100_FLOPS, 1935, 80, _A100_SRC)
A100_PCIE_40GB = _spec("NVIDIA A100 PCIe 40GB", _A100_FLOPS, 1555, 40, _A100_SRC)
H100_SXM = _spec("NVIDIA H100 SXM", _H100_SXM_FLOPS, 3350, 80, _H100_SRC)
H100_PCIE = _spec(
    "NVIDIA H100 PCIe",
    {"float64": 51, "float32": 51, "tf32": 378, "bfloat16": 756, "float16": 756, "float8": 1513},
    2000,
    80,
    _H100_SRC,
)
H100_NVL = _spec(
    "NVIDIA H100 NVL",
    {"float64": 60, "float32": 60, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
    3900,
    94,
    _H100_SRC,
)
H200_SXM = _spec(
    "NVIDIA H200 SXM",
    _H100_SXM_FLOPS,
    4800,
    141,
    "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/)",
    note="same Hopper compute as the H100 SXM, with 141 GB of HBM3e",
)
H200_NVL = _spec(
    "NVIDIA H200 NVL",
    {"float64": 60, "float32": 60, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
    4800,
    141,
    "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/)",
)
_GH200_SRC = "NVIDIA GH200 Grace Hopper Superchip datasheet (nvidia.com/en-us/data-center/grace-hopper-superchip/)"
# The Hopper GPU of the superchip, as its datasheet prints it (dense | sparse: 494 | 989 TF32, 990 | 1,979 BF16).
_GH200_FLOPS = {"float64": 67, "float32": 67, "tf32": 494, "bfloat16": 990, "float16": 990, "float8": 1979}
GH200 = _spec("NVIDIA GH200 96GB HBM3", _GH200_FLOPS, 4000, 96, _GH200_SRC, note="GPU memory only (HBM3)")
GH200_HBM3E = _spec("NVIDIA GH200 144GB HBM3e", _GH200_FLOPS, 4900, 144, _GH200_SRC, note="GPU memory only")
B200 = _spec(
    "NVIDIA B200",
    # Per GPU of an HGX B200 (1,000 W); the page prints tensor rates with sparsity, halved here.
    {"float64": 37, "float32": 75, "tf32": 1100, "bfloat16": 2250, "float16": 2250, "float8": 4500},
    7700,
    180,
    "NVIDIA HGX platform page, HGX B200 specifications per GPU (nvidia.com/en-us/data-center/hgx/)",
    note="NVIDIA revised FP32/FP64 from 80/40 to 75/37 TFLOP/s and memory from 192 GB at 8 TB/s; these are the "
    "current figures. The GB200's B200 (up to 1,200 W) is faster and is not this entry",
)
L40S = _spec(
    "NVIDIA L40S",
    # Dense figures as printed (BF16 362.05; the sparse one, 733, is not quite twice it).
    {"float32": 91.6, "tf32": 183, "bfloat16": 362.05, "float16": 362.05, "float8": 733},
    864,
    48,
    "NVIDIA L40S GPU datasheet (nvidia.com/en-us/data-center/l40s/)",
)
L4 = _spec(
    "NVIDIA L4",
    {"float32": 30.3, "tf32": 60, "bfloat16": 121, "float16": 121, "float8": 242.5},
    300,
    24,
    "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4/)",
)
T4 = _spec(
    "NVIDIA T4",
    {"float32": 8.1, "float16": 65},
    320,
    16,
    "NVIDIA T4 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf)",  # noqa: E501
    note="Turing: no bfloat16 or TF32 tensor cores",
)
RTX_4090 = _spec(
    "NVIDIA GeForce RTX 4090",
    # Tensor rates with FP32 accumulate, as PyTorch's matmuls use; FP16 accumulate doubles them.
    {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 165.2, "float8": 330.3},
    1008,
    24,
    "NVIDIA Ada Lovelace GPU architecture whitepaper v2.02, appendix table 2 (images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf)",  # noqa: E501
)
A10G = _spec(
    "NVIDIA A10G",
    {"float32": 35, "tf32": 35, "bfloat16": 70, "float16": 70},
    600,
    24,
    "Baseten, 'NVIDIA A10 vs A10G for ML model inference', spec table (baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/)",  # noqa: E501
    note="AWS-only part; NVIDIA publishes no datasheet for it",
)

# (words that must all occur in the lower-cased torch.cuda.get_device_name(), spec); first match wins,
# so more specific names come first. Memory size separates the A100 variants.
_TABLE: tuple[tuple[tuple[str, ...], HardwareSpec], ...] = (
    (("gh200", "hbm3e"), GH200_HBM3E),  # "gh200" is a word of its own: never taken for an H200
    (("gh200",), GH200),  # "NVIDIA GH200 480GB" (the Grace CPU's memory) is the 96 GB HBM3 part
    (("b200",), B200),  # whole words: a "GB200" is not this part
    (("l40s",), L40S),
    (("h200", "nvl"), H200_NVL),
    (("h200",), H200_SXM),
    (("h100", "nvl"), H100_NVL),
    (("h100", "pcie"), H100_PCIE),
    (("h100",), H100_SXM),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (("a100", "pcie", "80gb"), A100_PCIE_80GB),
    (("a100", "pcie"), A100_PCIE_40GB),
    (("a100", "80gb"), A100_SXM_80GB),
    (("a100",), A100_SXM_40GB),
    (("a10g",), A10G),
    (("l4",), L4),
    (("t4",), T4),
    (("rtx", "4090"), RTX_4090),
)

#: Short names accepted wherever a user names a target GPU (``--target h100``).
BY_SHORT_NAME: Mapping[str, HardwareSpec] = MappingProxyType(
    {
        "a100": A100_SXM_80GB,
        "a100-40gb": A100_SXM_40GB,
        "a100-pcie": A100_PCIE_80GB,
        "h100": H100_SXM,
        "h100-pcie": H100_PCIE,
        "h100-nvl": H100_NVL,
        "h200": H200_SXM,
        "h200-nvl": H200_NVL,
        "gh200": GH200,
        "gh200-hbm3e": GH200_HBM3E,
        "b200": B200,
        "l40s": L40S,
        "l4": L4,
        "t4": T4,
        "rtx4090": RTX_4090,
        "a10g": A10G,
    }
)


# Words that mark a smaller relative of a listed part: a MIG slice ("A100-SXM4-80GB MIG 3g.40gb"), a laptop
# chip ("RTX 4090 Laptop GPU"), the cut-down "RTX 4090 D". Their peaks are not the table's.
_NOT_THE_FULL_PART = frozenset({"mig", "laptop", "mobile", "d"})


def lookup(device_name: str) -> HardwareSpec | None:
    """Return the published spec for a CUDA device name, or ``None`` when it is not in the table.

    ``device_name`` is what ``torch.cuda.get_device_name()`` returns, e.g. ``"NVIDIA H100 80GB HBM3"``,
    ``"NVIDIA A100-SXM4-40GB"`` or ``"Tesla T4"``.
    """
    words = set(device_name.lower().replace("-", " ").replace("_", " ").split())
    if words & _NOT_THE_FULL_PART:
        return None
    for needles, spec in _TABLE:
        # Whole words only, so "NVIDIA L40S" is not taken for an L4.
        if all(n in words for n in needles):
            return spec
    return None

"""``tangtoc doctor``: the environment report a user pastes into an issue, then problems with their fixes.

Facts are gathered once into an :class:`Environment` (:func:`gather`); :func:`find_problems` is a pure
function of it, so every check is tested on made-up environments without the hardware.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch

from tangtoc import telemetry
from tangtoc.device import (
    CudaFacts,
    DeviceInfo,
    available_devices,
    cpu_cores,
    cpu_model,
    cuda_facts,
    describe,
    resolve,
)
from tangtoc.errors import DeviceUnavailableError, InvalidDeviceError
from tangtoc.schemas import stamp
from tangtoc.telemetry import GpuTelemetry

#: /dev/shm below this makes DataLoader workers die with "bus error" (Docker's default is 64 MiB).
MIN_SHM_BYTES = 1 << 30
_ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
    "TANGTOC_DEVICE",
    "OMP_NUM_THREADS",
    "PYTORCH_CUDA_ALLOC_CONF",
    "LOCAL_RANK",
    "WORLD_SIZE",
)
_PACKAGES = ("tangtoc", "torch", "numpy", "rich", "matplotlib", "accelerate", "lightning", "triton", "nvidia-ml-py")
_C_COMPILERS = ("cc", "gcc", "clang")
_CXX_COMPILERS = ("c++", "g++", "clang++")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that will make training slower or fail, and how to fix it.

    ``severity`` is ``"problem"`` for a setting of this machine or process that is wrong (it makes the report
    unhealthy), or ``"advice"`` for something to do in the training script itself, which doctor cannot see.
    """

    code: str  # stable identifier, for scripts
    title: str
    detail: str
    fix: str
    severity: str = "problem"


@dataclass(frozen=True, slots=True)
class Environment:
    """Everything the checks look at. Build one with :func:`gather`, or by hand in tests."""

    python: str
    platform: str
    cpu_model: str
    cpu_cores: int
    packages: dict[str, str | None]
    cuda: CudaFacts
    devices: tuple[DeviceInfo, ...]
    env_vars: dict[str, str]
    shm_bytes: int | None  # size of /dev/shm, None where there is none (macOS, Windows)
    c_compiler: str | None  # path of a C compiler (Triton builds its launchers with it)
    cxx_compiler: str | None  # path of a C++ compiler (Inductor's CPU backend needs it)
    telemetry: tuple[GpuTelemetry, ...] = ()  # NVML's view of each GPU, where nvidia-ml-py is installed


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _which(env_var: str, names: tuple[str, ...]) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit and shutil.which(explicit):
        return shutil.which(explicit)
    return next((p for p in map(shutil.which, names) if p), None)


def gather() -> Environment:
    """Read the facts of this machine and process."""
    try:
        shm: int | None = shutil.disk_usage("/dev/shm").total
    except OSError:
        shm = None
    facts = cuda_facts()
    return Environment(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu_model=cpu_model(),
        cpu_cores=cpu_cores(),
        packages={name: _version(name) for name in _PACKAGES},
        cuda=facts,
        devices=tuple(describe(d) for d in available_devices()),
        env_vars={k: os.environ[k] for k in _ENV_VARS if k in os.environ},
        shm_bytes=shm,
        c_compiler=_which("CC", _C_COMPILERS),
        cxx_compiler=_which("CXX", _CXX_COMPILERS),
        telemetry=telemetry.read_all(facts.device_count),
    )


def find_problems(env: Environment) -> list[Problem]:
    """Every problem found in ``env``, most serious first."""
    problems: list[Problem] = []
    cuda = env.cuda
    if not cuda.built_with_cuda and cuda.driver_present:
        problems.append(
            Problem(
                "cpu-only-torch-with-gpu",
                "PyTorch is a CPU-only build, but this machine has an NVIDIA driver",
                f"torch {env.packages.get('torch')} cannot use the GPU: torch.version.cuda is None.",
                "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128 "
                "(pick the CUDA version your driver supports: see nvidia-smi).",
            )
        )
    if cuda.visible_hides_all and (cuda.driver_present or cuda.built_with_cuda):
        problems.append(
            Problem(
                "cuda-visible-devices-hides-all",
                "CUDA_VISIBLE_DEVICES hides every GPU",
                f"CUDA_VISIBLE_DEVICES={cuda.visible_devices!r}, so this process sees no GPU at all.",
                "unset CUDA_VISIBLE_DEVICES, or list the GPUs to use: export CUDA_VISIBLE_DEVICES=0",
            )
        )
    requested = env.env_vars.get("TANGTOC_DEVICE")
    if requested:
        try:
            resolve(requested)
        except (InvalidDeviceError, DeviceUnavailableError) as e:
            problems.append(
                Problem(
                    "tangtoc-device-unusable",
                    f"TANGTOC_DEVICE={requested!r} cannot be used",
                    f"every tt.pick_device() and tt.to_device(..., 'auto') will fail: {e}",
                    "unset TANGTOC_DEVICE, or set it to a device listed above (cpu, cuda:0, ...).",
                )
            )
    for info in env.devices:
        # PyTorch leaves TF32 off for float32 matmuls by default. Whether a script turns it on, doctor cannot
        # see (it is a setting of the training process), so this is advice, not a fault of the machine.
        if (
            info.kind == "cuda"
            and info.compute_capability
            and info.compute_capability >= (8, 0)
            and (info.tf32_matmul is False)
        ):
            problems.append(
                Problem(
                    "tf32-off",
                    f"TF32 is off by default on {info.label} ({info.name}), an Ampere-or-newer GPU",
                    "float32 matmuls run on the slow FP32 path unless the training script allows TF32; its tensor "
                    "cores are several times faster with accuracy that suits training.",
                    'torch.set_float32_matmul_precision("high") at the start of training (tt.fit does it for you).',
                    severity="advice",
                )
            )
    if env.env_vars.get("CUDA_LAUNCH_BLOCKING", "0").strip() not in ("", "0"):
        problems.append(
            Problem(
                "cuda-launch-blocking",
                "CUDA_LAUNCH_BLOCKING is set",
                "every CUDA kernel launch waits for the kernel to finish: good for debugging, much slower "
                "for training.",
                "unset CUDA_LAUNCH_BLOCKING",
            )
        )
    for t in env.telemetry:
        problems += _telemetry_problems(t)
    if env.shm_bytes is not None and env.shm_bytes < MIN_SHM_BYTES:
        problems.append(
            Problem(
                "small-shm",
                f"/dev/shm is only {env.shm_bytes / 2**20:.0f} MiB",
                "DataLoader workers pass batches through shared memory and crash with 'bus error' when it "
                "runs out (Docker's default is 64 MiB).",
                "docker run --shm-size=8g (or --ipc=host), or DataLoader(num_workers=0).",
            )
        )
    if env.cxx_compiler is None or (cuda.built_with_cuda and env.c_compiler is None):
        missing = "C++" if env.cxx_compiler is None else "C"
        problems.append(
            Problem(
                "no-compiler",
                f"no {missing} compiler found, so torch.compile will fail",
                f"looked for $CXX, {', '.join(_CXX_COMPILERS)} (Inductor's CPU code) and $CC, "
                f"{', '.join(_C_COMPILERS)} (Triton's GPU launchers).",
                "install one: apt install build-essential (Debian/Ubuntu), xcode-select --install (macOS).",
            )
        )
    return problems


def _telemetry_problems(t: GpuTelemetry) -> list[Problem]:
    """What NVML shows that will slow training or corrupt it: a narrow or old link, a GPU held back, ECC errors."""
    found = []
    limits = t.link_limits()
    if limits:
        found.append(
            Problem(
                "pcie-link-limited",
                f"cuda:{t.index}'s PCIe link is {t.link_text()}",
                "host<->device copies (every batch that is not resident on the GPU) run at most at the link's "
                f"speed: {'; '.join(limits)}.",
                "move the GPU to a full x16 slot of its generation (check the BIOS PCIe settings and risers), or keep "
                "the data resident on the GPU (tt.ResidentLoader) so the link matters less.",
            )
        )
    if t.slowdowns:
        found.append(
            Problem(
                "gpu-slowed-down",
                f"cuda:{t.index} is held below its clocks: {', '.join(t.slowdowns)}",
                f"SM clock {t.sm_clock_mhz} of {t.max_sm_clock_mhz} MHz; every measurement on it is slower than the "
                "GPU can be.",
                "check cooling and the power supply (nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER); rerun when it "
                "has cooled down.",
            )
        )
    if t.ecc_uncorrected:
        found.append(
            Problem(
                "ecc-errors",
                f"cuda:{t.index} reports {t.ecc_uncorrected} uncorrected ECC memory errors since the driver loaded",
                "uncorrected errors can corrupt training silently or crash it (Xid 48/63/64 in the kernel log).",
                "drain the GPU and ask the administrator to reset it (nvidia-smi -r) or to replace it.",
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class DoctorReport:
    environment: Environment
    problems: tuple[Problem, ...]

    @property
    def healthy(self) -> bool:
        """No problem of this machine or process (advice for the training script does not count)."""
        return not any(p.severity == "problem" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return stamp("tangtoc.doctor", {"healthy": self.healthy, **dataclasses.asdict(self)})


def diagnose() -> DoctorReport:
    """Gather the environment and check it."""
    env = gather()
    return DoctorReport(env, tuple(find_problems(env)))


def torch_summary() -> str:
    """One line on the PyTorch build, e.g. ``torch 2.13.0+cpu (CPU-only build)``."""
    if torch.version.cuda:
        return f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    return f"torch {torch.__version__} (CPU-only build)"

"""GPU telemetry from NVML: clocks, clock-throttle reasons, power, the PCIe link, ECC errors, utilisation.

NVML is NVIDIA's management library, reached through ``nvidia-ml-py`` (``import pynvml``), an optional extra
(``pip install tangtoc[nvml]``). Without it, or without a driver, :func:`read` returns ``None`` and nothing else
changes. These facts explain measurements that the datasheet does not: a GPU held below its clocks by heat or
power, or a PCIe link narrower or older than the card (a x8 or Gen3 link halves or quarters host<->device copies).
NVML reads no tensor and queues no work: reading it costs no synchronization.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import torch

#: Bytes per second each way per PCIe lane, after line encoding (PCI-SIG base specifications 1.0-6.0:
#: 2.5, 5, 8, 16, 32, 64 GT/s; 8b/10b encoding up to Gen2, 128b/130b from Gen3; Gen6's FLIT mode ~1:1).
PCIE_LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}

#: NVML's clock-throttle (since driver 535 "clocks event") reason bits, and what each means for a measurement.
THROTTLE_REASONS = {
    0x1: "idle",
    0x2: "application clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
    0x100: "display clock setting",
}
#: The reasons that mean the GPU runs slower than it could because of its environment (heat, power supply).
SLOWDOWNS = frozenset({"hardware slowdown", "software thermal slowdown", "hardware thermal slowdown",
                       "hardware power brake"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    """One GPU's state at the moment it was read; ``None`` where NVML does not report a value for this GPU."""

    index: int  # the CUDA index in this process
    name: str | None
    sm_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    throttle_reasons: tuple[str, ...]
    power_w: float | None
    power_limit_w: float | None
    pcie_gen: int | None  # the link's generation now (links step down when idle)
    pcie_width: int | None
    pcie_max_gen: int | None  # the most the GPU and its slot together allow
    pcie_max_width: int | None
    pcie_gpu_max_gen: int | None  # the most the GPU itself allows
    ecc_uncorrected: int | None  # volatile: since the driver loaded
    utilization_pct: int | None
    memory_used_bytes: int | None
    temperature_c: int | None

    @property
    def link_bytes_per_s(self) -> float | None:
        """The most the link can carry each way (its maximum generation and width), bytes per second."""
        if self.pcie_max_gen not in PCIE_LANE_BYTES_PER_S or not self.pcie_max_width:
            return None
        return PCIE_LANE_BYTES_PER_S[self.pcie_max_gen] * self.pcie_max_width

    def link_text(self) -> str | None:
        """E.g. ``PCIe Gen5 x16: at most 63.0 GB/s each way``, with the reason when the link limits the GPU."""
        bandwidth = self.link_bytes_per_s
        if bandwidth is None:
            return None
        text = f"PCIe Gen{self.pcie_max_gen} x{self.pcie_max_width}: at most {bandwidth / 1e9:.1f} GB/s each way"
        limits = self.link_limits()
        return text + (f" ({'; '.join(limits)})" if limits else "")

    def link_limits(self) -> list[str]:
        """Why the link carries less than a full-width link of the GPU's own generation, if it does."""
        limits = []
        if self.pcie_max_width is not None and self.pcie_max_width < 16:
            limits.append(f"x{self.pcie_max_width}, not x16: host<->device copies get {self.pcie_max_width}/16 "
                          "of a full link")  # fmt: skip
        if self.pcie_gpu_max_gen and self.pcie_max_gen and self.pcie_max_gen < self.pcie_gpu_max_gen:
            limits.append(f"the slot allows Gen{self.pcie_max_gen}, the GPU Gen{self.pcie_gpu_max_gen}: copies get "
                          f"1/{2 ** (self.pcie_gpu_max_gen - self.pcie_max_gen)} of the GPU's link")  # fmt: skip
        return limits

    @property
    def slowdowns(self) -> tuple[str, ...]:
        return tuple(r for r in self.throttle_reasons if r in SLOWDOWNS)

    def summary(self) -> str:
        """One line for ``doctor`` and ``bench``."""
        parts = []
        if self.sm_clock_mhz is not None:
            peak = f"/{self.max_sm_clock_mhz}" if self.max_sm_clock_mhz else ""
            parts.append(f"SM {self.sm_clock_mhz}{peak} MHz")
        if self.memory_clock_mhz is not None:
            parts.append(f"memory {self.memory_clock_mhz} MHz")
        if self.power_w is not None:
            limit = f"/{self.power_limit_w:.0f}" if self.power_limit_w else ""
            parts.append(f"{self.power_w:.0f}{limit} W")
        if self.temperature_c is not None:
            parts.append(f"{self.temperature_c} C")
        if self.pcie_gen is not None and self.pcie_width is not None:
            parts.append(f"link now Gen{self.pcie_gen} x{self.pcie_width}")
        link = self.link_text()
        if link:
            parts.append(link)
        if self.ecc_uncorrected is not None:
            parts.append(f"{self.ecc_uncorrected} uncorrected ECC errors")
        parts.append("throttle: " + (", ".join(self.throttle_reasons) or "none"))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "link_bytes_per_s": self.link_bytes_per_s, "link_limits": self.link_limits()}


def _nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _nvml_index(cuda_index: int) -> int:
    """NVML numbers every GPU of the machine; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES' order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        if cuda_index < len(entries) and entries[cuda_index].isdigit():
            return int(entries[cuda_index])
    return cuda_index


def _handle(nvml: Any, cuda_index: int) -> Any:
    """The NVML handle of a CUDA device: by PCI bus id where torch reports it (exact under any renumbering)."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(cuda_index)
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
            with contextlib.suppress(Exception):  # an id NVML does not take: the index mapping below
                return nvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08X}:{bus:02X}:{device:02X}.0")
    return nvml.nvmlDeviceGetHandleByIndex(_nvml_index(cuda_index))


def read(cuda_index: int = 0, nvml: Any = None) -> GpuTelemetry | None:
    """The telemetry of CUDA device ``cuda_index``, or ``None`` without NVML or a driver. Each value that this GPU
    does not report (ECC on most consumer cards, power on some) is ``None``. ``nvml`` replaces ``pynvml`` (tests)."""
    nvml = nvml or _nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no telemetry, nothing else changes
        return None
    try:
        handle = _handle(nvml, cuda_index)

        def ask(fn: str, *args: Any) -> Any:
            try:
                return getattr(nvml, fn)(handle, *args)
            except Exception:  # NVMLError_NotSupported and kin: this GPU does not report it
                return None

        # Renamed in driver 535 ("clocks event reasons"); older pynvml and drivers know only the first name.
        bits = ask("nvmlDeviceGetCurrentClocksEventReasons")
        bits = ask("nvmlDeviceGetCurrentClocksThrottleReasons") if bits is None else bits
        power, limit = ask("nvmlDeviceGetPowerUsage"), ask("nvmlDeviceGetEnforcedPowerLimit")  # milliwatts
        util, memory = ask("nvmlDeviceGetUtilizationRates"), ask("nvmlDeviceGetMemoryInfo")
        name = ask("nvmlDeviceGetName")
        return GpuTelemetry(
            index=cuda_index,
            name=name.decode() if isinstance(name, bytes) else name,
            sm_clock_mhz=ask("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
            max_sm_clock_mhz=ask("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_SM),
            memory_clock_mhz=ask("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM),
            throttle_reasons=tuple(text for bit, text in THROTTLE_REASONS.items() if (bits or 0) & bit),
            power_w=None if power is None else power / 1e3,
            power_limit_w=None if limit is None else limit / 1e3,
            pcie_gen=ask("nvmlDeviceGetCurrPcieLinkGeneration"),
            pcie_width=ask("nvmlDeviceGetCurrPcieLinkWidth"),
            pcie_max_gen=ask("nvmlDeviceGetMaxPcieLinkGeneration"),
            pcie_max_width=ask("nvmlDeviceGetMaxPcieLinkWidth"),
            pcie_gpu_max_gen=ask("nvmlDeviceGetGpuMaxPcieLinkGeneration"),
            ecc_uncorrected=ask(
                "nvmlDeviceGetTotalEccErrors", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
            ),
            utilization_pct=None if util is None else util.gpu,
            memory_used_bytes=None if memory is None else memory.used,
            temperature_c=ask("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
        )
    except Exception:  # a handle that cannot be had (a GPU NVML does not list): no telemetry
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def read_all(device_count: int, nvml: Any = None) -> tuple[GpuTelemetry, ...]:
    """Telemetry of every CUDA device that reports it (none without NVML)."""
    found = (read(i, nvml) for i in range(device_count))
    return tuple(t for t in found if t is not None)

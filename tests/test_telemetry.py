"""GPU telemetry through a fake NVML on the CPU: what is read, what is missing, and what doctor makes of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tangtoc import doctor, telemetry
from tangtoc.telemetry import GpuTelemetry


class NVMLError(Exception):
    pass


class FakeNVML:
    """The part of pynvml that tangtoc calls, answering for one GPU; any value left out raises NotSupported."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, NVML_TEMPERATURE_GPU = 1, 0, 0

    def __init__(self, values: dict[Any, Any]) -> None:
        self.values = values
        self.initialized = 0

    def nvmlInit(self) -> None:
        if self.values.get("no_driver"):
            raise NVMLError("Driver Not Loaded")
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self.initialized -= 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def __getattr__(self, name: str) -> Any:
        def query(handle: int, *args: Any) -> Any:
            key = (name, *args)
            for k in (key, name):
                if k in self.values:
                    return self.values[k]
            raise NVMLError("Not Supported")

        if name.startswith("nvmlDevice"):
            return query
        raise AttributeError(name)


H200_X8_GEN4 = {
    "nvmlDeviceGetName": "NVIDIA H200",
    ("nvmlDeviceGetClockInfo", 1): 1200,
    ("nvmlDeviceGetMaxClockInfo", 1): 1980,
    ("nvmlDeviceGetClockInfo", 2): 3201,
    "nvmlDeviceGetCurrentClocksThrottleReasons": 0x4 | 0x40,  # software power cap + hardware thermal slowdown
    "nvmlDeviceGetPowerUsage": 650_000,
    "nvmlDeviceGetEnforcedPowerLimit": 700_000,
    "nvmlDeviceGetCurrPcieLinkGeneration": 4,
    "nvmlDeviceGetCurrPcieLinkWidth": 8,
    "nvmlDeviceGetMaxPcieLinkGeneration": 4,
    "nvmlDeviceGetMaxPcieLinkWidth": 8,
    "nvmlDeviceGetGpuMaxPcieLinkGeneration": 5,
    "nvmlDeviceGetTotalEccErrors": 2,
    "nvmlDeviceGetUtilizationRates": SimpleNamespace(gpu=97),
    "nvmlDeviceGetMemoryInfo": SimpleNamespace(used=80 * 2**30),
    "nvmlDeviceGetTemperature": 88,
}


def test_everything_nvml_reports_is_read_and_nvml_is_shut_down() -> None:
    nvml = FakeNVML(H200_X8_GEN4)
    t = telemetry.read(0, nvml)
    assert t is not None and nvml.initialized == 0
    assert (t.name, t.sm_clock_mhz, t.max_sm_clock_mhz, t.memory_clock_mhz) == ("NVIDIA H200", 1200, 1980, 3201)
    assert (t.power_w, t.power_limit_w, t.utilization_pct, t.temperature_c) == (650.0, 700.0, 97, 88)
    assert t.throttle_reasons == ("software power cap", "hardware thermal slowdown")
    assert t.slowdowns == ("hardware thermal slowdown",)
    assert t.link_bytes_per_s == pytest.approx(8 * 1.969e9)
    assert t.link_text() == (
        "PCIe Gen4 x8: at most 15.8 GB/s each way (x8, not x16: host<->device copies get 8/16 of a full link; "
        "the slot allows Gen4, the GPU Gen5: copies get 1/2 of the GPU's link)"
    )


def test_values_this_gpu_does_not_report_are_none() -> None:
    t = telemetry.read(0, FakeNVML({("nvmlDeviceGetClockInfo", 1): 2520}))  # a consumer card: no ECC, no power
    assert t is not None and t.sm_clock_mhz == 2520
    assert t.ecc_uncorrected is None and t.power_w is None and t.link_text() is None and t.throttle_reasons == ()
    assert t.summary() == "SM 2520 MHz, throttle: none"


def test_without_nvml_or_a_driver_there_is_no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert telemetry.read(0, FakeNVML({"no_driver": True})) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert telemetry.read(0) is None
    assert telemetry.read_all(2) == ()


def test_the_cuda_index_maps_through_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert telemetry._nvml_index(0) == 3 and telemetry._nvml_index(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a")  # UUIDs: NVML's own order is the best guess left
    assert telemetry._nvml_index(0) == 0


def environment(t: GpuTelemetry) -> doctor.Environment:
    env = doctor.gather()
    return doctor.Environment(**{**{f: getattr(env, f) for f in env.__dataclass_fields__}, "telemetry": (t,)})


def test_doctor_names_a_narrow_link_a_slowed_gpu_and_ecc_errors() -> None:
    t = telemetry.read(0, FakeNVML(H200_X8_GEN4))
    assert t is not None
    codes = {p.code: p for p in doctor.find_problems(environment(t))}
    assert {"pcie-link-limited", "gpu-slowed-down", "ecc-errors"} <= set(codes)
    assert codes["pcie-link-limited"].title.startswith("cuda:0's PCIe link is PCIe Gen4 x8: at most 15.8 GB/s")
    assert "hardware thermal slowdown" in codes["gpu-slowed-down"].title
    assert "SM clock 1200 of 1980 MHz" in codes["gpu-slowed-down"].detail
    assert codes["ecc-errors"].title == "cuda:0 reports 2 uncorrected ECC memory errors since the driver loaded"


def test_a_healthy_gpu_adds_no_problem() -> None:
    healthy = {**H200_X8_GEN4, "nvmlDeviceGetCurrentClocksThrottleReasons": 0x1, "nvmlDeviceGetTotalEccErrors": 0,
               "nvmlDeviceGetMaxPcieLinkGeneration": 5, "nvmlDeviceGetMaxPcieLinkWidth": 16}  # fmt: skip
    t = telemetry.read(0, FakeNVML(healthy))
    assert t is not None and t.link_limits() == [] and t.throttle_reasons == ("idle",)
    assert not {"pcie-link-limited", "gpu-slowed-down", "ecc-errors"} & {
        p.code for p in doctor.find_problems(environment(t))
    }


def test_the_gpu_harness_puts_the_link_next_to_the_transfer_figure(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import _gpu_figures

    t = telemetry.read(0, FakeNVML(H200_X8_GEN4))
    assert t is not None
    row = {"suite": "transfer", "case": "h2d pinned", "device": "cuda:0", "size": 2**28, "metrics": {"gbps": 14.9},
           "measurement": {"median_s": 0.018}}  # fmt: skip
    data = {"metadata": {"telemetry": {"cuda:0": t.to_dict()}}, "rows": [row]}
    (tmp_path / "transfer.json").write_text(json.dumps(data))
    pinned = _gpu_figures.transfer_figures(tmp_path)[0].judge(rehearsal=False)
    assert pinned.verdict == "missed"
    assert pinned.note.startswith("h2d pinned, 256 MiB; link PCIe Gen4 x8: 15.8 GB/s each way (x8, not x16")

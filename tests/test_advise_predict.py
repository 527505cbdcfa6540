"""The prediction's arithmetic on hand-computed cases, with a made-up GPU so every number is known."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from tangtoc.advise.count import OpCall, StepCount, count_calls
from tangtoc.advise.predict import (
    PCIE3,
    PCIE4,
    PCIE5,
    Assumptions,
    host_link,
    low_precision,
    op_seconds,
    peak_key,
    predict,
)
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec

FAKE = HardwareSpec(
    name="Fake GPU",
    peak_flops=MappingProxyType({"float32": 10e12, "tf32": 80e12, "bfloat16": 160e12, "float16": 160e12}),
    memory_bandwidth=1e12,
    memory_bytes=16 * 10**9,
    source="made up for tests",
)
NO_BF16 = HardwareSpec("Old GPU", MappingProxyType({"float32": 8e12, "float16": 64e12}), 3e11, 16 * 10**9, "made up")
IDEAL = Assumptions(matmul_efficiency=1.0, memory_efficiency=1.0, launch_overhead_s=0.0, min_kernel_s=0.0)


def _step(calls: list[OpCall], batch_bytes: int = 0, tensors: int = 0, precision: str = "fp32") -> StepCount:
    return StepCount(tuple(calls), 1, batch_bytes, tensors, 0, precision)


def test_a_large_matmul_is_compute_bound_at_the_peak_times_efficiency() -> None:
    m = n = k = 4096
    a, b = torch.empty(m, k, device="meta"), torch.empty(k, n, device="meta")
    calls = count_calls(lambda: a @ b)
    p = predict(_step(calls), FAKE, assumptions=IDEAL)
    assert p.flops == 2 * m * n * k and p.bytes == 3 * 4096 * 4096 * 4
    assert p.device_s == pytest.approx(2 * m * n * k / 10e12)  # 13.7 ms of FP32; its 201 MB take 0.2 ms
    assert p.bound_s["compute"] == pytest.approx(p.device_s) and p.limited_by == "compute"
    half = predict(_step(calls), FAKE, assumptions=Assumptions(matmul_efficiency=0.5, launch_overhead_s=0.0))
    assert half.device_s == pytest.approx(2 * p.device_s)
    tf32 = predict(_step(calls), FAKE, precision="tf32", assumptions=IDEAL)
    assert tf32.device_s == pytest.approx(2 * m * n * k / 80e12)


def test_an_elementwise_op_is_memory_bound_at_bytes_over_bandwidth() -> None:
    n = 1 << 24
    x, y = torch.empty(n, device="meta"), torch.empty(n, device="meta")
    calls = count_calls(lambda: x * y)
    p = predict(_step(calls), FAKE, assumptions=IDEAL)
    assert p.bytes == 3 * n * 4
    assert p.device_s == pytest.approx(3 * n * 4 / 1e12)
    assert p.limited_by == "memory bandwidth"
    eff = predict(_step(calls), FAKE, assumptions=Assumptions(memory_efficiency=0.5, launch_overhead_s=0.0))
    assert eff.device_s == pytest.approx(2 * 3 * n * 4 / 1e12)


def test_many_tiny_kernels_are_bound_by_launch_overhead() -> None:
    call = OpCall("aten.add", "other", "float32", 0.0, 48.0, 1)
    a = Assumptions(launch_overhead_s=10e-6, min_kernel_s=2e-6)
    p = predict(_step([call] * 100), FAKE, assumptions=a)
    assert p.kernels == 100
    assert p.host_s == pytest.approx(100 * 10e-6)
    assert p.device_s == pytest.approx(100 * 2e-6)  # each kernel at its floor
    assert p.resident_s == pytest.approx(1e-3) and p.limited_by == "launch overhead"


def test_host_and_device_overlap_so_the_step_is_the_larger_of_the_two() -> None:
    big = OpCall("aten.mm", "matmul", "float32", 10e12 * 1e-3, 0.0, 1)  # 1 ms of compute on FAKE
    tiny = OpCall("aten.add", "other", "float32", 0.0, 0.0, 1)
    a = Assumptions(matmul_efficiency=1.0, launch_overhead_s=5e-6, min_kernel_s=0.0)
    p = predict(_step([big] + [tiny] * 50), FAKE, assumptions=a)
    assert p.host_s == pytest.approx(51 * 5e-6) and p.device_s == pytest.approx(1e-3)
    assert p.resident_s == pytest.approx(1e-3)  # the host queued the 50 small ops while the matmul ran


def test_the_copied_batch_adds_its_transfer() -> None:
    a = Assumptions(launch_overhead_s=0.0, min_kernel_s=0.0, copy_latency_s=10e-6, link_bandwidth=25e9)
    p = predict(_step([], batch_bytes=50_000_000, tensors=2), FAKE, assumptions=a)
    assert p.transfer_s == pytest.approx(2 * 10e-6 + 50e6 / 25e9)
    assert p.copied_s == pytest.approx(p.resident_s + p.transfer_s)
    assert p.step_s("copied") == p.copied_s and p.step_s("resident") == p.resident_s
    with pytest.raises(ValueError, match="data must be 'copied' or 'resident'"):
        p.step_s("pinned")


@pytest.mark.parametrize(
    ("kind", "dtype", "precision", "spec", "key"),
    [
        ("matmul", "float32", "fp32", FAKE, "float32"),  # PyTorch's default: FP32 matmuls
        ("matmul", "float32", "tf32", FAKE, "tf32"),
        ("conv", "float32", "fp32", FAKE, "tf32"),  # cuDNN's default: TF32 convolutions
        ("rnn", "float32", "fp32", FAKE, "tf32"),  # and TF32 recurrent layers, under the same flag
        ("rnn", "bfloat16", "bf16", FAKE, "bfloat16"),
        ("attention", "float32", "tf32", FAKE, "float32"),
        ("matmul", "bfloat16", "bf16", FAKE, "bfloat16"),
        ("matmul", "bfloat16", "fp16", NO_BF16, "float16"),  # no bf16 tensor cores: fp16 autocast
        ("matmul", "float32", "tf32", NO_BF16, "float32"),  # no TF32 either
        ("matmul", "float64", "fp32", FAKE, "float32"),  # no FP64 figure: the FP32 one
    ],
)
def test_peak_key(kind: str, dtype: str, precision: str, spec: HardwareSpec, key: str) -> None:
    assert peak_key(OpCall("aten.x", kind, dtype, 1.0, 1.0, 1), precision, spec) == key


def test_op_seconds_names_its_bound() -> None:
    assert op_seconds(OpCall("aten.mm", "matmul", "float32", 1e12, 1.0, 1), "fp32", FAKE, IDEAL)[1] == "compute"
    assert op_seconds(OpCall("aten.add", "other", "float32", 0.0, 1e9, 1), "fp32", FAKE, IDEAL)[1] == "memory"
    floor = Assumptions(min_kernel_s=1e-3)
    tiny = OpCall("aten.add", "other", "float32", 0.0, 8.0, 1)
    assert op_seconds(tiny, "fp32", FAKE, floor) == (1e-3, "kernel floor")


def test_links_and_low_precision_follow_the_datasheets() -> None:
    assert host_link(BY_SHORT_NAME["h100"]) is PCIE5 and host_link(BY_SHORT_NAME["h200"]) is PCIE5
    assert host_link(BY_SHORT_NAME["a100"]) is PCIE4 and host_link(BY_SHORT_NAME["l4"]) is PCIE4
    assert host_link(BY_SHORT_NAME["t4"]) is PCIE3
    assert low_precision(BY_SHORT_NAME["h100"]) == "bf16" and low_precision(BY_SHORT_NAME["t4"]) == "fp16"


def test_every_prediction_carries_its_assumptions_and_source() -> None:
    p = predict(_step([OpCall("aten.mm", "matmul", "float32", 1e9, 1e6, 1)]), "h100")
    assert p.target == "h100" and p.hardware == "NVIDIA H100 SXM" and "datasheet" in p.source
    text = " ".join(p.assumptions)
    host = f"{Assumptions().launch_overhead_s * 1e6:g} us of host time per op"
    assert "60% of the published dense peak" in text and host in text and "PCIe Gen5" in text
    d = p.to_dict()
    assert d["kind"] == "predicted" and d["limited_by"] == p.limited_by and d["assumptions"]


def test_a_measured_link_replaces_the_assumed_one() -> None:
    a = Assumptions(link_bandwidth=12.5e9, link_name="measured on cuda:0, pinned")
    p = predict(_step([], batch_bytes=125_000_000, tensors=1), "a100", assumptions=a)
    assert p.link.name == "measured on cuda:0, pinned" and p.transfer_s == pytest.approx(10e-6 + 0.01)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"spec": "h1000"}, ValueError, "unknown GPU 'h1000'; known: a100"),
        ({"spec": "h100", "precision": "bf16"}, ValueError, "a step counted in fp32 predicts fp32 or tf32"),
    ],
)
def test_bad_requests_say_what_is_known(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        predict(_step([]), **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("matmul_efficiency", 0.0, r"matmul_efficiency must be in \(0, 1\]"),
        ("memory_efficiency", 1.5, r"memory_efficiency must be in \(0, 1\]"),
        ("launch_overhead_s", -1.0, "launch_overhead_s must be >= 0"),
        ("link_bandwidth", 0.0, "link_bandwidth must be positive"),
    ],
)
def test_assumptions_are_validated(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Assumptions(**{field: value})


# The H200's launch-bound rows of the first GPU check, data resident (benchmarks/RESULTS.md, the `advise` rows;
# each row's kernels counted and measured median step as that run's advise_check.json recorded them).
H200_CHECK = Path(__file__).parents[1] / "benchmarks" / "gpu" / "2026-11-30-h200" / "advise_check.json"
H200_LAUNCH_BOUND = [
    (f"{row['model']} {row['precision']}", row["kernels"], row["measured_s"])
    for row in json.loads(H200_CHECK.read_text())["rows"]
    if row["limited_by"] == "launch overhead" and row["data"] == "resident"
]


def test_the_h200_rows_are_the_six_launch_bound_resident_steps() -> None:
    assert len(H200_LAUNCH_BOUND) == 6


@pytest.mark.parametrize(("row", "kernels", "measured_s"), H200_LAUNCH_BOUND)
def test_the_default_host_time_per_kernel_predicts_the_h200_launch_bound_rows_within_1_5x(
    row: str, kernels: int, measured_s: float
) -> None:
    predicted_s = kernels * Assumptions().launch_overhead_s  # launch-bound: the host's time is the step's
    assert 1 / 1.5 <= predicted_s / measured_s <= 1.5, row

"""fit's MFU for any model: FLOPs counted per batch shape, the peak and its source in every record, NVML's view."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from tangtoc.device import describe
from tangtoc.train import fit
from tangtoc.train.logpoint import GpuUsage
from test_telemetry import FakeNVML

PEAK = 1e12  # a fake peak: the CPU has none published
USER = "peak_flops= given by the user"


@pytest.fixture(autouse=True)
def _no_peak_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANGTOC_PEAK_TFLOPS", raising=False)


def _counted(model: nn.Module, train: Callable[[nn.Module], torch.Tensor]) -> float:
    """The FLOPs of one forward and backward, counted here by PyTorch's FLOP counter, on a copy of the model."""
    with FlopCounterMode(display=False) as counter:
        train(copy.deepcopy(model)).backward()
    return float(counter.get_total_flops())


def _assert_mfu(record: dict[str, Any], flops_per_step: float) -> None:
    """MFU from the record's own time and peak, with FLOPs counted by the test."""
    assert record["peak_flops"] == PEAK and record["peak_source"] == USER
    assert record["mfu"] == pytest.approx(flops_per_step / record["step_time_s"] / record["peak_flops"], rel=1e-9)


def _mlp_batches(shapes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(b, 16, generator=gen), torch.randint(0, 4, (b,), generator=gen)) for b in shapes]


@pytest.mark.usefixtures("one_thread")
def test_a_plain_mlp_gets_mfu_from_its_counted_flops() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))  # declares no FLOPs
    data = _mlp_batches([8] * 6)
    flops = _counted(model, lambda m: F.cross_entropy(m(data[0][0]), data[0][1]))
    result = fit(model, data, loss_fn=F.cross_entropy, steps=6, log_every=2, device="cpu", peak_flops=PEAK,
                 progress=False)  # fmt: skip
    records = [r for r in result.history if r["kind"] == "train"]
    assert len(records) == 3
    for record in records:  # the first interval too: step 1 counted FLOPs and is left out, step 2 is timed
        _assert_mfu(record, flops)
    assert (result.peak_flops, result.peak_source) == (PEAK, USER)
    assert result.mfu is not None and result.mfu > 0


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_transformers_model_gets_mfu_from_its_counted_flops() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 64, (2, 16), generator=gen) for _ in range(4)]
    data = [{"input_ids": x, "labels": x} for x in ids]
    flops = _counted(model, lambda m: m(**data[0]).loss)
    result = fit(model, data, steps=4, log_every=2, device="cpu", peak_flops=PEAK, progress=False)
    records = [r for r in result.history if r["kind"] == "train"]
    assert len(records) == 2 and all("tokens_per_s" in r for r in records)
    for record in records:
        _assert_mfu(record, flops)


@pytest.mark.usefixtures("one_thread")
def test_each_new_shape_is_counted_once_and_its_step_left_out_of_the_rates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sizes = [4, 6, 4, 6, 4]
    data = _mlp_batches(sizes)
    flops = {b: _counted(model, lambda m, b=b: F.cross_entropy(m(torch.randn(b, 16)), torch.zeros(b).long()))
             for b in set(sizes)}  # fmt: skip
    assert flops[4] != flops[6]
    result = fit(model, data, loss_fn=F.cross_entropy, steps=5, log_every=1, device="cpu", peak_flops=PEAK,
                 progress=False)  # fmt: skip
    records = [r for r in result.history if r["kind"] == "train"]
    # Steps 1 and 2 meet a shape first: run under the counter, they are left out (no rates, and MFU says why).
    for record in records[:2]:
        assert "mfu" not in record and "step_time_s" not in record
        assert (record["peak_flops"], record["peak_source"]) == (PEAK, USER)
    for record, size in zip(records[2:], sizes[2:], strict=True):  # later steps: the cached count of their shape
        _assert_mfu(record, flops[size])


def test_without_a_peak_mfu_is_not_reported_and_the_record_says_why() -> None:
    result = fit(nn.Linear(16, 4), _mlp_batches([8] * 2), loss_fn=F.cross_entropy, steps=2, log_every=1,
                 device="cpu", progress=False)  # fmt: skip
    reason = "no published fp32 peak for"
    assert result.mfu is None and result.peak_flops is None and result.peak_source.startswith(reason)
    for record in result.history:
        assert "mfu" not in record and record["peak_flops"] is None and record["peak_source"].startswith(reason)
        assert "gpu_util_pct" not in record  # no NVML on the CPU, and nothing said about it


def test_the_environment_gives_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGTOC_PEAK_TFLOPS", "0.5")
    result = fit(nn.Linear(16, 4), _mlp_batches([8] * 3), loss_fn=F.cross_entropy, steps=3, log_every=3,
                 device="cpu", progress=False)  # fmt: skip
    assert (result.peak_flops, result.peak_source) == (0.5e12, "$TANGTOC_PEAK_TFLOPS=0.5")
    assert result.history[-1]["peak_source"] == "$TANGTOC_PEAK_TFLOPS=0.5" and "mfu" in result.history[-1]


@pytest.mark.parametrize("bad", [0, -1e12, float("nan"), float("inf"), True, "989e12"])
def test_a_peak_that_is_no_positive_number_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"fit: peak_flops must be the device's peak in FLOP/s, a number > 0"):
        fit(nn.Linear(16, 4), _mlp_batches([8]), loss_fn=F.cross_entropy, steps=1, device="cpu", peak_flops=bad)


def _nvml(**values: Any) -> FakeNVML:
    return FakeNVML(values)


def test_gpu_usage_reads_utilisation_and_memory_from_nvml_once_initialised() -> None:
    nvml = _nvml(nvmlDeviceGetUtilizationRates=SimpleNamespace(gpu=87),
                 nvmlDeviceGetMemoryInfo=SimpleNamespace(used=12 * 2**30))  # fmt: skip
    usage = GpuUsage(torch.device("cuda", 0), nvml)
    assert usage.read() == {"gpu_util_pct": 87, "gpu_memory_used_bytes": 12 * 2**30}
    assert usage.read() == {"gpu_util_pct": 87, "gpu_memory_used_bytes": 12 * 2**30}
    assert nvml.initialized == 1  # once for the run, not at every log point
    usage.close()
    assert nvml.initialized == 0


def test_gpu_usage_leaves_out_what_the_gpu_does_not_report() -> None:
    usage = GpuUsage(torch.device("cuda", 0), _nvml(nvmlDeviceGetMemoryInfo=SimpleNamespace(used=5)))
    assert usage.read() == {"gpu_memory_used_bytes": 5}


def test_gpu_usage_is_quiet_without_a_driver_or_off_cuda() -> None:
    nvml = _nvml(no_driver=True)
    usage = GpuUsage(torch.device("cuda", 0), nvml)
    assert usage.read() == {} and usage.read() == {}
    usage.close()
    assert nvml.initialized == 0
    never = _nvml(nvmlDeviceGetUtilizationRates=SimpleNamespace(gpu=1))
    assert GpuUsage(torch.device("cpu"), never).read() == {} and never.initialized == 0


@pytest.mark.cuda
def test_on_cuda_any_model_gets_mfu_against_the_table_and_nvml_usage() -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))  # declares no FLOPs
    data = [(torch.randn(64, 256), torch.randint(0, 10, (64,))) for _ in range(6)]
    result = fit(model, data, loss_fn=F.cross_entropy, steps=6, log_every=3, device="cuda", progress=False)
    last = result.history[-1]
    if describe("cuda").peak_flops:  # a part in tangtoc's table: its datasheet is the source
        assert last["mfu"] > 0 and last["peak_flops"] > 0 and "peak of NVIDIA" in last["peak_source"]
    if importlib.util.find_spec("pynvml") is not None:
        assert 0 <= last["gpu_util_pct"] <= 100 and last["gpu_memory_used_bytes"] > 0


@pytest.mark.usefixtures("one_thread")
def test_batch_shapes_past_the_cap_are_estimated_and_their_steps_kept_in_the_rates() -> None:
    # 20 batch sizes, each once: the first 16 counted (and left out), the last 4 estimated (exactly, for an MLP),
    # timed with the others; the record says how many shapes were estimated.
    from tangtoc.flops import MAX_COUNTED_SHAPES

    sizes = list(range(2, 2 + MAX_COUNTED_SHAPES + 4))
    batches = _mlp_batches(sizes)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    result = fit(model, batches, loss_fn=F.cross_entropy, steps=len(sizes), log_every=len(sizes), peak_flops=PEAK,
                 device="cpu", progress=False)  # fmt: skip
    (record,) = [r for r in result.history if "mfu" in r]
    assert record["flops_estimated_shapes"] == 4
    flops = sum(_counted(model, lambda m, x=x, y=y: F.cross_entropy(m(x), y)) for x, y in batches[-4:])
    _assert_mfu(record, flops / 4)  # only the 4 estimated steps are in the rates: their mean FLOPs per step

"""The callbacks' meter: the peak and its source, rates on a fake clock, FLOPs declared or counted once per shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tangtoc import hardware
from tangtoc.device import describe
from tangtoc.integrations.throughput import Meter, Peak, resolve_peak

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_peak_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TANGTOC_PEAK_TFLOPS", raising=False)
    yield


def test_a_given_peak_says_so() -> None:
    peak = resolve_peak(CPU, "fp32", 2e12)
    assert peak == Peak(
        2e12, "peak_flops= given by the user", "MFU against 2.0 TFLOP/s (peak_flops= given by the user)."
    )


def test_the_environment_gives_the_peak_in_tflops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANGTOC_PEAK_TFLOPS", "989.5")
    peak = resolve_peak(CPU, "bf16")
    assert (peak.flops, peak.source) == (989.5e12, "$TANGTOC_PEAK_TFLOPS=989.5")
    assert resolve_peak(CPU, "bf16", 1e12).flops == 1e12  # the argument wins
    monkeypatch.setenv("TANGTOC_PEAK_TFLOPS", "fast")
    with pytest.raises(ValueError, match=r"TANGTOC_PEAK_TFLOPS must be a number of TFLOP/s, e\.g\. 989\.5, got 'fast'"):
        resolve_peak(CPU, "bf16")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_peak_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="the peak must be a positive number of FLOP/s"):
        resolve_peak(CPU, "fp32", bad)


def test_a_cpu_has_no_published_peak() -> None:
    peak = resolve_peak(CPU, "fp32")
    reason = f"no published fp32 peak for {describe(CPU).name} (cpu) in tangtoc's hardware table"
    assert peak.flops is None and peak.source == reason  # said beside the missing MFU
    assert peak.line == f"{reason}: MFU is not reported (give peak_flops= or $TANGTOC_PEAK_TFLOPS to report it)."
    assert resolve_peak(CPU, None).line.startswith("the trainer's precision has no peak in tangtoc's table")
    with pytest.raises(ValueError, match="precision must be one of bf16, fp16, tf32, fp32, fp64, got 'fp8'"):
        resolve_peak(CPU, "fp8")


@pytest.mark.parametrize(
    ("precision", "key", "tflops"), [("bf16", "bfloat16", 989.5), ("tf32", "tf32", 494.5), ("fp64", "float64", 67)]
)
def test_the_table_peak_names_its_dtype_and_source(precision: str, key: str, tflops: float) -> None:
    h100 = hardware.H100_SXM
    info = dataclasses.replace(describe(CPU), name=h100.name, peak_flops=dict(h100.peak_flops), spec_source=h100.source)
    peak = resolve_peak(torch.device("cuda", 0), precision, info=info)
    assert peak.flops == tflops * 1e12
    assert peak.source == f"{precision} peak of NVIDIA H100 SXM, NVIDIA H100 Tensor Core GPU datasheet"
    assert peak.line == f"MFU against {tflops:.1f} TFLOP/s, the {key} peak of {h100.name} (source: {h100.source})."


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


class Declared(nn.Module):
    """A language model that declares its training FLOPs per token."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 4)

    def flops_per_token(self, seq_len: int) -> float:
        return 100.0


def _step(meter: Meter, model: nn.Module, batch: object, instrumented: bool = False) -> None:
    meter.step_start()
    meter.batch_start(model, batch)
    meter.step_end(instrumented)


def test_rates_over_clean_steps_on_a_fake_clock() -> None:
    meter = Meter(CPU, Peak(1e3, "test", ""), Clock(0.0, 1.0, 3.0, 3.5))
    ids = torch.zeros(2, 8, dtype=torch.long)
    _step(meter, Declared(), ids)  # from 0 to 1 s
    _step(meter, Declared(), ids)  # to 3 s
    assert meter.read() == {  # at 3.5 s: what was launched finished by the sync, and belongs to this interval
        "tangtoc/step_time_s": 1.75,
        "tangtoc/samples_per_s": 4 / 3.5,
        "tangtoc/tokens_per_s": 32 / 3.5,
        "tangtoc/mfu": 32 * 100.0 / 3.5 / 1e3,
        "tangtoc/peak_flops": 1e3,
    }
    assert meter.flops_by_shape == {}  # declared: nothing counted


def test_instrumented_steps_and_idle_time_are_left_out() -> None:
    # step 1 instrumented (ends at 10 s); step 2 from 10 to 11; idle (evaluation); step 3 from 50 to 52; read at 52
    meter = Meter(CPU, Peak(None, "none", ""), Clock(0.0, 10.0, 11.0, 50.0, 52.0, 52.0))
    ids = torch.zeros(2, 8, dtype=torch.long)
    _step(meter, Declared(), ids, instrumented=True)
    _step(meter, Declared(), ids)
    meter.idle()
    _step(meter, Declared(), ids)
    assert meter.read() == {"tangtoc/step_time_s": 1.5, "tangtoc/samples_per_s": 4 / 3, "tangtoc/tokens_per_s": 32 / 3}


def test_no_clean_step_no_rates() -> None:
    meter = Meter(CPU, Peak(1e3, "test", ""), Clock(0.0, 1.0, 2.0))
    _step(meter, Declared(), torch.zeros(2, 8, dtype=torch.long), instrumented=True)
    assert meter.read() == {}


def _train(model: nn.Module, x: torch.Tensor) -> None:
    model(x).sum().backward()


def test_undeclared_flops_are_counted_once_per_shape() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    with FlopCounterMode(display=False) as reference:
        _train(model, torch.randn(3, 8))
    meter = Meter(CPU, Peak(1e3, "test", ""))
    shapes = [(3, 8), (3, 8), (5, 8)]
    counted = []
    for shape in shapes:
        x = torch.randn(*shape)
        meter.step_start()
        meter.batch_start(model, (x,))
        counted.append(meter.counting)
        _train(model, x)
        meter.step_end(meter.counting)
    assert counted == [True, False, True]
    assert meter.flops_by_shape == {
        (("[0]", (3, 8)),): reference.get_total_flops(),
        (("[0]", (5, 8)),): reference.get_total_flops() * 5 / 3,
    }
    assert not torch._C._len_torch_dispatch_stack()  # the counter is gone


def test_without_a_peak_nothing_is_counted() -> None:
    meter = Meter(CPU, Peak(None, "none", ""))
    meter.batch_start(nn.Linear(8, 4), (torch.randn(3, 8),))
    assert not meter.counting and meter.flops_by_shape == {}


def test_a_step_with_a_counted_micro_batch_is_left_out() -> None:
    # gradient accumulation: the counter ran in the first micro-batch only, and stopped before the step ended
    meter = Meter(CPU, Peak(1e3, "test", ""), Clock(0.0, 1.0, 1.0))
    model = nn.Linear(8, 4)
    meter.step_start()
    for _ in range(2):
        x = torch.randn(3, 8)
        meter.batch_start(model, (x,))
        _train(model, x)
        meter.batch_end()
    assert not meter.counting
    meter.step_end(False)
    assert meter.read() == {}

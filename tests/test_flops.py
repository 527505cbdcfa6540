"""tangtoc.flops: FLOPs counted once per batch shape, fit's precision mapped to its peak, and how MFU is said."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tangtoc import hardware
from tangtoc.device import DeviceInfo, describe
from tangtoc.flops import ShapeFlops, mfu_text, resolve_peak, shape_of
from tangtoc.move import named_tensors
from tangtoc.step import Precision

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_peak_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANGTOC_PEAK_TFLOPS", raising=False)


def _h100() -> DeviceInfo:
    h100 = hardware.H100_SXM
    return dataclasses.replace(describe(CPU), name=h100.name, peak_flops=dict(h100.peak_flops), spec_source=h100.source)


@pytest.mark.parametrize(
    ("precision", "tflops", "said"),
    [
        (Precision("bf16", torch.bfloat16, "cuda"), 989.5, "bf16"),
        (Precision("fp32", None, "cuda"), 494.5, "tf32"),  # fit's float32 matmuls run on TF32 on CUDA
        (Precision.exactly("fp32", "cuda"), 67, "fp32"),  # TF32 off: the FP32 peak
    ],
)
def test_fits_precision_takes_the_peak_its_matmuls_run_at(precision: Precision, tflops: float, said: str) -> None:
    peak = resolve_peak(torch.device("cuda", 0), precision, info=_h100())
    assert peak.flops == tflops * 1e12
    assert peak.source == f"{said} peak of NVIDIA H100 SXM, NVIDIA H100 Tensor Core GPU datasheet"


def test_a_cpu_precision_has_no_peak_and_says_so() -> None:
    peak = resolve_peak(CPU, Precision("fp32", None, "cpu"))
    assert peak.flops is None and peak.source.startswith(f"no published fp32 peak for {describe(CPU).name} (cpu)")


def test_mfu_is_said_with_its_peak_and_source_or_why_not() -> None:
    source = "bf16 peak of NVIDIA H100 SXM, NVIDIA H100 Tensor Core GPU datasheet"
    assert mfu_text(0.412, 989.5e12, source) == f"MFU 41.2% of 989.5 TFLOP/s ({source})"
    assert mfu_text(None, None, "no published fp32 peak for X") == "MFU n/a: no published fp32 peak for X"
    assert mfu_text(None, 989.5e12, source).startswith("MFU n/a this interval: no step was timed with its FLOPs")


def _train(model: nn.Module, x: torch.Tensor) -> None:
    model(x).sum().backward()


def test_each_shape_is_counted_once_then_looked_up() -> None:
    model = nn.Linear(8, 4)
    with FlopCounterMode(display=False) as reference:
        _train(model, torch.randn(3, 8))
    shapes = ShapeFlops()
    assert shapes.start({"x": torch.randn(3, 8)}) is None and shapes.counting  # new: the counter runs
    assert shapes.start({"x": torch.randn(5, 8)}) is None  # no second counter while one runs
    _train(model, torch.randn(3, 8))
    assert shapes.stop() == reference.get_total_flops() and not shapes.counting
    assert shapes.start({"x": torch.randn(3, 8)}) == reference.get_total_flops() and not shapes.counting
    assert shapes.stop() is None
    assert shapes.by_shape == {(("['x']", (3, 8)),): reference.get_total_flops()}
    assert not torch._C._len_torch_dispatch_stack()  # the counter is gone


def test_a_cut_short_count_is_not_kept() -> None:
    shapes = ShapeFlops()
    shapes.start(torch.randn(3, 8))
    nn.Linear(8, 4)(torch.randn(3, 8))  # forward only: an error before the backward
    shapes.close()
    assert shapes.by_shape == {} and not shapes.counting and not torch._C._len_torch_dispatch_stack()


def test_the_fast_path_keys_a_tuple_as_the_walk_does() -> None:
    batch = (torch.randn(3, 8), torch.zeros(3, dtype=torch.long))
    walked = tuple((path, tuple(t.shape)) for path, t in named_tensors(batch))
    assert shape_of(batch) == shape_of(list(batch)) == walked == (("[0]", (3, 8)), ("[1]", (3,)))


def test_past_the_cap_a_new_shape_is_estimated_from_the_nearest_counted_one_not_counted() -> None:
    # Dynamic padding: a new length in most batches. Two counted shapes, then the rest scaled by their elements,
    # which for a linear layer is exact.
    model = nn.Linear(8, 4)

    def counted(rows: int) -> float:
        with FlopCounterMode(display=False) as reference:
            _train(model, torch.randn(rows, 8))
        return float(reference.get_total_flops())

    shapes = ShapeFlops(max_counted=2)
    for rows in (2, 6):
        assert shapes.start(torch.randn(rows, 8)) is None
        _train(model, torch.randn(rows, 8))
        shapes.stop()
    for rows in (3, 9, 5):
        assert shapes.start(torch.randn(rows, 8)) == counted(rows) and not shapes.counting  # estimated, exact here
    assert shapes.estimated_shapes == 3
    assert shapes.start(torch.randn(3, 8)) == counted(3) and shapes.estimated_shapes == 3  # cached like a count
    # Another kind of batch (another number of dimensions) is counted, not scaled from this one.
    assert shapes.start(torch.randn(2, 3, 8)) is None and shapes.counting
    shapes.close()


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_counted must be at least 1, got 0"):
        ShapeFlops(max_counted=0)

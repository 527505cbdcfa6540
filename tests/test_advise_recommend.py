"""The recommendation: which side of a constructed crossover it lands on, its numbers, and advise() end to end.

Timings are injected (fake CPU steps, a made-up GPU), so the decisions are deterministic; the one real run only
checks the shape of the answer, never a time.
"""

from __future__ import annotations

import json
import re
from types import MappingProxyType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from advise_factories import fnet_style
from tangtoc.advise import measure as advise_measure
from tangtoc.advise.count import batch_size_of
from tangtoc.advise.decide import Crossover, GpuOption, LinearFit, decide, find_crossover
from tangtoc.advise.recommend import Advice, advise, job_steps_of, resolve_targets
from tangtoc.bench.measure import Measurement
from tangtoc.cli.render import to_json
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec
from tangtoc.models import MLP, MLPConfig
from tangtoc.units import fmt_duration, fmt_ratio, fmt_seconds


def _gpu(
    copied: float, resident: float | None = None, *, limited_by: str = "launch overhead", **more: float
) -> GpuOption:
    steps = {("fp32", "copied"): copied, ("fp32", "resident"): copied if resident is None else resident}
    steps.update({(k, "resident"): v for k, v in more.items()})
    return GpuOption("fake, predicted", "predicted", steps, limited_by, kernels=100, launch_overhead_s=10e-6)


# -- the pure decision --------------------------------------------------------------------------------------------


def test_crossover_is_the_smallest_batch_from_which_the_gpu_always_wins() -> None:
    cpu = LinearFit(0.0, 1e-3, ())  # 1 ms per sample
    gpu = {b: 0.1 + 1e-5 * b for b in (64, 128, 256, 512, 1024)}  # 100 ms fixed (launch-bound), then cheap
    x = find_crossover(cpu, gpu)
    assert x.batch_size == 128  # 128 ms vs 101 ms; at 64: 64 ms vs 100.6 ms
    assert [b for b, _, _ in x.points] == [64, 128, 256, 512, 1024] and x.largest_checked == 1024
    assert find_crossover(cpu, {64: 1.0, 128: 1.0}).batch_size is None
    assert find_crossover(cpu, {1: 0.0001, 2: 0.0001}).batch_size == 1


@pytest.mark.parametrize(
    ("cpu_s", "verdict", "phrases"),
    [
        # Left of the crossover: the CPU's 64 ms beats the GPU's 100 ms.
        (
            0.064,
            "cpu",
            [
                "stay on the CPU: launch overhead dominates at this size (100 kernels x 10 us per step)",
                "the GPU wins from batch size >= 128 (predicted)",
            ],
        ),
        # Far right of it: 1.5 s against 0.1 s.
        (
            1.5,
            "gpu",
            [
                "use the GPU (fake, predicted): ~15x faster per step (1.5 s on the CPU, 100 ms on the GPU",
                "the job (100,000 steps) drops from 41 h 40 min to 2 h 47 min",
            ],
        ),
    ],
)
def test_the_recommendation_flips_at_the_crossover(cpu_s: float, verdict: str, phrases: list[str]) -> None:
    crossover = Crossover(128, ((64, 0.064, 0.1006), (128, 0.128, 0.1013)))
    rec = decide(cpu_s, _gpu(0.1), batch_size=64, crossover=crossover, job_steps=100_000)
    assert rec.verdict == verdict
    for phrase in phrases:
        assert phrase in rec.sentence, rec.sentence


def test_a_gpu_that_is_only_slightly_faster_is_not_worth_a_move() -> None:
    rec = decide(0.12, _gpu(0.1), batch_size=64, job_steps=1_000_000)
    assert rec.verdict == "cpu" and "only 1.2x faster per step, not worth a move" in rec.sentence


def test_gpu_with_changes_names_what_makes_it_worth_it() -> None:
    gpu = _gpu(0.1, 0.02, limited_by="memory bandwidth")  # copying the batch is 80% of the step
    rec = decide(0.12, gpu, batch_size=64, job_steps=1_000_000)
    assert rec.verdict == "gpu-with-changes"
    assert "as written (fp32, batch copied every step) it is 1.2x the CPU's speed" in rec.sentence
    assert "with fp32 and data resident on the GPU it is ~6x faster" in rec.sentence
    assert rec.changes[0].startswith("keep the data on the GPU") and "80% of the step" in rec.changes[0]


def test_changes_come_most_time_saved_first() -> None:
    gpu = _gpu(0.1, 0.095, limited_by="compute", tf32=0.05, bf16=0.03)
    rec = decide(10.0, gpu, batch_size=64)
    assert rec.verdict == "gpu"
    # bf16 saves 65 ms, TF32 45 ms; resident data 5 ms, too little to suggest
    assert [c.split(" ")[0] for c in rec.changes] == ["train", "allow"]
    assert "With the changes below, ~330x (30 ms per step)" in rec.sentence


def test_a_short_job_stays_on_the_cpu_rather_than_renting_a_gpu() -> None:
    rec = decide(0.01, _gpu(0.001), batch_size=64, job_steps=1000)  # 10 s on the CPU
    assert rec.verdict == "cpu"
    assert "the whole job (1,000 steps) takes 10 s here, less than renting and setting up a GPU machine" in rec.sentence
    here = GpuOption("cuda:0, measured", "measured", {("fp32", "copied"): 0.001, ("fp32", "resident"): 0.001})
    assert decide(0.01, here, batch_size=64, job_steps=1000).verdict == "gpu"  # already here: no rent to pay


def test_no_gpu_and_no_prediction_says_so() -> None:
    rec = decide(0.5, None, batch_size=8, job_steps=10, no_gpu_reason="the step could not be counted")
    assert rec.verdict == "unknown" and rec.sentence.startswith("cannot tell: the step could not be counted")


def test_linear_fit() -> None:
    fit = LinearFit.through([(64, 0.010), (16, 0.004)])
    assert fit.fixed_s == pytest.approx(0.002) and fit.per_sample_s == pytest.approx(1.25e-4)
    assert fit.at(128) == pytest.approx(0.018)
    noisy = LinearFit.through([(64, 0.004), (16, 0.005)])  # the bigger batch measured faster: proportional
    assert noisy.fixed_s == 0.0 and noisy.at(64) == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250 ms"),
        (4.2, "4.2 s"),
        (42, "42 s"),
        (300, "5 min"),
        (11400, "3 h 10 min"),
        (7200, "2 h"),
        (86400 * 3, "3.0 days"),
    ],
)
def test_durations_read_like_a_plan(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.99966, "1 s"), (0.0009997, "1 ms"), (0.1234, "123 ms"), (4.2e-5, "42 us"), (6.0, "6 s")]
)
def test_step_times_keep_their_unit_readable(seconds: float, text: str) -> None:
    assert fmt_seconds(seconds) == text


@pytest.mark.parametrize(("ratio", "text"), [(1.234, "1.2x"), (15.4, "15x"), (1301.2, "1,300x"), (823, "820x")])
def test_speedups_have_two_significant_figures(ratio: float, text: str) -> None:
    assert fmt_ratio(ratio) == text


def test_job_steps() -> None:
    assert job_steps_of(64, 1000, None, None) == (1000, "1,000 steps")
    assert job_steps_of(64, None, 3, 50_000) == (2346, "3 epochs x 50,000 samples / batch 64 = 2,346 steps")
    assert job_steps_of(64, None, None, None) == (None, "")
    with pytest.raises(ValueError, match="either steps, or epochs and dataset_size"):
        job_steps_of(64, 10, 1, 100)
    with pytest.raises(ValueError, match="epochs and dataset_size go together"):
        job_steps_of(64, None, 2, None)


def test_targets() -> None:
    assert resolve_targets(["auto"], []) == [("h100", BY_SHORT_NAME["h100"])]
    h200 = BY_SHORT_NAME["h200"]
    assert resolve_targets(["auto", "t4", "T4"], [h200]) == [(h200.name, h200), ("t4", BY_SHORT_NAME["t4"])]
    with pytest.raises(ValueError, match="unknown target GPU 'h1000'; known: auto, a100"):
        resolve_targets(["h1000"], [])
    assert resolve_targets([FAKE, "t4"], []) == [("Fake GPU", FAKE), ("t4", BY_SHORT_NAME["t4"])]  # a part of one's own


# -- advise() with injected CPU timings and a made-up GPU -----------------------------------------------------------

FAKE = HardwareSpec(
    "Fake GPU", MappingProxyType({"float32": 10e12, "tf32": 80e12, "bfloat16": 160e12}), 1e12, 10**10, "made up"
)
PER_SAMPLE_S = 50e-6  # the fake CPU: 50 us per sample, no fixed cost


class FakeCpu:
    """A step measurer for advise(): CPU steps take PER_SAMPLE_S x batch; it records the batch sizes asked for."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, model: Any, batch: Any, device: Any, **kw: Any) -> Measurement:
        b = batch_size_of(batch)
        self.seen.append(b)
        return Measurement((PER_SAMPLE_S * b,) * 3, 1, str(device), "fake")


def _advise_mlp(batch: int, measurer: FakeCpu) -> Advice:
    """advise() on the fake CPU, predicting the made-up GPU (no GPU is measured)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 32), torch.randint(0, 10, (batch,))
    return advise(
        MLP(MLPConfig()),
        (x, y),
        loss_fn=F.cross_entropy,
        steps=10_000_000,
        targets=[FAKE],
        devices=[],
        measurer=measurer,
    )


def test_advise_stays_on_the_cpu_left_of_the_crossover_and_names_it() -> None:
    fake_cpu = FakeCpu()
    small = _advise_mlp(2, fake_cpu)
    gpu_s = small.predicted[0].copied_s  # launch-bound: its kernels x the host time per kernel, whatever the batch
    expected = next(b for b in (4, 8, 16, 32, 64, 128) if PER_SAMPLE_S * b > gpu_s)
    assert small.verdict == "cpu", small.recommendation
    assert "launch overhead dominates" in small.recommendation
    assert f"the GPU wins from batch size >= {expected} (predicted)" in small.recommendation
    assert small.crossover is not None and small.crossover.batch_size == expected
    assert fake_cpu.seen[:2] == [2, 4]  # the CPU measured at the batch and at a second size for the fit


def test_advise_moves_to_the_gpu_right_of_the_crossover() -> None:
    big = _advise_mlp(256, FakeCpu())
    assert big.verdict == "gpu", big.recommendation
    assert re.search(r"use the GPU \(Fake GPU, predicted\): ~\d+x faster per step", big.recommendation)
    assert "the GPU figures are predictions for Fake GPU, not measurements" in " ".join(big.notes)
    assert [m.batch_size for m in big.measured] == [256, 64]
    json.loads(to_json(big.to_dict()))  # everything serialises


def test_advise_measures_for_real_on_this_machine() -> None:
    """One real run of a tiny workload: the shape of the answer only, no time asserted."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    batch = (torch.randn(16, 8), torch.randint(0, 3, (16,)))
    advice = advise(model, batch, loss_fn=F.cross_entropy, epochs=2, dataset_size=1000, min_time=0.01, max_time=0.05)
    assert advice.job_steps == 126 and advice.batch_size == 16
    assert [(m.device, m.batch_size) for m in advice.measured][:2] == [("cpu", 16), ("cpu", 4)]
    assert all(m.step_s > 0 and m.measurement.runs >= 1 for m in advice.measured)
    assert {p.precision for p in advice.predicted if p.target == "h100"} == {"fp32", "tf32", "bf16"}
    assert advice.verdict in ("cpu", "gpu", "gpu-with-changes") and advice.recommendation
    assert advice.cpu_step_s == advice.measured[0].step_s
    data = json.loads(to_json(advice.to_dict()))
    assert data["count"]["kernels"] > 0 and data["predicted"][0]["kind"] == "predicted"
    assert data["measured"][0]["kind"] == "measured" and data["machine"]["torch"] == torch.__version__


def test_an_accelerator_here_is_measured_both_ways_and_recommended_as_measured() -> None:
    """The path a GPU takes, on the `meta` device (this repository's second device on CPU-only machines)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    batch = (torch.randn(16, 8), torch.randint(0, 3, (16,)))
    advice = advise(model, batch, loss_fn=F.cross_entropy, devices=["meta"], min_time=0.01, max_time=0.05)
    assert {(m.precision, m.data) for m in advice.measured if m.device == "meta"} == {
        ("fp32", "copied"),
        ("fp32", "resident"),
    }
    assert "meta (meta (shapes only, no data)), measured" in advice.recommendation
    assert advice.crossover is None  # no hardware-table entry for it: nothing to predict other batch sizes with
    assert advice.checks == ()


@pytest.mark.cuda
def test_advise_measures_the_gpu_here_and_checks_its_prediction() -> None:
    from tangtoc.hardware import lookup

    torch.manual_seed(0)
    batch = (torch.randn(64, 32), torch.randint(0, 10, (64,)))
    advice = advise(MLP(MLPConfig()), batch, loss_fn=F.cross_entropy, steps=100, min_time=0.05, max_time=0.5)
    gpu_rows = {(m.precision, m.data) for m in advice.measured if m.device.startswith("cuda")}
    assert {("fp32", "copied"), ("fp32", "resident"), ("tf32", "resident")} <= gpu_rows
    if lookup(torch.cuda.get_device_name()) is not None:
        assert advice.checks and all(c.ratio > 0 for c in advice.checks)
        assert any(p.link.name.startswith("measured on cuda") for p in advice.predicted)
    if advice.verdict.startswith("gpu"):
        assert "measured" in advice.recommendation  # the GPU here, not a prediction, is what is recommended


def test_the_link_is_measured_from_memory_that_holds_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # An untouched torch.empty buffer reads as the kernel's shared zero page: the copy would look too fast.
    buf = advise_measure.host_buffer(3 * 4096 + 7)
    assert buf.dtype == torch.uint8 and int((buf == 0).sum()) == 0
    made: list[int] = []

    def spy(nbytes: int, *, pinned: bool = False) -> torch.Tensor:
        made.append(nbytes)
        return torch.full((nbytes,), 1, dtype=torch.uint8)

    monkeypatch.setattr(advise_measure, "host_buffer", spy)
    assert advise_measure.measure_link("cpu", nbytes=1 << 16) > 0
    assert made == [1 << 16]


def test_ops_the_count_cannot_see_are_named_with_their_share_of_the_cpu_step() -> None:
    """FNet's FFT has no FLOP formula: the advice names it, times it in a CPU step, and warns in its notes."""
    model, batch, loss_fn = fnet_style(batch_size=4)
    advice = advise(model, batch, loss_fn=loss_fn, targets=[FAKE], devices=[], measurer=FakeCpu())  # type: ignore[arg-type]
    [fft] = advice.uncounted
    assert fft.op == "aten._fft_c2c" and fft.calls == 2 and fft.cpu_s > 0 and 0 < fft.share <= 1
    assert any(n.startswith("no FLOP formula for aten._fft_c2c (") for n in advice.notes), advice.notes
    data = json.loads(to_json(advice.to_dict()))
    assert data["uncounted"][0]["op"] == "aten._fft_c2c" and data["uncounted"][0]["share_of_cpu_step"] == fft.share

"""measure(): statistics on a fake clock (deterministic) and settings restored. Its agreement with torch's Timer
is a timing question, measured in benchmarks/timer_agreement.py."""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from tangtoc.bench.measure import MAX_RUNS, MIN_BLOCK_SECONDS, Measurement, measure


class FakeClock:
    """A clock that only moves when the timed function says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def start(self) -> float:
        return self.now

    def stop(self, mark: float) -> float:
        return self.now - mark


def ticking(clock: FakeClock, durations: Iterator[float]) -> Callable[[], None]:
    def fn() -> None:
        clock.now += next(durations)

    return fn


def constant(seconds: float) -> Iterator[float]:
    while True:
        yield seconds


def test_constant_work_gives_exact_statistics() -> None:
    clock = FakeClock()
    m = measure(ticking(clock, constant(2e-3)), clock=clock, min_time=0.02, max_time=1.0)
    assert m.median == pytest.approx(2e-3)
    assert m.min == pytest.approx(2e-3)
    assert m.iqr == pytest.approx(0.0, abs=1e-12)
    assert m.number_per_block == 1  # 2 ms per call is already a long enough block
    assert m.runs == 10  # 0.02 s measured in blocks of 2 ms
    assert m.warning is None


def test_short_calls_are_grouped_into_blocks_long_enough_for_the_clock() -> None:
    clock = FakeClock()
    m = measure(ticking(clock, constant(1e-6)), clock=clock, min_time=0.01)
    assert m.number_per_block * 1e-6 >= MIN_BLOCK_SECONDS
    assert m.median == pytest.approx(1e-6)
    assert m.runs >= 5


def test_warmup_calls_are_not_timed() -> None:
    clock = FakeClock()
    slow_first = iter([1.0, 1.0] + [1e-3] * 10_000)  # first call and cold caches: slow
    m = measure(ticking(clock, slow_first), clock=clock, warmup=2, min_time=0.01)
    assert max(m.times) == pytest.approx(1e-3)


def test_spread_is_reported_and_warned_about() -> None:
    clock = FakeClock()

    def alternating() -> Iterator[float]:
        while True:
            yield 1e-3
            yield 3e-3

    m = measure(ticking(clock, alternating()), clock=clock, min_time=0.05)
    # Blocks of one call each (1 ms is a long enough block), starting after the two warm-up calls: 1, 3, 1, 3 ms...
    expected = [(1e-3, 3e-3)[i % 2] for i in range(m.runs)]
    assert m.number_per_block == 1 and m.times == pytest.approx(expected)
    assert m.median == pytest.approx(statistics.median(expected))
    assert m.iqr == pytest.approx(2e-3)
    assert m.warning is not None and "noisy: the IQR is" in m.warning


def test_max_time_bounds_a_slow_function() -> None:
    clock = FakeClock()
    m = measure(ticking(clock, constant(0.5)), clock=clock, min_time=0.1, max_time=1.0, min_runs=100)
    assert m.runs == 2  # stopped by max_time, not min_runs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_time": 0}, "0 < min_time <= max_time < inf"),
        ({"min_time": 2.0, "max_time": 1.0}, "0 < min_time <= max_time < inf"),
        ({"min_time": float("nan")}, "0 < min_time <= max_time < inf"),
        ({"min_time": 1.0, "max_time": float("inf")}, "0 < min_time <= max_time < inf"),
        ({"min_runs": 0}, "min_runs and warmup must be at least 1"),
        ({"warmup": 0}, "min_runs and warmup must be at least 1"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        measure(lambda: None, **kwargs)


def test_thread_count_is_restored_even_after_an_error() -> None:
    before = torch.get_num_threads()
    seen = []

    def fn() -> None:
        seen.append(torch.get_num_threads())
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure(fn, threads=1)
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_gpu_only_options_are_ignored_on_the_cpu() -> None:
    m = measure(lambda: torch.ones(10).sum(), flush_l2=True, cuda_graph=True, min_time=0.01)
    assert m.device == "cpu" and m.median > 0
    assert m.number_per_block > 1  # with an L2 flush every block would be a single call


def test_the_number_of_blocks_is_bounded() -> None:
    clock = FakeClock()
    m = measure(ticking(clock, constant(1e-3)), clock=clock, min_time=100.0, max_time=200.0)
    assert m.runs == MAX_RUNS


def test_measurement_dict_has_units_in_its_keys() -> None:
    m = Measurement(times=(1.0, 2.0, 3.0), number_per_block=4, device="cpu", label="x", threads=1)
    d = m.to_dict()
    assert d["median_s"] == 2.0 and d["min_s"] == 1.0 and d["runs"] == 3
    assert d["iqr_s"] == pytest.approx(1.0)


@pytest.mark.cuda
def test_forgetting_to_synchronize_mis_measures_on_cuda() -> None:
    """Seed 6.1: without synchronize(), perf_counter sees only the kernel launch."""
    a = torch.randn(4096, 4096, device="cuda")
    torch.mm(a, a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        torch.mm(a, a)
    unsynced = (time.perf_counter() - t0) / 10  # planted bug: no synchronize before reading the clock
    torch.cuda.synchronize()
    correct = measure(lambda: torch.mm(a, a), device="cuda", min_time=0.2).median
    assert unsynced < 0.5 * correct, (unsynced, correct)
    flops = 2 * 4096**3 / correct
    assert flops < 2e15, "a correct measurement cannot exceed any GPU's peak"


@pytest.mark.cuda
def test_l2_flush_and_graph_replay_run_on_cuda() -> None:
    x = torch.randn(1 << 20, device="cuda")
    flushed = measure(lambda: x * 2, device="cuda", flush_l2=True, min_time=0.05, max_time=0.5)
    assert flushed.number_per_block == 1  # an L2 flush before every call: one call per timed block
    graphed = measure(lambda: x * 2, device="cuda", cuda_graph=True, min_time=0.05)
    assert graphed.device.startswith("cuda") and graphed.median > 0
    # Whether replay is faster than eager launches is a speed question: benchmarks/gpu_check.sh judges it
    # (small-ops step, "launch overhead removed by CUDA-graph replay"), not a unit test.


def test_without_a_device_every_accelerator_in_use_is_synchronized(monkeypatch: pytest.MonkeyPatch) -> None:
    # The article's trap (6.1): timing GPU work without synchronizing measures the launch. A fake accelerator
    # "in use" must be synchronized around every clock reading although measure() was not told about it.
    measure_module = importlib.import_module("tangtoc.bench.measure")  # the package re-exports the function's name

    synced: list[torch.device] = []
    fake = torch.device("xpu", 0)
    monkeypatch.setattr(measure_module, "accelerators_in_use", lambda: (fake,))
    monkeypatch.setattr(importlib.import_module("tangtoc.clock"), "synchronize", synced.append)
    m = measure(lambda: None, min_time=0.001, max_time=0.01, min_runs=3)
    assert m.device == "xpu:0"
    assert m.clock == "host clock (perf_counter), synchronizing xpu:0 before each reading"
    blocks = m.runs + 1  # the first block sizes the others
    assert synced.count(fake) >= 2 * blocks


def test_the_clock_used_is_reported() -> None:
    assert measure(lambda: None, device="cpu", min_time=0.001).clock.startswith("host clock (perf_counter); CPU")
    assert measure(lambda: None, min_time=0.001).to_dict()["clock"]  # default device: said, not assumed


def test_a_measurement_reads_like_the_cli() -> None:
    clock = FakeClock()
    m = measure(ticking(clock, constant(2e-3)), clock=clock, label="step", device="cpu", min_time=0.01, threads=1)
    assert str(m) == (
        "step: 2 ms per call on cpu (median of 5 blocks of 1 call; IQR 0%, min 2 ms; 1 CPU thread; FakeClock)"
    )
    assert m._repr_html_() == f"<pre>{m}</pre>" and m.__rich__() == str(m)
    noisy = Measurement(times=(1.0, 3.0, 1.0, 3.0), number_per_block=2, device="cpu", threads=2, clock="fake")
    assert str(noisy).splitlines()[1].startswith("noisy: the IQR is")

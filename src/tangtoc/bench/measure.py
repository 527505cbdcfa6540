"""``measure``: timing device work correctly (seed 6.1: synchronize when timing).

A GPU runs asynchronously: ``fn()`` returns when its kernels are *queued*, not done, so timing it with
the host clock alone measures the launch, not the work. ``measure`` therefore

* times CUDA with events recorded on the stream (the device's own clock), and MPS/XPU by
  synchronizing before reading the host clock; the CPU needs no synchronization. Without ``device=`` it
  synchronizes every accelerator the process uses, so GPU work is never timed by its launch alone, and each
  result says which clock timed it;
* warms up first (first call, allocator, cuBLAS/cuDNN loading, ``cudnn.benchmark`` autotuning);
* grows the number of calls per timed block until the block is long enough that the clock's own
  overhead is negligible (as ``torch.utils.benchmark.Timer.blocked_autorange`` does);
* repeats blocks and reports the median, interquartile range and minimum per call, in seconds,
  with a warning when the spread is large.

The clock is injectable (``clock=``), so the statistics are tested on a fake clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tangtoc.clock import Clock, HostClock, clock_for
from tangtoc.device import DeviceLike, accelerators_in_use, resolve
from tangtoc.units import ReadsAsText, fmt_seconds

#: A timed block shorter than this is dominated by the clock and launch jitter, so it is grown.
MIN_BLOCK_SECONDS = 1e-3
#: Spread above which a measurement carries a warning (IQR / median).
NOISY_SPREAD = 0.10
_MAX_NUMBER = 1 << 20
#: At most this many timed blocks: enough for stable quartiles, and a bound on the wall time.
MAX_RUNS = 1000
_L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 (H100: 50 MB; B200: 126 MB)


@dataclass(frozen=True, slots=True)
class Measurement(ReadsAsText):
    """Seconds per call of one timed function: one entry in ``times`` per timed block."""

    times: tuple[float, ...]
    number_per_block: int
    device: str
    label: str = ""
    threads: int = field(default_factory=torch.get_num_threads)
    clock: str = ""  # which clock timed it, and what it synchronized

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def iqr(self) -> float:
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q3 - q1

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median if self.median > 0 else 0.0

    @property
    def warning(self) -> str | None:
        if self.spread <= NOISY_SPREAD:
            return None
        return (
            f"noisy: the IQR is {self.spread:.0%} of the median over {self.runs} runs; another process may be "
            "using this machine, or the clock rate changed. Rerun, or raise the measuring time."
        )

    def text(self) -> str:
        """What a user reads: ``add: 1.31 us per call on cpu (median of 25 blocks of 1,000 calls, IQR 4%, ...)``."""
        what = f"{self.label}: " if self.label else ""
        calls = f"{self.number_per_block:,} call{'s' if self.number_per_block > 1 else ''}"
        text = (f"{what}{fmt_seconds(self.median)} per call on {self.device} (median of {self.runs} block"
                f"{'s' if self.runs > 1 else ''} of {calls}; IQR {self.spread:.0%}, min {fmt_seconds(self.min)}; "
                f"{self.threads} CPU thread{'s' if self.threads > 1 else ''}"
                f"{f'; {self.clock}' if self.clock else ''})")  # fmt: skip
        return text + (f"\n{self.warning}" if self.warning else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "device": self.device,
            "median_s": self.median,
            "iqr_s": self.iqr,
            "min_s": self.min,
            "runs": self.runs,
            "number_per_block": self.number_per_block,
            "threads": self.threads,
            "clock": self.clock,
            "warning": self.warning,
        }


def _l2_flusher(device: torch.device) -> Callable[[], None]:
    buffer = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    return lambda: buffer.zero_()


def _graphed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """Capture ``fn`` in a CUDA graph and return its replay: one launch for all of ``fn``'s kernels."""
    with torch.cuda.device(device):  # capture on the device measured, not whichever is current
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up on a side stream, as graph capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    return graph.replay


def measure(
    fn: Callable[[], object],
    *,
    device: DeviceLike | None = None,
    label: str = "",
    min_time: float = 0.2,
    max_time: float = 2.0,
    min_runs: int = 5,
    warmup: int = 2,
    flush_l2: bool = False,
    cuda_graph: bool = False,
    threads: int | None = None,
    clock: Clock | None = None,
) -> Measurement:
    """Time ``fn()`` on ``device``: warmed up, synchronized, repeated; seconds per call.

    Args:
        fn: the work to time, called with no arguments. Its result is ignored.
        device: where ``fn``'s work runs; decides how the clock synchronizes. ``None`` (the default)
            synchronizes every accelerator this process uses before each clock reading, so GPU work timed without
            ``device=`` is still timed whole; ``Measurement.clock`` says what was used.
        min_time: keep timing blocks until this many seconds were measured (and ``min_runs`` blocks)...
        max_time: ...but stop once this many seconds were measured, even with fewer runs, or after
            :data:`MAX_RUNS` blocks.
        min_runs: the fewest timed blocks wanted for median and IQR.
        warmup: calls made before anything is timed (at least one).
        flush_l2: on a GPU, overwrite the L2 cache before every timed call, so each call reads its
            inputs from memory as it would in a real model; every block is then one call.
        cuda_graph: on CUDA, capture ``fn`` in a CUDA graph and time its replay (for launch-bound work;
            ``fn`` must be capturable: no host syncs, no allocation changes).
        threads: CPU threads for the duration (``torch.set_num_threads``); restored afterwards.
        clock: replaces the device's clock (tests use a fake one).
    """
    if not (0 < min_time <= max_time < math.inf):
        raise ValueError(f"need 0 < min_time <= max_time < inf, got min_time={min_time}, max_time={max_time}.")
    if min_runs < 1 or warmup < 1:
        raise ValueError(f"min_runs and warmup must be at least 1, got min_runs={min_runs}, warmup={warmup}.")
    if device is None:
        in_use = accelerators_in_use()
        dev = in_use[0] if len(in_use) == 1 else torch.device("cpu")  # where flushes and graphs would go
        clock = clock or HostClock(*in_use)
    else:
        dev = resolve(device)
        clock = clock or clock_for(dev)
    if (flush_l2 or cuda_graph) and dev.type != "cuda":
        flush_l2 = cuda_graph = False  # both are GPU notions; on the CPU the plain path is the right one
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        call = _graphed(fn, dev) if cuda_graph else fn
        flush = _l2_flusher(dev) if flush_l2 else None

        def block(number: int) -> float:
            if flush is not None:
                flush()
            mark = clock.start()
            for _ in range(number):
                call()
            return clock.stop(mark)

        number, elapsed = 1, block(1)
        if flush is None:
            while elapsed < MIN_BLOCK_SECONDS and number < _MAX_NUMBER:
                # Aim straight for the minimum block (with margin), at most 10x per step so one
                # fast outlier cannot blow the block size up.
                growth = 10 if elapsed <= 0 else min(10, max(2, int(2 * MIN_BLOCK_SECONDS / elapsed)))
                number *= growth
                elapsed = block(number)
        times = [elapsed / number]
        total = elapsed
        # MAX_RUNS bounds the wall time where each block is tiny and has untimed set-up (an L2 flush): there
        # the measured total grows far slower than the clock on the wall.
        while (total < min_time or len(times) < min_runs) and total < max_time and len(times) < MAX_RUNS:
            elapsed = block(number)
            total += elapsed
            times.append(elapsed / number)
    finally:
        torch.set_num_threads(saved_threads)
    used = threads if threads is not None else saved_threads
    said = str(clock) if type(clock).__str__ is not object.__str__ else type(clock).__name__  # an injected clock
    return Measurement(tuple(times), number, str(dev), label, used, said)

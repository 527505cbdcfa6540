"""The clock module: the one place tangtoc reads time (its docstring's promise, checked), and its stopwatch."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tangtoc.clock import HostClock, Stopwatch, clock_for

SRC = Path(__file__).resolve().parent.parent / "src" / "tangtoc"
READS_TIME = re.compile(r"\b(perf_counter|monotonic|process_time|time\.time|time_ns)\s*\(|^\s*import time\b", re.M)


def test_no_module_but_clock_reads_the_time() -> None:
    readers = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if READS_TIME.search(p.read_text()))
    assert readers == ["clock.py"]


def test_stopwatch_laps_on_an_injected_clock() -> None:
    ticks = iter([10.0, 10.5, 12.0])
    watch = Stopwatch(clock=lambda: next(ticks))
    assert watch.lap() == (0.5, 0.5)
    assert watch.lap() == (1.5, 2.0)


def test_the_host_clock_synchronizes_accelerators_only() -> None:
    assert HostClock(torch.device("cpu"), torch.device("meta")).devices == ()
    assert str(clock_for(torch.device("cpu"))) == "host clock (perf_counter); CPU work, nothing to synchronize"
    assert str(HostClock(torch.device("xpu", 1))).endswith("synchronizing xpu:1 before each reading")

"""The clocks: every reading of time in tangtoc goes through this module.

Seed 6.1: a GPU runs asynchronously, so a host clock read right after launching work measures the launch, not the
work. :class:`CudaEventClock` uses the GPU's own timestamps; :class:`HostClock` synchronizes the devices it is
given before each reading; :class:`Stopwatch` laps the host clock for code that synchronizes itself (fit's log
points, a command's wall time). ``measure`` picks one with :func:`clock_for`; each is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tangtoc.device import synchronize

#: The host clock, for code that synchronizes itself before reading it (an injectable default: tests pass their own).
now: Callable[[], float] = time.perf_counter


class Clock(Protocol):
    """Times a region of device work. ``start`` marks the beginning; ``stop`` returns the seconds since it,
    counting only once all work queued in between has finished."""

    def start(self) -> Any: ...

    def stop(self, mark: Any) -> float: ...


class HostClock:
    """``perf_counter`` around a synchronization of every device given (none on the CPU)."""

    def __init__(self, *devices: torch.device) -> None:
        self.devices = tuple(d for d in devices if d.type not in ("cpu", "meta"))

    def start(self) -> float:
        for d in self.devices:
            synchronize(d)
        return time.perf_counter()

    def stop(self, mark: float) -> float:
        for d in self.devices:
            synchronize(d)
        return time.perf_counter() - mark

    def __str__(self) -> str:
        if not self.devices:
            return "host clock (perf_counter); CPU work, nothing to synchronize"
        return f"host clock (perf_counter), synchronizing {', '.join(map(str, self.devices))} before each reading"


class CudaEventClock:
    """CUDA events on the current stream: the GPU's own timestamps, free of host-side jitter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> torch.cuda.Event:
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(torch.cuda.current_stream(self.device))
        return begin

    def stop(self, mark: torch.cuda.Event) -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        end.synchronize()
        return mark.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

    def __str__(self) -> str:
        return f"CUDA events on the current stream of {self.device}"


def clock_for(device: torch.device) -> Clock:
    """CUDA events for a CUDA device; the host clock, synchronizing ``device``, for any other."""
    return CudaEventClock(device) if device.type == "cuda" else HostClock(device)


@dataclass(slots=True)
class Stopwatch:
    """Host wall time between laps (fit's log points, a command's whole run); ``clock`` is injectable. Work queued
    on a device is not waited for: a caller laps after a synchronizing read (fit laps after its one fetch)."""

    clock: Callable[[], float] = now
    start: float = field(default=0.0)
    last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.start = self.last = self.clock()

    def lap(self) -> tuple[float, float]:
        """(seconds since the previous lap, seconds since the start)."""
        now = self.clock()
        lap, self.last = now - self.last, now
        return lap, now - self.start

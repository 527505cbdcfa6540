"""What a benchmark suite is made of: a configuration, cases that run lazily, and the rows they produce.

A suite returns its cases up front (so a progress bar knows the total) and each case runs on its own:
one that fails becomes a row with an ``error`` and the others still run and are written out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tangtoc.bench.measure import Measurement, measure
from tangtoc.device import DeviceInfo
from tangtoc.errors import WrongResultError

#: Largest relative error (Frobenius norm against a float64 CPU reference) accepted per dtype. A result
#: outside it is reported as wrong and its time is not reported: a fast wrong kernel is not fast.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "tf32": 5e-3, "float16": 1e-2, "bfloat16": 2e-2}


@dataclass(kw_only=True, slots=True)
class BenchConfig:
    """Settings shared by every suite; validated on entry."""

    devices: tuple[torch.device, ...]
    full: bool = False
    min_time: float = 0.2
    max_time: float = 1.0
    threads: int | None = None
    token_budget: int = 10_000_000  # the fixed job the gpt2 suite projects wall time for
    gpt_size: str | None = None  # tangtoc.models configuration; None: "small", or "gpt2" when full
    infos: dict[str, DeviceInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.devices or self.devices[0].type != "cpu":
            raise ValueError("BenchConfig.devices must start with the CPU, the baseline of every speed-up.")
        if self.min_time <= 0 or self.max_time < self.min_time:
            raise ValueError(
                f"BenchConfig.min_time must be > 0 and <= max_time, got {self.min_time} and {self.max_time}."
            )
        if self.token_budget <= 0:
            raise ValueError(f"BenchConfig.token_budget must be positive, got {self.token_budget}.")

    @property
    def accelerators(self) -> tuple[torch.device, ...]:
        return tuple(d for d in self.devices if d.type != "cpu")

    def time(self, fn: Callable[[], object], device: torch.device, label: str, **kw: Any) -> Measurement:
        return measure(
            fn,
            device=device,
            label=label,
            min_time=kw.pop("min_time", self.min_time),
            max_time=kw.pop("max_time", self.max_time),
            threads=self.threads,
            **kw,
        )


@dataclass(kw_only=True, slots=True)
class Row:
    """One measured case. ``metrics`` holds derived numbers whose unit is in their key."""

    suite: str
    case: str
    device: str
    dtype: str = ""
    size: int = 0
    measurement: Measurement | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    check: str | None = None  # how the result was checked, e.g. "rel err 3.1e-07 <= 1e-04"
    error: str | None = None  # why the case produced no number
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "case": self.case,
            "device": self.device,
            "dtype": self.dtype,
            "size": self.size,
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "metrics": self.metrics,
            "check": self.check,
            "error": self.error,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Case:
    """A row not yet measured: ``run()`` does the work."""

    suite: str
    description: str
    run: Callable[[], Row]


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Frobenius-norm relative error of ``result`` against a float64 CPU ``reference``."""
    diff = result.detach().double().cpu() - reference
    denom = reference.norm().item()
    return diff.norm().item() / denom if denom else diff.norm().item()


def checked(result: torch.Tensor, reference: torch.Tensor, dtype_key: str) -> str:
    """Compare with the reference; return a description, or raise :class:`WrongResultError`."""
    err = relative_error(result, reference)
    tol = TOLERANCE[dtype_key]
    if not err <= tol:  # also catches NaN
        raise WrongResultError(
            f"wrong result: relative error {err:.2e} against the float64 CPU reference exceeds the {dtype_key} "
            f"tolerance {tol:.0e}; the time is not reported."
        )
    return f"rel err {err:.1e} <= {tol:.0e}"

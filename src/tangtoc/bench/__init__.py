"""Measure CPU against GPU correctly (seed 6): ``measure`` and the suites behind ``tangtoc bench``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tangtoc.bench import kernels, loops
from tangtoc.bench.cases import BenchConfig, Case, Row
from tangtoc.bench.measure import Clock, Measurement, measure
from tangtoc.errors import WrongResultError

#: Suite name -> function(config) -> cases, in the order they run.
SUITES: dict[str, Callable[[BenchConfig], list[Case]]] = {
    "matmul": kernels.matmul,
    "small-ops": kernels.small_ops,
    "transfer": kernels.transfer,
    "residency": loops.residency,
    "gpt2": loops.gpt2,
}


def run_case(case: Case) -> Row:
    """Run one case; a failure becomes a row with the error, so the other cases still run and are reported."""
    try:
        return case.run()
    except Exception as e:
        device = case.description.rsplit(" on ", 1)[-1]
        return Row(suite=case.suite, case=case.description, device=device, error=f"{type(e).__name__}: {e}")


def run(cases: Iterable[Case]) -> list[Row]:
    return [run_case(c) for c in cases]


__all__ = [
    "SUITES",
    "BenchConfig",
    "Case",
    "Clock",
    "Measurement",
    "Row",
    "WrongResultError",
    "measure",
    "run",
    "run_case",
]

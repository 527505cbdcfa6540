"""What does ``tt.audit()`` (and so ``tangtoc audit``) cost? A training step with and without it, side by side.

The audit runs a TorchFunctionMode (every Python-level torch call) and a TorchDispatchMode (every aten
operation) and counts steps at each ``optimizer.step()``; this measures what that costs per step on the
workloads of benchmarks/guard_overhead.py (GPT mini: realistic; MLP tiny: microsecond kernels, the worst
case), with the same method: ``tangtoc.bench.measure`` of the same step, rounds in rotating order, the median
of per-round ratios. The audit is entered once around the timed calls, as ``tangtoc audit`` does around a
script.

Run:  python benchmarks/audit_overhead.py [--quick] [--rounds N] [--min-time S] [--json PATH]
It is a measurement: it exits 0 whether or not the goal is met, and prints the verdict as measured.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext

from torch import nn

from guard_overhead import Step, run_overhead, timed
from tangtoc.diagnose import audit

AUDIT_GOAL = 3.0  # auditing a few steps is a diagnosis, not training: at most this much on GPT mini


def main(argv: list[str] | None = None) -> int:
    def contenders(model: nn.Module, step: Step, min_time: float) -> dict[str, Callable[[], float]]:
        return {"plain": timed(step, nullcontext, min_time), "tt.audit()": timed(step, audit, min_time)}

    return run_overhead(__doc__, argv, contenders, "tt.audit()", AUDIT_GOAL, "auditing costs")


if __name__ == "__main__":
    sys.exit(main())

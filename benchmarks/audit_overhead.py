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
import time
from contextlib import nullcontext

from guard_overhead import WORKLOADS, compare, metadata, parse_args, report, summarise, timed, write_json
from tangtoc.diagnose import audit

AUDIT_GOAL = 3.0  # auditing a few steps is a diagnosis, not training: at most this much on GPT mini


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n\n")[0], argv)
    started = time.perf_counter()
    results = {}
    for workload, build in WORKLOADS.items():
        _, step = build()
        contenders = {"plain": timed(step, nullcontext, args.min_time), "tt.audit()": timed(step, audit, args.min_time)}
        results[workload] = summarise(compare(contenders, args.rounds), "plain")
    meta = metadata(args, started)
    for line in report("audit overhead", results, meta):
        print(line)
    realistic, worst = (results[w]["tt.audit()"]["ratio"] for w in WORKLOADS)
    met = realistic <= AUDIT_GOAL
    verdict = (
        f"Verdict: goal {'MET' if met else 'MISSED'} — auditing costs {realistic:.2f}× a plain GPT mini step "
        f"(goal ≤ {AUDIT_GOAL}×); worst case, MLP tiny: {worst:.2f}×."
    )
    print(verdict)
    write_json(args.json, {"metadata": meta, "results": results, "goal": AUDIT_GOAL, "met": met, "verdict": verdict})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What does ``tt.device_guard`` cost when nothing is wrong? A training step with and without it, side by side.

Workloads (CPU, one torch thread, so the numbers do not depend on how busy the other core is):

* ``GPT mini``: tangtoc's 0.84M-parameter GPT, batch 8 x 64 tokens, forward + backward + AdamW step —
  a realistic small model;
* ``MLP tiny``: a 32-wide MLP, batch 32, forward + backward + SGD step — microsecond kernels, so the
  per-call cost of the guard's hooks and TorchFunctionMode is as visible as it can be (the worst case).

Contenders: the plain step; the step under an *empty* TorchFunctionMode and under an *empty*
TorchDispatchMode (the floor cost of each layer the guard could have used for its operation checks); the
step under ``device_guard(model)``.

Method: every contender is a ``tangtoc.bench.measure`` of the same step function (warmed up, repeated,
median). Rounds rotate the order of the contenders so machine noise hits all alike; the ratio is taken
inside each round, and the median of those ratios is reported. The guard is entered once around the timed
calls, as in a training loop wrapped in ``with tt.device_guard(model):``.

Run:  python benchmarks/guard_overhead.py [--quick] [--rounds N] [--min-time S] [--json PATH]
It is a measurement: it exits 0 whether or not the goal is met, and prints the verdict as measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import tangtoc
from tangtoc.bench.measure import Measurement, measure
from tangtoc.device import cpu_cores, cpu_model
from tangtoc.diagnose import device_guard
from tangtoc.models import GPT, MLP, gpt_config, mlp_config

GUARD_GOAL = 1.5  # the guard may cost at most this much on the realistic workload (GPT mini)
Step = Callable[[], None]


def gpt_step() -> tuple[nn.Module, Step]:
    torch.manual_seed(0)
    model = GPT(gpt_config("mini"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 256, (8, 64))
    targets = torch.randint(0, 256, (8, 64))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(idx, targets).backward()
        opt.step()

    return model, step


def mlp_step() -> tuple[nn.Module, Step]:
    torch.manual_seed(0)
    model = MLP(mlp_config("tiny"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 32), torch.randint(0, 10, (32,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step


WORKLOADS: dict[str, Callable[[], tuple[nn.Module, Step]]] = {
    "GPT mini, batch 8x64, fwd+bwd+AdamW": gpt_step,
    "MLP tiny, batch 32, fwd+bwd+SGD": mlp_step,
}


def timed(step: Step, context: Callable[[], AbstractContextManager[Any]], min_time: float) -> Callable[[], float]:
    """A contender: the median seconds per step of ``step``, measured inside ``context()``."""

    def run() -> float:
        with context():
            m: Measurement = measure(step, device="cpu", min_time=min_time, max_time=10 * min_time, threads=1)
        return m.median

    return run


def compare(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each contender's seconds per step, one value per round; the order rotates from round to round."""
    names = list(contenders)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            per_round[name].append(contenders[name]())
    return per_round


def summarise(per_round: dict[str, list[float]], baseline: str) -> dict[str, dict[str, Any]]:
    """Median time per contender and its ratio to ``baseline``, taken round by round."""
    base = per_round[baseline]
    out = {}
    for name, times in per_round.items():
        ratios = [t / b for t, b in zip(times, base, strict=True)]
        out[name] = {
            "median_us": statistics.median(times) * 1e6,
            "round_us": [t * 1e6 for t in times],
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
        }
    return out


def metadata(args: argparse.Namespace, started: float) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tangtoc": tangtoc.__version__,
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": 1,
        "rounds": args.rounds,
        "min_time_s": args.min_time,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported (default 5)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds measured per contender per round")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 0.1 s (noisier)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.min_time = 3, 0.1
    if args.rounds < 1 or args.min_time <= 0:
        p.error(f"--rounds must be >= 1 and --min-time > 0, got {args.rounds} and {args.min_time}")
    return args


def report(title: str, results: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> Iterator[str]:
    yield (
        f"{title} — torch {meta['torch']}, {meta['cpu_model']}, {meta['cpu_cores']} cores, 1 torch thread; "
        f"{meta['rounds']} rounds x {meta['min_time_s']} s, median of per-round ratios"
    )
    for workload, res in results.items():
        yield f"  {workload}"
        for name, r in res.items():
            lo, hi = min(r["round_ratios"]), max(r["round_ratios"])
            yield f"    {name:<28} {r['median_us']:>10.1f} µs/step   {r['ratio']:.2f}× (rounds {lo:.2f}–{hi:.2f}×)"


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


class EmptyFunctionMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return func(*args, **(kwargs or {}))


class EmptyDispatchMode(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return func(*args, **(kwargs or {}))


def run_overhead(
    doc: str,
    argv: list[str] | None,
    contenders_of: Callable[[nn.Module, Step, float], dict[str, Callable[[], float]]],
    subject: str,
    goal: float,
    costs: str,
) -> int:
    """Time each workload's step under every contender, print the report and the verdict on ``subject``'s ratio
    for GPT mini against ``goal``, and write the JSON. Shared by this benchmark and audit_overhead.py."""
    args = parse_args(doc.split("\n\n")[0], argv)
    started = time.perf_counter()
    results = {}
    for workload, build in WORKLOADS.items():
        model, step = build()
        results[workload] = summarise(compare(contenders_of(model, step, args.min_time), args.rounds), "plain")
    meta = metadata(args, started)
    for line in report(f"{subject} overhead", results, meta):
        print(line)
    realistic, worst = (results[w][subject]["ratio"] for w in WORKLOADS)
    met = realistic <= goal
    verdict = (
        f"Verdict: goal {'MET' if met else 'MISSED'} — {costs} {realistic:.2f}× a plain GPT mini step "
        f"(goal ≤ {goal}×); worst case, MLP tiny: {worst:.2f}×."
    )
    print(verdict)
    write_json(args.json, {"metadata": meta, "results": results, "goal": goal, "met": met, "verdict": verdict})
    return 0


def main(argv: list[str] | None = None) -> int:
    def contenders(model: nn.Module, step: Step, min_time: float) -> dict[str, Callable[[], float]]:
        return {
            "plain": timed(step, nullcontext, min_time),
            "empty TorchFunctionMode": timed(step, EmptyFunctionMode, min_time),
            "empty TorchDispatchMode": timed(step, EmptyDispatchMode, min_time),
            "device_guard(model)": timed(step, lambda: device_guard(model), min_time),
        }

    return run_overhead(__doc__, argv, contenders, "device_guard(model)", GUARD_GOAL, "the guard costs")


if __name__ == "__main__":
    sys.exit(main())

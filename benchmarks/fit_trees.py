"""Did a change slow ``fit``'s hot loop? ``fit`` of two source trees against the same plain loop, interleaved.

``loop_overhead.py`` compares ``fit`` with a plain loop inside one process; on a shared 2-core machine its
round-to-round spread (±20%) is wider than the few percent a change to the loop can cost. Here each round starts
one process per tree, alternating, and each process times the plain loop and ``fit`` on the tiny MLP (the
contenders and the T(long) − T(short) method of ``loop_overhead.py``). A tree's number per round is its ``fit``
rate relative to the plain loop measured in the same process; the verdict compares the medians of the two trees.

Run:  python benchmarks/fit_trees.py BASE_SRC [NEW_SRC] [--rounds N]
      (e.g. ``git worktree add /tmp/base <commit>`` then ``python benchmarks/fit_trees.py /tmp/base/src``;
      NEW_SRC defaults to this checkout's src/). It is a measurement: it exits 0 whatever the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import json, sys, warnings
import torch
sys.path.insert(0, {bench!r})
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from _train_bench import per_step_rounds
from loop_overhead import make_batches, plain, tangtoc_fit
batches = make_batches()
times = per_step_rounds({{"plain": plain(batches), "fit": tangtoc_fit(batches)}}, {short}, {long}, 1)
print(json.dumps({{name: values[0] for name, values in times.items()}}))
"""


def one_round(src: Path, short: int, long: int) -> dict[str, float]:
    """Seconds per step of the plain loop and of ``fit`` from ``src``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = CHILD.format(bench=str(HERE), short=short, long=long)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="the src/ folder of the tree to compare against")
    p.add_argument("new", type=Path, nargs="?", default=HERE.parent / "src", help="default: this checkout's src/")
    p.add_argument("--rounds", type=int, default=9, help="rounds, each running both trees once (default 9)")
    p.add_argument("--short", type=int, default=200, help="steps of the short run (default 200)")
    p.add_argument("--long", type=int, default=1200, help="steps of the long run (default 1200)")
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0 < args.short < args.long:
        p.error("need --rounds >= 1 and 0 < --short < --long")
    for src in (args.base, args.new):
        if not (src / "tangtoc" / "__init__.py").is_file():
            p.error(f"{src} holds no tangtoc package (give a tree's src/ folder)")
    rates: dict[str, list[float]] = {"base": [], "new": []}
    for r in range(args.rounds):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")  # neither tree always runs first
        for name in order:
            t = one_round(getattr(args, name), args.short, args.long)
            rates[name].append(t["plain"] / t["fit"])
        print(f"round {r + 1}: fit at {rates['base'][-1]:.3f}x (base) and {rates['new'][-1]:.3f}x (new) the plain loop")
    base, new = statistics.median(rates["base"]), statistics.median(rates["new"])
    print(
        f"fit vs the plain loop, median of {args.rounds} rounds: base {base:.3f}x "
        f"({min(rates['base']):.3f}-{max(rates['base']):.3f}), new {new:.3f}x "
        f"({min(rates['new']):.3f}-{max(rates['new']):.3f}); new / base = {new / base:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

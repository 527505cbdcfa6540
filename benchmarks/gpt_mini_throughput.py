"""Training throughput of the ``mini`` GPT on the CPU: ``tangtoc.fit()`` vs a minimal hand-written loop.

Both train the same model (``gpt_config("mini")``: 0.84M parameters, 4 layers, block 128) from the same weights
on the same batches of the stdlib byte corpus (batch 16 x 128 tokens, CPU tensors in a list), with the same
AdamW, in fp32 (``fit``'s ``precision="auto"`` on a CPU). The hand-written loop is the least a person would
write: forward with targets, ``zero_grad``, ``backward``, ``step``, and the loss read every ``log_every`` steps.
Their parameters after 2 steps are checked to be identical before anything is timed.

Per-step time = (T(long) - T(short)) / (long - short) over complete runs from a fresh model, so set-up cancels;
rounds alternate the order; the rate of fit relative to the hand loop is the median of the per-round ratios.

Run:  python benchmarks/gpt_mini_throughput.py [--rounds N] [--short S] [--long L] [--threads T] [--json PATH]
It is a measurement: it exits 0 whether or not the goal is met, and prints the verdict as measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _train_bench import (
    Goal,
    RunFn,
    assert_same_parameters,
    metadata,
    per_step_rounds,
    print_report,
    summarise,
    write_json,
)
from tangtoc.data import stdlib_corpus
from tangtoc.models import GPT, gpt_config
from tangtoc.train import fit

FIT, HAND = "tangtoc.fit", "hand-written loop"
BATCH, N_BATCHES, LOG_EVERY = 16, 64, 10
GOAL = 1.0
CONFIG = gpt_config("mini")


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = stdlib_corpus(max_bytes=2 * 2**20).windows(CONFIG.block_size)
    g = torch.Generator().manual_seed(0)
    picks = torch.randperm(x.shape[0], generator=g)[: BATCH * N_BATCHES].view(N_BATCHES, BATCH)
    return [(x[i].contiguous(), y[i].contiguous()) for i in picks]


def fresh() -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def hand(batches: list) -> RunFn:
    def run(steps: int) -> GPT:
        model, opt = fresh()
        for step in range(steps):
            x, y = batches[step % N_BATCHES]
            loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % LOG_EVERY == 0:
                loss.item()
        return model

    return run


def tangtoc_fit(batches: list) -> RunFn:
    def run(steps: int) -> GPT:
        model, opt = fresh()
        fit(model, batches, optimizer=opt, steps=steps, log_every=LOG_EVERY, device="cpu", progress=False)
        return model

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--short", type=int, default=2, help="steps of the short run (default 2)")
    p.add_argument("--long", type=int, default=12, help="steps of the long run (default 12)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0 < args.short < args.long or args.threads < 1:
        p.error("need --rounds >= 1, 0 < --short < --long and --threads >= 1")
    torch.set_num_threads(args.threads)
    batches = make_batches()
    contenders = {HAND: hand(batches), FIT: tangtoc_fit(batches)}
    assert_same_parameters(contenders[HAND](2), contenders[FIT](2), FIT)
    times = per_step_rounds(contenders, args.short, args.long, args.rounds)
    summaries = summarise(times, HAND)
    f = summaries[FIT]
    tokens = BATCH * CONFIG.block_size
    spread = f"rounds: {f.ratio_min:.3f}–{f.ratio_max:.3f}×"
    if f.ratio_min <= 1 <= f.ratio_max:
        spread += "; 1.0 lies inside that spread: no difference measurable here"
    rates = f"fit {tokens / f.median_s:,.0f} tokens/s, hand-written {tokens / summaries[HAND].median_s:,.0f} tokens/s"
    goals = [
        Goal(
            f"fit() ≥ {GOAL}× the hand-written loop's tokens/s", f.ratio >= GOAL, f"{f.ratio:.3f}× ({spread}); {rates}"
        )
    ]
    meta = metadata(rounds=args.rounds, short_steps=args.short, long_steps=args.long, batch=BATCH, model="GPT mini")
    title = f"Per-step time, GPT mini (batch {BATCH} x {CONFIG.block_size} tokens, AdamW, fp32), CPU"
    print_report(title, "time / step", summaries, HAND, goals, meta)
    tokens_per_s = {name: tokens / s.median_s for name, s in summaries.items()}
    write_json(args.json, meta, summaries, goals, tokens_per_s=tokens_per_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

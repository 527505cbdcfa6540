"""GPT-2 124M trained with ``tangtoc.fit()`` on CUDA (bf16 autocast, ``torch.compile``, fused AdamW, TF32): tokens/s
and MFU. Meant for ``benchmarks/gpu_check.sh``; bounded to about two minutes, most of it compilation.

The model is ``gpt_config("gpt2")`` (12 layers, 12 heads, width 768, 1024 positions) with the vocabulary padded
from 50,257 to 50,304 (a multiple of 64, as nanoGPT does for its ~50% A100 MFU figure; 124.5M parameters):
pass ``--vocab-size 50257`` for the published shape. Data: the stdlib byte corpus in 1024-token windows,
resident on the GPU, so the loss falls visibly and no host transfer happens per step. Batch 16 x 1024 tokens.

MFU = achieved FLOP/s / the device's published dense bf16 peak (tangtoc's hardware table, with its source), with
FLOPs per token = 6N + 12·L·H·Q·T (``GPT.flops_per_token``). Rates are fit's steady state: the log intervals after
the first, which holds compilation. Goal (issue 5): >= 50% MFU on an H200.

Run:  python benchmarks/gpu_train.py [--steps N] [--batch-size B] [--vocab-size V] [--no-compile] [--json PATH]
Exits 2, saying why, when CUDA cannot be used; 0 after a measurement, whether or not the goal is met.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _train_bench import metadata
from tangtoc.data import ResidentLoader, stdlib_corpus
from tangtoc.device import cuda_facts, describe, why_no_cuda
from tangtoc.models import GPT, gpt_config
from tangtoc.train import fit

MFU_GOAL = 0.50


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60: 6 log intervals of 10)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences of 1024 tokens per step (default 16)")
    p.add_argument("--vocab-size", type=int, default=50304, help="50304 (padded, default) or 50257 (published)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (eager mode)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers and the metadata here")
    args = p.parse_args(argv)
    if args.steps < 20 or args.batch_size < 1:
        p.error("need --steps >= 20 (two log intervals at least) and --batch-size >= 1")
    reason = why_no_cuda(cuda_facts())
    if reason:
        print(f"gpu_train: needs a CUDA GPU, and {reason}", file=sys.stderr)
        return 2

    device = torch.device("cuda", torch.cuda.current_device())
    info = describe(device)
    cfg = gpt_config("gpt2", vocab_size=args.vocab_size)
    corpus = stdlib_corpus(max_bytes=8 * 2**20)
    x, y = corpus.windows(cfg.block_size)
    loader = ResidentLoader(x, y, batch_size=args.batch_size, device=device, seed=0)
    torch.manual_seed(0)
    model = GPT(cfg)
    result = fit(
        model,
        loader,
        steps=args.steps,
        precision="bf16",
        compile=not args.no_compile,
        log_every=10,
        device=device,
        progress=False,
    )
    peak = (info.peak_flops or {}).get("bfloat16")
    print(f"device: {info.name} (bf16 dense peak {peak / 1e12:.1f} TFLOP/s, from {info.spec_source})" if peak else
          f"device: {info.name} (not in tangtoc's hardware table: MFU not reported)")  # fmt: skip
    print(f"model: GPT-2 {model.num_params() / 1e6:.1f}M parameters, vocab {cfg.vocab_size}, batch {args.batch_size} x "
          f"{cfg.block_size} tokens, bf16, compile={not args.no_compile}, torch {torch.__version__}")  # fmt: skip
    for r in result.history:
        if r["kind"] == "train":
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
            print(f"  step {r['step']:4d}  loss {r['loss']:.3f}  {r['step_time_s'] * 1e3:8.1f} ms/step  "
                  f"{r['tokens_per_s']:12,.0f} tokens/s  MFU {mfu}")  # fmt: skip
    mfu = result.mfu
    print(f"steady state (log intervals after the first): {result.tokens_per_s:,.0f} tokens/s, "
          f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}, peak memory {result.peak_memory_bytes / 2**30:.1f} GiB, "
          f"wall {result.wall_time_s:.0f} s")  # fmt: skip
    verdict = "NOT CHECKED (peak unknown)" if mfu is None else "MET" if mfu >= MFU_GOAL else "MISSED"
    print(f"goal: MFU >= {MFU_GOAL:.0%} on an H200: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "metadata": metadata(device=info.name, vocab_size=cfg.vocab_size, batch=args.batch_size, steps=args.steps),
            "peak_bf16_flops": peak,
            "peak_source": info.spec_source,
            "tokens_per_s": result.tokens_per_s,
            "mfu": mfu,
            "peak_memory_bytes": result.peak_memory_bytes,
            "wall_time_s": result.wall_time_s,
            "history": result.history,
            "goal": {"mfu_at_least": MFU_GOAL, "met": None if mfu is None else mfu >= MFU_GOAL},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPT-2 124M trained with ``tangtoc.fit()`` on CUDA (bf16 autocast, ``torch.compile``, fused AdamW, TF32): tokens/s,
MFU, compile time, peak memory, first and last loss. Step 4 of ``benchmarks/gpu_check.sh``.

The model is ``gpt_config("gpt2")`` (12 layers, 12 heads, width 768, 1024 positions) with the vocabulary padded
from 50,257 to 50,304 (a multiple of 64, as nanoGPT does for its ~50% A100 MFU figure; 124.5M parameters):
pass ``--vocab-size 50257`` for the published shape. Data: the stdlib byte corpus in 1024-token windows,
resident on the GPU, so the loss falls visibly and no host transfer happens per step. Batch 16 x 1024 tokens.

MFU = achieved FLOP/s / the device's published dense bf16 peak (tangtoc's hardware table, with its source), with
FLOPs per token = 6N + 12·L·H·Q·T (``GPT.flops_per_token``). Rates are fit's steady state: the log intervals after
the first, which holds compilation. Compile time = the first interval's wall time minus its steps at the steady
step time. Goal (issue 10): >= 50% MFU on an H200. If compiling fails, the error is recorded and the run is
repeated without ``torch.compile``.

The JSON is rewritten at every log interval, and SIGTERM (``timeout``) ends the run with what was measured written
and ``"complete": false``. ``--device cpu --size tiny`` rehearses the script without a GPU.

Run:  python benchmarks/gpu_train.py [--steps N] [--batch-size B] [--vocab-size V] [--no-compile] [--json PATH]
Exits 2, saying why, when the device cannot be used; 0 after a measurement, whether or not the goal is met (the
goal is judged by gpu_check); 143 when SIGTERM cut it short.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _train_bench import metadata
from tangtoc.data import ResidentLoader, stdlib_corpus
from tangtoc.device import describe, resolve
from tangtoc.errors import TangtocError
from tangtoc.models import GPT, GPT_SIZES, gpt_config
from tangtoc.train import FitEvent, fit
from tangtoc.train.signals import Terminated, sigterm_as_interrupt

MFU_GOAL = 0.50
LOG_EVERY = 10


def train(args: argparse.Namespace, device: torch.device, compile: bool, out: dict[str, Any], save) -> Any:
    """One fit() run; ``out["history"]`` grows at every log point and is saved at once."""
    cfg = gpt_config(args.size, vocab_size=args.vocab_size)
    x, y = stdlib_corpus(max_bytes=8 * 2**20).windows(cfg.block_size)
    loader = ResidentLoader(x, y, batch_size=args.batch_size, device=device, seed=0)
    torch.manual_seed(0)
    model = GPT(cfg)
    out.update(params=model.num_params(), block_size=cfg.block_size, vocab_size=cfg.vocab_size, compiled=compile)
    out["history"] = []
    started = time.perf_counter()

    def on_event(event: FitEvent) -> None:
        if event.kind == "log":
            # The log point has just fetched the losses (a sync), so this host clock is the device's too.
            out["history"].append({**event.record, "elapsed_s": time.perf_counter() - started})
            save()

    return fit(
        model,
        loader,
        steps=args.steps,
        precision=args.precision,
        compile=compile,
        log_every=LOG_EVERY,
        device=device,
        progress=False,
        callbacks=[on_event],
    )


def summarise(out: dict[str, Any]) -> None:
    """First and last loss, and the compile (plus warm-up) time, from the log records so far."""
    history = out["history"]
    if not history:
        return
    out["first_loss"], out["last_loss"] = history[0]["loss"], history[-1]["loss"]
    if len(history) >= 2:
        steady = history[-1]["step_time_s"]
        out["compile_and_warmup_s"] = max(0.0, history[0]["elapsed_s"] - history[0]["step"] * steady)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60: 6 log intervals of 10)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences of block-size tokens per step (default 16)")
    p.add_argument("--vocab-size", type=int, default=50304, help="50304 (padded, default) or 50257 (published)")
    p.add_argument("--size", choices=GPT_SIZES, default="gpt2", help="GPT configuration (default gpt2: 124M)")
    p.add_argument("--device", default="cuda", help="default cuda; cpu rehearses the script")
    p.add_argument("--precision", default="bf16", help="fit()'s precision (default bf16)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (eager mode)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers and the metadata here")
    args = p.parse_args(argv)
    if args.steps < 2 * LOG_EVERY or args.batch_size < 1:
        p.error(f"need --steps >= {2 * LOG_EVERY} (two log intervals at least) and --batch-size >= 1")
    try:
        device = resolve(args.device)
    except TangtocError as e:
        print(f"gpu_train: cannot use --device {args.device}: {e}", file=sys.stderr)
        return 2
    info = describe(device)
    peak = (info.peak_flops or {}).get("bfloat16")
    out: dict[str, Any] = {
        "metadata": metadata(device=info.name, batch=args.batch_size, steps=args.steps),
        "complete": False,
        "peak_bf16_flops": peak,
        "peak_source": info.spec_source,
        "goal": {"mfu_at_least": MFU_GOAL},
    }

    def save() -> None:
        summarise(out)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2, default=str))

    status = 0
    try:
        with sigterm_as_interrupt():
            try:
                result = train(args, device, not args.no_compile, out, save)
            except Exception as e:  # a compiler missing or failing: measure eager rather than nothing
                if args.no_compile:
                    raise
                out["compile_error"] = f"{type(e).__name__}: {e}"[:2000]
                print(f"gpu_train: torch.compile failed ({out['compile_error'][:300]}); measuring without it")
                result = train(args, device, False, out, save)
        out.update(
            complete=True,
            tokens_per_s=result.tokens_per_s,
            mfu=result.mfu,
            peak_memory_bytes=result.peak_memory_bytes,
            wall_time_s=result.wall_time_s,
        )
    except Terminated:
        print("gpu_train: terminated (SIGTERM): writing what was measured", file=sys.stderr)
        status = 143
    finally:
        save()
    print(
        f"device: {info.name} (bf16 dense peak {peak / 1e12:.1f} TFLOP/s, from {info.spec_source})"
        if peak
        else f"device: {info.name} (not in tangtoc's hardware table: MFU not reported)"
    )
    print(
        f"model: GPT {args.size} {out.get('params', 0) / 1e6:.1f}M parameters, batch {args.batch_size} x "
        f"{out.get('block_size')} tokens, {args.precision}, compiled={out.get('compiled')}, torch {torch.__version__}"
    )
    for r in out.get("history", []):
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        print(
            f"  step {r['step']:4d}  loss {r['loss']:.3f}  {r['step_time_s'] * 1e3:8.1f} ms/step  "
            f"{r.get('tokens_per_s', 0):12,.0f} tokens/s  MFU {mfu}"
        )
    if out["complete"]:
        mfu, mem = out["mfu"], out["peak_memory_bytes"]
        print(
            f"steady state (log intervals after the first): {out['tokens_per_s']:,.0f} tokens/s, "
            f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}, peak memory "
            f"{'n/a' if mem is None else f'{mem / 2**30:.1f} GiB'}, compile + warm-up "
            f"{out.get('compile_and_warmup_s', float('nan')):.1f} s, wall {out['wall_time_s']:.0f} s"
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""``tangtoc train gpt|mlp``: train a built-in model on built-in data, print a summary (and, for GPT, a sample)."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.nn import functional as F

from tangtoc.cli.render import console, fmt_bytes, to_json
from tangtoc.data import ResidentLoader, decode, encode, stdlib_corpus, synthetic_classification, text_corpus
from tangtoc.device import describe, resolve
from tangtoc.models import GPT, GPT_SIZES, MLP, MLP_SIZES, gpt_config, mlp_config
from tangtoc.train import FitResult, fit
from tangtoc.train.precision import PRECISIONS

EVAL_WINDOWS = 256  # held-out windows evaluated at the end: enough for a stable mean, a second or so on a CPU
MLP_SAMPLES = 16_384
SAMPLE_PROMPT = "def "


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a built-in GPT or MLP on built-in data with tangtoc's fit()",
        description="Train a GPT (byte-level, on the Python standard library's source or your text) or an MLP "
        "(synthetic classification) and print tokens/s, MFU, wall time and the final loss. "
        "Exit status: 0 done (or preempted and checkpointed), 1 training failed, 2 usage error.",
    )
    p.add_argument("model", choices=("gpt", "mlp"), help="what to train")
    p.add_argument("--size", default="mini", help=f"gpt: {', '.join(GPT_SIZES)}; mlp: {', '.join(MLP_SIZES)}")
    p.add_argument(
        "--data", default="stdlib", help="gpt: 'stdlib' (default) or a text file or folder; mlp: synthetic only"
    )
    p.add_argument("--max-bytes", type=_positive, default=4 * 2**20, help="gpt: cap on the corpus (default 4 MiB)")
    p.add_argument("--steps", type=_positive, default=300, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=_positive, default=None, help="default 16 (gpt), 256 (mlp)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (needs a C compiler)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--log-every", type=_positive, default=50)
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints, metrics.jsonl and loss.png go here")
    p.add_argument("--checkpoint-every", type=_positive, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=_positive, default=None, help="CPU threads for torch (default: torch's choice, one per core)"
    )
    p.add_argument("--sample-tokens", type=int, default=200, help="gpt: bytes to generate after training")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(run=run)


def _gpt(args: argparse.Namespace, device: torch.device) -> tuple[GPT, ResidentLoader, ResidentLoader, str]:
    cfg = gpt_config(args.size, vocab_size=256) if args.size == "gpt2" else gpt_config(args.size)
    if args.data == "stdlib":
        corpus = stdlib_corpus(max_bytes=args.max_bytes)
    else:
        corpus = text_corpus(args.data, max_bytes=args.max_bytes)
    x, y = corpus.windows(cfg.block_size)
    xv, yv = corpus.windows(cfg.block_size, split="val")
    batch = args.batch_size or 16
    # drop_last: one shape for every step, so a compiled model is not recompiled for a short last batch.
    train = ResidentLoader(x, y, batch_size=batch, device=device, seed=args.seed, drop_last=True)
    val = ResidentLoader(xv[:EVAL_WINDOWS], yv[:EVAL_WINDOWS], batch_size=batch, shuffle=False, device=device)
    n_bytes = corpus.train.numel() + corpus.val.numel()
    about = f"{corpus.source}: {fmt_bytes(n_bytes)} in {corpus.files} files, {x.shape[0]:,} windows of {cfg.block_size}"
    return GPT(cfg).to(device), train, val, about


def _mlp(args: argparse.Namespace, device: torch.device) -> tuple[MLP, ResidentLoader, ResidentLoader, str]:
    if args.data != "stdlib":
        raise ValueError("mlp trains on synthetic classification data only; drop --data.")
    cfg = mlp_config(args.size)
    x, y = synthetic_classification(MLP_SAMPLES, features=cfg.in_features, classes=cfg.out_features, seed=args.seed)
    xv, yv = synthetic_classification(2048, features=cfg.in_features, classes=cfg.out_features, seed=args.seed + 1)
    batch = args.batch_size or 256
    train = ResidentLoader(x, y, batch_size=batch, device=device, seed=args.seed, drop_last=True)
    val = ResidentLoader(xv, yv, batch_size=batch, shuffle=False, device=device)
    about = f"synthetic classification: {MLP_SAMPLES:,} samples, {cfg.in_features} features, {cfg.out_features} classes"
    return MLP(cfg).to(device), train, val, about


def run(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    sizes = GPT_SIZES if args.model == "gpt" else MLP_SIZES
    if args.size not in sizes:
        err.print(
            f"tangtoc train: error: --size {args.size!r} is not a {args.model} size; use one of {', '.join(sizes)}."
        )
        return 2
    if args.resume and args.checkpoint_dir is None:
        err.print("tangtoc train: error: --resume needs --checkpoint-dir (where the checkpoints are).")
        return 2
    device = resolve(args.device)
    if args.threads is not None:
        # Small models on a busy machine often run faster on one thread than on all cores (less waiting).
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        model, train, val, about = (_gpt if args.model == "gpt" else _mlp)(args, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=device.type == "cuda")
        result = fit(
            model,
            train,
            optimizer=optimizer,
            loss_fn=None if args.model == "gpt" else F.cross_entropy,
            steps=args.steps,
            precision=args.precision,
            compile=args.compile,
            log_every=args.log_every,
            eval_data=val,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            on_preempt="return",
            device=device,
            progress=not args.json,
        )
    except ValueError as e:  # settings that cannot work; the message names the flag's argument
        err.print(f"tangtoc train: error: {e}", markup=False)
        return 2
    sample = _sample(model, args, device) if args.model == "gpt" and not result.preempted else None
    summary = _summary(args, model, about, result, sample)
    if args.json:
        print(to_json(summary))
    else:
        _render(summary, result)
    return 0


def _sample(model: GPT, args: argparse.Namespace, device: torch.device) -> str:
    prompt = encode(SAMPLE_PROMPT).long().unsqueeze(0).to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    out = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=40, generator=generator)
    return decode(out[0])


def _summary(
    args: argparse.Namespace, model: GPT | MLP, about: str, result: FitResult, sample: str | None
) -> dict[str, Any]:
    info = describe(result.device)
    return {
        "model": f"{args.model} {args.size}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": about,
        "device": f"{result.device} ({info.name})",
        "precision": result.precision,
        "steps": result.step,
        "resumed_from_step": result.start_step or None,
        "loss": result.loss,
        "eval_loss": result.eval_loss,
        "tokens_per_s": result.tokens_per_s,
        "samples_per_s": result.samples_per_s,
        "mfu": result.mfu,
        "peak_memory_bytes": result.peak_memory_bytes,
        "wall_time_s": result.wall_time_s,
        "preempted": result.preempted,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "metrics": str(result.metrics_path) if result.metrics_path else None,
        "plot": str(result.plot_path) if result.plot_path else None,
        "sample": sample,
    }


def _render(s: dict[str, Any], result: FitResult) -> None:
    out = console()
    out.print(
        f"[bold]tangtoc train {s['model']}[/bold]: {s['parameters']:,} parameters on {s['device']}, {s['precision']}"
    )
    out.print(f"data: {s['data']}", markup=False, soft_wrap=True)
    resumed = f" (resumed from step {s['resumed_from_step']})" if s["resumed_from_step"] else ""
    loss = "n/a" if s["loss"] is None else f"{s['loss']:.4f}"
    eval_loss = "n/a" if s["eval_loss"] is None else f"{s['eval_loss']:.4f}"
    out.print(
        f"steps: {s['steps']}{resumed} | final train loss {loss} | eval loss {eval_loss} "
        f"| wall {s['wall_time_s']:.1f} s"
    )
    rate = (
        f"{s['tokens_per_s']:,.0f} tokens/s"
        if s["tokens_per_s"] is not None
        else f"{s['samples_per_s']:,.0f} samples/s"
        if s["samples_per_s"] is not None
        else "rate n/a"
    )
    mfu = (
        f"MFU {s['mfu']:.1%}"
        if s["mfu"] is not None
        else "MFU n/a (no published peak for this device in tangtoc's hardware table)"
    )
    memory = f" | peak memory {fmt_bytes(s['peak_memory_bytes'])}" if s["peak_memory_bytes"] is not None else ""
    out.print(f"throughput: {rate} | {mfu}{memory}  (steady state: log intervals after the first)")
    written = [f"{k}: {s[k]}" for k in ("checkpoint", "metrics", "plot") if s[k]]
    if written:
        out.print(" | ".join(written), markup=False, soft_wrap=True)
    if result.preempted:
        out.print(
            f"[yellow]preempted[/yellow] at step {s['steps']}: checkpoint written; rerun with --resume to continue."
        )
    if s["sample"] is not None:
        out.print(f"[bold]sample[/bold] (temperature 0.8, top-k 40, prompt {SAMPLE_PROMPT!r}):")
        out.print(s["sample"], markup=False, highlight=False, soft_wrap=True)

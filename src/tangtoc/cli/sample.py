"""``tangtoc sample CKPT``: text from a GPT that ``tangtoc train gpt`` (or ``fit``) saved.

The checkpoint holds the model's config beside its weights, so nothing about its size is asked for; a run's folder
stands for its newest checkpoint. The text goes to stdout alone (the prompt, then what the model wrote), so that
it can be piped or redirected.
"""

from __future__ import annotations

import argparse
import math

import torch

from tangtoc.cli.render import console
from tangtoc.data import decode, encode
from tangtoc.device import resolve
from tangtoc.models import GPT
from tangtoc.train import CheckpointError
from tangtoc.train.checkpoint import find_checkpoint

DEFAULT_PROMPT = "\n"
TEMPERATURE, TOP_K = 0.8, 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a GPT checkpoint that tangtoc train gpt wrote",
        description="Load a GPT from a checkpoint (its size is read from the checkpoint) and continue a prompt. "
        "The text is printed on stdout. Exit status: 0 done, 1 the checkpoint cannot be used, 2 usage error.",
    )
    p.add_argument("checkpoint", help="a checkpoint file (step-NNNNNNNN.pt), or a run's folder for its newest one")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, help="bytes to generate (default 200)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help=f"default {TEMPERATURE}")
    p.add_argument("--top-k", type=int, default=TOP_K, help=f"sample among the k likeliest bytes (default {TOP_K})")
    p.add_argument("--seed", type=int, default=0, help="the same seed, checkpoint and prompt give the same text")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ...")
    p.set_defaults(run=run)


def sample_text(
    model: GPT, prompt: str, tokens: int, *, seed: int, temperature: float = TEMPERATURE, top_k: int | None = TOP_K
) -> str:
    """``prompt`` and ``tokens`` bytes sampled after it by ``model``, as text (reproducible for one ``seed``)."""
    device = next(model.parameters()).device
    ids = encode(prompt)[None].to(device)  # (1, T)
    generator = torch.Generator(device).manual_seed(seed)
    out = model.generate(ids, tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(out[0])


def run(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    problem = (
        "--prompt is empty; the model needs at least one byte to continue" if not args.prompt
        else f"--tokens must be >= 0, got {args.tokens}" if args.tokens < 0
        else f"--temperature must be a finite number > 0, got {args.temperature}"
        if not 0 < args.temperature < math.inf else None
    )  # fmt: skip
    if problem is not None:
        err.print(f"tangtoc sample: error: {problem}.", markup=False)
        return 2
    try:
        path = find_checkpoint(args.checkpoint)
    except CheckpointError as e:  # the argument names no checkpoint: a usage error
        err.print(f"tangtoc sample: error: {e}", markup=False)
        return 2
    device = resolve(args.device)  # a device this machine lacks: main() says so and exits 2
    model = GPT.from_checkpoint(path, device=device)  # one that holds no GPT, or is damaged: main() exits 1
    vocab = model.config.vocab_size
    if not 1 <= args.top_k <= vocab:
        err.print(f"tangtoc sample: error: --top-k must be between 1 and {vocab} (this model's vocabulary).")
        return 2
    text = sample_text(model, args.prompt, args.tokens, seed=args.seed, temperature=args.temperature, top_k=args.top_k)
    print(text)
    return 0

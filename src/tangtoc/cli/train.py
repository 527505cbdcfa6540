"""``tangtoc train gpt|mlp``: train a built-in model on built-in data, print a summary (and, for GPT, a sample).

What was trained is kept: without ``--checkpoint-dir`` the run goes to a new folder ``runs/<model>-<size>-<UTC
time>/`` (as the Hugging Face Trainer and Lightning keep theirs), said before training starts; ``--no-save`` keeps
nothing.

With ``--nproc N`` it starts itself on N processes through ``torch.distributed.run`` (torchrun's own entry point)
and each of them runs this same command without the launch flags, exactly as ``torchrun --nproc-per-node N -m
tangtoc train ...`` would; under torchrun only rank 0 prints the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tangtoc.cli.render import console, fmt_bytes, to_json
from tangtoc.cli.sample import TEMPERATURE, TOP_K, sample_text
from tangtoc.device import describe, resolve
from tangtoc.errors import TangtocError
from tangtoc.models import GPT, GPT_SIZES, MLP, MLP_SIZES
from tangtoc.step import DEFAULT_LR, PRECISIONS, default_optimizer
from tangtoc.train import CheckpointError, FitResult, fit, latest_checkpoint, torchrun_env
from tangtoc.train.checkpoint import prepare_checkpoint_dir
from tangtoc.train.distributed import STRATEGIES, device_for_rank
from tangtoc.train.launch import DEFAULT_JOIN_TIMEOUT_S, LaunchConfig, check_nproc, launch
from tangtoc.workloads import TRAIN_BATCH, training

SAMPLE_PROMPT = "def "
RUNS_DIR = Path("runs")  # where a run goes without --checkpoint-dir, relative to the working folder


#: The flags that say where the processes run; the launched ranks get every other flag as it was given.
LAUNCH_DESTS = ("nproc", "nnodes", "node_rank", "master_addr", "master_port", "join_timeout")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a built-in GPT or MLP on built-in data with tangtoc's fit()",
        description="Train a GPT (byte-level, on the Python standard library's source or your text) or an MLP "
        "(synthetic classification) and print tokens/s, MFU, wall time and the final loss. "
        "Exit status: 0 done (or preempted and checkpointed), 1 training failed, 2 usage error. "
        "On several processes: --nproc N, or `torchrun --nproc-per-node N -m tangtoc train ...`.",
    )
    p.add_argument("model", choices=("gpt", "mlp"), help="what to train")
    p.add_argument("--size", default="mini", help=f"gpt: {', '.join(GPT_SIZES)}; mlp: {', '.join(MLP_SIZES)}")
    p.add_argument(
        "--data", default="stdlib", help="gpt: 'stdlib' (default) or a text file or folder; mlp: synthetic only"
    )
    p.add_argument("--max-bytes", type=_positive, default=4 * 2**20, help="gpt: cap on the corpus (default 4 MiB)")
    p.add_argument("--steps", type=_positive, default=300, help="optimizer steps (default 300)")
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help=f"default {TRAIN_BATCH['gpt']} (gpt), {TRAIN_BATCH['mlp']} (mlp)",
    )
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate (default {DEFAULT_LR:g})")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (needs a C compiler)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--log-every", type=_positive, default=50)
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help=f"checkpoints, metrics.jsonl and loss.png go here (default: a new folder {RUNS_DIR}/<model>-<size>-<UTC "
        "time>)",
    )
    p.add_argument("--no-save", action="store_true", help="keep nothing: no checkpoint, no metrics file, no plot")
    p.add_argument("--checkpoint-every", type=_positive, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=_positive, default=None, help="CPU threads for torch (default: torch's choice, one per core)"
    )
    p.add_argument("--sample-tokens", type=_non_negative, default=200, help="gpt: bytes to generate after training")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    d = p.add_argument_group("several processes (torchrun)")
    d.add_argument(
        "--nproc", type=_positive, default=None, help="processes on this machine: one per GPU, or up to one per core"
    )
    d.add_argument("--nnodes", type=_positive, default=1, help="machines taking part (default 1)")
    d.add_argument("--node-rank", type=_non_negative, default=0, help="this machine's index, 0 at --master-addr")
    d.add_argument("--master-addr", default=None, help="machine 0's address as the others reach it (--nnodes > 1)")
    d.add_argument("--master-port", type=_positive, default=None, help="a free TCP port on machine 0 (default 29500)")
    d.add_argument(
        "--join-timeout",
        type=_positive,
        default=DEFAULT_JOIN_TIMEOUT_S,
        help=f"seconds the machines wait for each other to start (default {DEFAULT_JOIN_TIMEOUT_S})",
    )
    d.add_argument(
        "--strategy", choices=STRATEGIES, default="auto", help="auto (DDP on several processes), ddp, or fsdp"
    )
    p.set_defaults(run=run, parser=p)


def worker_argv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The ``train ...`` arguments each launched rank runs with: the flags given, minus the launch flags."""
    out = ["train", args.model]
    for action in parser._actions:  # argparse keeps its actions in this (long-standing) attribute
        if not action.option_strings or action.dest in (*LAUNCH_DESTS, "help"):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        out += [flag] if action.nargs == 0 else [flag, str(value)]
    return out


def _launch(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    if (env := torchrun_env()) is not None:
        err.print(
            f"tangtoc train: error: --nproc starts torchrun, but this process already runs under it (rank {env.rank} "
            f"of {env.world_size}). Drop --nproc and the other launch flags when launching with torchrun yourself."
        )
        return 2
    try:
        config = LaunchConfig(
            nproc=args.nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            join_timeout_s=args.join_timeout,
        )
        check_nproc(args.nproc, resolve(args.device))
    except ValueError as e:
        err.print(f"tangtoc train: error: {e}", markup=False)
        return 2
    claimed = None
    if args.checkpoint_dir is None and not args.no_save:
        if args.nnodes > 1:  # each machine's launcher would name its own folder
            err.print(
                "tangtoc train: error: on several machines, pass --checkpoint-dir (one folder that every machine "
                "shares) or --no-save."
            )
            return 2
        claimed = _claim_run_dir(args)
        if claimed is None:
            return 2
        args.checkpoint_dir = str(claimed)  # the ranks all write into the one folder named here
    try:
        launch(config, ["tangtoc", *worker_argv(args, args.parser)])  # a DistributedError reaches main(): exit 1
    finally:
        _drop_if_empty(claimed)
    return 0


def _claim_run_dir(args: argparse.Namespace) -> Path | None:
    """Create the run's own folder ``runs/<model>-<size>-<UTC time>`` (``-2``, ``-3``... when another run started
    in the same second: mkdir is the claim, so two runs never share one) and say where it is; ``None`` after
    saying why it cannot be created."""
    err = console(stderr=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        path = RUNS_DIR / f"{args.model}-{args.size}-{stamp}{'' if n == 1 else f'-{n}'}"
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            if path.is_dir():
                n += 1
                continue
            reason = "a file is in the way"  # "runs", or a file named like the folder
        except OSError as e:
            reason = e.strerror or str(e)
        else:
            err.print(f"tangtoc train: saving this run in {path}/ (--checkpoint-dir to choose, --no-save for none)")
            return path
        err.print(
            f"tangtoc train: error: cannot create the run folder {path}: {reason}. Pass --checkpoint-dir with a "
            "writable folder, or --no-save to keep nothing.",
            markup=False,
        )
        return None


def _drop_if_empty(folder: Path | None) -> None:
    """Remove the run folder made for a run that failed before writing anything into it."""
    if folder is not None:
        with contextlib.suppress(OSError):  # not empty: it holds what the run wrote, which is kept
            folder.rmdir()


def run(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    if args.no_save and (args.checkpoint_dir is not None or args.resume or args.checkpoint_every is not None):
        err.print(
            "tangtoc train: error: --no-save keeps nothing, so it cannot go with --checkpoint-dir, --resume or "
            "--checkpoint-every."
        )
        return 2
    if args.checkpoint_dir is not None:
        try:  # before any work: a folder that cannot take checkpoints would fail only at the first save
            prepare_checkpoint_dir(Path(args.checkpoint_dir))
        except CheckpointError as e:
            err.print(f"tangtoc train: error: {e}", markup=False)
            return 2
    if args.nproc is not None:
        return _launch(args)
    given = [
        f"--{dest.replace('_', '-')}" for dest in LAUNCH_DESTS if getattr(args, dest) != args.parser.get_default(dest)
    ]
    if given:
        err.print(f"tangtoc train: error: {', '.join(given)} only make sense with --nproc (processes per machine).")
        return 2
    if args.resume and args.checkpoint_dir is None:
        err.print("tangtoc train: error: --resume needs --checkpoint-dir (where the checkpoints are).")
        return 2
    try:
        env = torchrun_env()
    except ValueError as e:  # a partial or inconsistent set of torchrun's variables
        err.print(f"tangtoc train: error: {e}", markup=False)
        return 2
    where = f" (rank {env.rank} of {env.world_size})" if env is not None else ""
    if args.resume and latest_checkpoint(args.checkpoint_dir) is None and (env is None or env.rank == 0):
        err.print(
            f"tangtoc train: --resume: no checkpoint in {args.checkpoint_dir} yet, so this run starts at step 0.",
            markup=False,
        )
    if env is not None and args.checkpoint_dir is None and not args.no_save:
        # Each process would name its own folder after its own start time.
        err.print(
            f"tangtoc train: error{where}: under torchrun, pass --checkpoint-dir (one folder that every process "
            "shares) or --no-save."
        )
        return 2
    if args.threads is not None:
        # Small models on a busy machine often run faster on one thread than on all cores (less waiting).
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the same on every rank: one initial model, one data order to shard
    device = device_for_rank(args.device)  # a device this machine lacks is a usage error: main() exits 2
    claimed = None
    try:
        work = training(
            args.model,
            args.size,
            device,
            batch_size=args.batch_size,
            data=args.data,
            max_bytes=args.max_bytes,
            seed=args.seed,
        )
        model = work.model
        if args.checkpoint_dir is None and not args.no_save:
            claimed = _claim_run_dir(args)
            if claimed is None:
                return 2
        result = fit(
            model,
            work.train,
            # A function of the parameters: FSDP replaces them when it shards the model.
            optimizer=lambda params: default_optimizer(params, device, lr=args.lr),
            loss_fn=work.loss_fn,
            steps=args.steps,
            precision=args.precision,
            compile=args.compile,
            log_every=args.log_every,
            eval_data=work.val,
            checkpoint_dir=claimed or args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            on_preempt="return",
            device=device,
            progress=not args.json,
            strategy=args.strategy,
        )
    except ValueError as e:  # settings that cannot work; the message names the flag's argument
        err.print(f"tangtoc train: error{where}: {e}", markup=False)
        return 2
    except TangtocError as e:  # the run failed; on several processes, say which one
        err.print(f"tangtoc train: error{where}: {e}", markup=False)
        return 1
    finally:
        _drop_if_empty(claimed)
    if env is not None and env.rank != 0:
        return 0  # rank 0 reports for all
    if 0 < result.start_step == result.step:
        err.print(
            f"tangtoc train: nothing to train: {result.checkpoint} is already at step {result.step}, as many as "
            "--steps. Pass more --steps to train on."
        )
    sample = _sample(model, args, device, result) if args.model == "gpt" and not result.preempted else None
    summary = _summary(args, model, work.data, result, sample)
    if args.json:
        print(to_json(summary))
    else:
        _render(summary, result)
    return 0


def _sample(model: GPT, args: argparse.Namespace, device: torch.device, result: FitResult) -> str | None:
    if result.strategy == "fsdp":
        # The trained model is sharded across ranks that are gone; its full weights are in the checkpoint.
        if result.checkpoint is None:
            return None
        model = GPT.from_checkpoint(result.checkpoint, device=device)
    return sample_text(model, SAMPLE_PROMPT, args.sample_tokens, seed=args.seed)


def _summary(
    args: argparse.Namespace, model: GPT | MLP, about: str, result: FitResult, sample: str | None
) -> dict[str, Any]:
    info = describe(result.device)
    return {
        "model": f"{args.model} {args.size}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": about,
        "device": f"{result.device} ({info.name})",
        "processes": result.world_size,
        "strategy": result.strategy,
        "precision": result.precision,
        "steps": result.step,
        "resumed_from_step": result.start_step or None,
        "loss": result.loss,  # the mean over the steps of loss_steps (the last log interval)
        "loss_steps": result.loss_steps,
        "last_step_loss": result.last_step_loss,
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
    ranks = f" x {s['processes']} processes ({s['strategy']})" if s["processes"] > 1 else ""
    out.print(
        f"[bold]tangtoc train {s['model']}[/bold]: {s['parameters']:,} parameters on {s['device']}{ranks}, "
        f"{s['precision']}"
    )
    out.print(f"data: {s['data']}", markup=False, soft_wrap=True)
    resumed = f" (resumed from step {s['resumed_from_step']})" if s["resumed_from_step"] else ""
    if s["loss"] is None:
        loss = "train loss n/a"
    else:  # a mean over an interval differs from one step's loss: both are said, with what they are
        first, last = s["loss_steps"]
        loss = f"train loss {s['loss']:.4f} (mean of steps {first} to {last})"
        if s["last_step_loss"] is not None:  # None when a finished run was resumed: nothing was trained now
            loss += f", last step {s['last_step_loss']:.4f}"
    eval_loss = "n/a" if s["eval_loss"] is None else f"{s['eval_loss']:.4f}"
    out.print(f"steps: {s['steps']}{resumed} | {loss} | eval loss {eval_loss} | wall {s['wall_time_s']:.1f} s")
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
        if s["checkpoint"] is not None:
            out.print(f"more text: tangtoc sample {shlex.quote(s['checkpoint'])} --prompt TEXT", markup=False)
        out.print(f"[bold]sample[/bold] (temperature {TEMPERATURE}, top-k {TOP_K}, prompt {SAMPLE_PROMPT!r}):")
        out.print(s["sample"], markup=False, highlight=False, soft_wrap=True)

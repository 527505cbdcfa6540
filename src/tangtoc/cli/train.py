"""``tangtoc train gpt|mlp``: train a built-in model on built-in data, print a summary (and, for GPT, a sample).

What was trained is kept: without ``--checkpoint-dir`` the run goes to a new folder ``runs/<model>-<size>-<UTC
time>/`` (as the Hugging Face Trainer and Lightning keep theirs), said before training starts; ``--no-save`` keeps
nothing.

With ``--nproc N`` it starts itself on N processes through ``torch.distributed.run`` (torchrun's own entry point)
and each of them runs this same command without the launch flags, exactly as ``torchrun --nproc-per-node N -m
tangtoc train ...`` would; under torchrun only rank 0 prints the summary. The ranks die with the launcher, even
when it is killed outright (Linux: :func:`~tangtoc.train.distributed.die_with_launcher`).

Exit status: 0 done, or preempted (SIGTERM, SIGUSR1) with a checkpoint written; 1 the run failed (a checkpoint
that could not be written after training included: what was trained is printed first); 2 a usage error (a flag
that cannot work, a checkpoint that does not fit the command line), found before any training.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import torch

from tangtoc.cli.args import finite, threads
from tangtoc.cli.render import console, to_json
from tangtoc.cli.sample import sample_text
from tangtoc.cli.train_report import (
    SAMPLE_PROMPT,
    Progress,
    nonfinite_message,
    reached,
    render,
    summary,
    unwritten,
    unwritten_message,
)
from tangtoc.cli.train_resume import check_init_from, check_resume, for_cli, refuse_foreign_checkpoints
from tangtoc.device import resolve
from tangtoc.errors import NonFiniteLossError, TangtocError, UsageError
from tangtoc.models import GPT, GPT_SIZES, MLP_SIZES
from tangtoc.schemas import stamp
from tangtoc.step import DEFAULT_LR, PRECISIONS, default_optimizer
from tangtoc.train import CheckpointError, FitResult, fit, latest_checkpoint, torchrun_env
from tangtoc.train.checkpoint import find_checkpoint, prepare_checkpoint_dir
from tangtoc.train.distributed import STRATEGIES, device_for_rank, die_with_launcher
from tangtoc.train.launch import DEFAULT_JOIN_TIMEOUT_S, LaunchConfig, check_nproc, launch
from tangtoc.train.schedule import DEFAULT_MIN_LR_RATIO, warmup_cosine
from tangtoc.workloads import TRAIN_BATCH, training

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
    p.add_argument(
        "--lr",
        type=finite,
        default=DEFAULT_LR,
        help=f"AdamW's learning rate, the peak with --warmup (default {DEFAULT_LR:g})",
    )
    p.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        metavar="STEPS",
        help=f"raise the learning rate linearly to --lr over STEPS optimizer steps, then lower it along a cosine to "
        f"{DEFAULT_MIN_LR_RATIO:g} x --lr at the last step; 0: the cosine only (default: no schedule, --lr throughout)",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument(
        "--peak-tflops",
        type=finite,
        default=None,
        help="the device's peak TFLOP/s that MFU divides by (default: $TANGTOC_PEAK_TFLOPS, else tangtoc's hardware "
        "table for the device and precision)",
    )
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
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        default=None,
        help="start from the weights (only) of a checkpoint, or a run folder's newest, at step 0 with a fresh "
        "optimizer: new data, processes, learning rate allowed; with --resume, only while --checkpoint-dir holds no "
        "checkpoint",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=threads, default=None, help="CPU threads for torch (default: torch's choice, one per core)"
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
    before = latest_checkpoint(args.checkpoint_dir) if args.checkpoint_dir is not None else None
    try:
        stopped_by = launch(config, ["tangtoc", *worker_argv(args, args.parser)])  # DistributedError: main(), 1
    except UsageError as e:  # a rank refused its command line, and said why above
        err.print(f"tangtoc train: error: {e}", markup=False)
        return 2
    finally:
        _drop_if_empty(claimed)
    if stopped_by is None:
        return 0
    newest = latest_checkpoint(args.checkpoint_dir) if args.checkpoint_dir is not None else None
    if newest is not None and newest != before:
        err.print(
            f"tangtoc train: preempted ({stopped_by.name}), checkpoint at {newest}; rerun with --resume to continue.",
            markup=False,
        )
        return 0
    kept = (
        "--no-save keeps nothing"
        if args.no_save
        else f"the newest checkpoint is still {before}, from before this run"
        if before is not None
        else "none was kept"
    )
    err.print(
        f"tangtoc train: error: preempted ({stopped_by.name}) before the ranks wrote a checkpoint ({kept}). They "
        "write one at their next log point and torchrun kills them 30 s after the signal: a smaller --log-every "
        "lets them reach one sooner.",
        markup=False,
    )
    return 1


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


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse, before any work, a command line that cannot work (:class:`UsageError`; a
    :class:`CheckpointError` for a --checkpoint-dir or --init-from that cannot be used)."""
    if args.no_save and (args.checkpoint_dir is not None or args.resume or args.checkpoint_every is not None):
        raise UsageError(
            "--no-save keeps nothing, so it cannot go with --checkpoint-dir, --resume or --checkpoint-every."
        )
    if resolve(args.device).type == "meta":  # an unknown or absent device raises here: main() exits 2
        raise UsageError(
            "--device meta: the meta device holds shapes without data, so nothing can be trained on it (tangtoc "
            "uses it to count a step without running it). Fix: --device cpu, cuda or auto."
        )
    if args.checkpoint_dir is not None:
        # A folder that cannot take checkpoints would fail only at the first save.
        prepare_checkpoint_dir(Path(args.checkpoint_dir))
        refuse_foreign_checkpoints(args)
    if args.init_from is not None:
        find_checkpoint(args.init_from)


def run(args: argparse.Namespace) -> int:
    err = console(stderr=True)
    try:
        _check_flags(args)
    except (UsageError, CheckpointError) as e:
        err.print(f"tangtoc train: error: {for_cli(str(e))}", markup=False)
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
    if env is not None:
        die_with_launcher()  # before the work: a rank whose launcher is gone stops (DistributedError: exit 1)
    where = f" (rank {env.rank} of {env.world_size})" if env is not None else ""
    main_rank = env is None or env.rank == 0
    found = latest_checkpoint(args.checkpoint_dir) if args.resume else None
    init = find_checkpoint(args.init_from) if args.init_from is not None and found is None else None
    if args.resume and found is None and main_rank:
        start = f" from the weights of {init}" if init is not None else ""
        err.print(
            f"tangtoc train: --resume: no checkpoint in {args.checkpoint_dir} yet, so this run starts at step 0"
            f"{start}.",
            markup=False,
        )
    elif found is not None and args.init_from is not None and main_rank:
        err.print(
            f"tangtoc train: --resume: continuing from {found}; --init-from {args.init_from} only starts a run.",
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
    world = env.world_size if env is not None else 1
    claimed = None
    progress = Progress()
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
        if found is not None:
            resumed = check_resume(found, model, work.train, world, args)
            if resumed is not None:
                progress.resumed_at(resumed)  # what a run that fails after training then reports
        if init is not None:
            step = check_init_from(init, model, args)
            if main_rank:
                err.print(
                    f"tangtoc train: starting from the weights of {init} (its step {step}) at step 0, with a fresh "
                    "optimizer.",
                    markup=False,
                )
        if args.checkpoint_dir is None and not args.no_save:
            claimed = _claim_run_dir(args)
            if claimed is None:
                return 2
        result = fit(
            model,
            work.train,
            # A function of the parameters: FSDP replaces them when it shards the model.
            optimizer=lambda params: default_optimizer(params, device, lr=args.lr),
            scheduler=warmup_cosine(args.warmup) if args.warmup is not None else None,  # to the last of --steps
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
            peak_flops=args.peak_tflops * 1e12 if args.peak_tflops is not None else None,
            callbacks=[progress],
            strategy=args.strategy,
        )
    except NonFiniteLossError as e:
        err.print(f"tangtoc train: error{where}: {nonfinite_message(e, args, device)}", markup=False)
        return 1
    except ValueError as e:  # settings that cannot work (UsageError among them); the message names the flag
        err.print(f"tangtoc train: error{where}: {for_cli(str(e))}", markup=False)
        return 2
    except Exception as e:
        failure = unwritten(e, progress)
        if failure is not None:  # trained, and not kept: say what was trained, then what was not written
            folder = claimed or (Path(args.checkpoint_dir) if args.checkpoint_dir is not None else None)
            message = unwritten_message(failure, work.model, progress, folder, args.steps)
            s = reached(args, work.model, work.data, device, world, progress, message)
            if args.json:
                print(to_json(stamp("tangtoc.train", s)))
            else:
                render(s)
            err.print(f"tangtoc train: error{where}: {message}", markup=False)
            return 1
        if not isinstance(e, TangtocError):
            raise  # not a failure tangtoc knows: its traceback is the report
        err.print(f"tangtoc train: error{where}: {for_cli(str(e))}", markup=False)  # the run failed; say which rank
        return 1
    finally:
        _drop_if_empty(claimed)
    if not main_rank:
        return 0  # rank 0 reports for all
    if 0 < result.start_step == result.step:
        err.print(
            f"tangtoc train: nothing to train: {result.checkpoint} is already at step {result.step}, as many as "
            "--steps. Pass more --steps to train on."
        )
    sample = _sample(model, args, device, result) if args.model == "gpt" and not result.preempted else None
    s = summary(args, model, work.data, result, sample)
    if args.json:
        print(to_json(stamp("tangtoc.train", s)))
    else:
        render(s)
    return 0


def _sample(model: GPT, args: argparse.Namespace, device: torch.device, result: FitResult) -> str | None:
    if result.strategy == "fsdp":
        # The trained model is sharded across ranks that are gone; its full weights are in the checkpoint.
        if result.checkpoint is None:
            return None
        model = GPT.from_checkpoint(result.checkpoint, device=device)
    return sample_text(model, SAMPLE_PROMPT, args.sample_tokens, seed=args.seed)

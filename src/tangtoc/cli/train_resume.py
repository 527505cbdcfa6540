"""What ``tangtoc train`` checks before it continues a run (``--resume``) or starts one from another's weights
(``--init-from``), in the words of its flags.

fit() checks the same things when it restores a checkpoint, and words them for the Python API (``resume=True``,
``ResidentLoader.load_state_dict``): a user of the command has only flags, so here each mismatch names the flag
that differs and what to pass, before any training. Library messages that still reach the command go through
:func:`for_cli`, which puts the flags in place of the keyword arguments.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from torch import nn

from tangtoc.data import ResidentLoader
from tangtoc.errors import CheckpointError, UsageError
from tangtoc.train.checkpoint import describe_model, latest_checkpoint, load_checkpoint, model_config
from tangtoc.train.strategies import checkpoint_family

#: The Python API's spellings in library messages, and the flags a user of ``tangtoc train`` has instead.
_API_TO_FLAGS = (
    (re.compile(r"checkpoint_dir \(--checkpoint-dir in the CLI\)"), "--checkpoint-dir"),
    (re.compile(r"steps > (\d+) \(--steps in the CLI\)"), r"--steps above \1"),
    (re.compile(r"\bresume=True\b"), "--resume"),
    (re.compile(r"\bstart afresh with resume=False\b"), "start afresh in another --checkpoint-dir"),
    (re.compile(r"\bresume=False\b"), "no --resume"),
    (re.compile(r"(?<![\w/.-])checkpoint_dir(?![\w/.-])=?"), "--checkpoint-dir"),  # the keyword, not a folder name
)
#: What a loader's saved position depends on, and the flags that decide it in ``tangtoc train``.
_DATA_FLAGS = {
    "seed": "--seed",
    "batch_size": "--batch-size",
    "num_samples": "the samples per process (--data, --max-bytes)",
}


def for_cli(message: str) -> str:
    """``message`` with the Python API's keyword arguments (``resume=False``, ``checkpoint_dir``) replaced by the
    flags of ``tangtoc train``."""
    for pattern, flags in _API_TO_FLAGS:
        message = pattern.sub(flags, message)
    return message


def refuse_foreign_checkpoints(args: argparse.Namespace) -> None:
    """A new run (no ``--resume``) in a ``--checkpoint-dir`` that already holds another run's checkpoints would mix
    the two: a later ``--resume`` would pick the wrong run's newest. Refused before any work."""
    if args.resume or args.checkpoint_dir is None:
        return
    found = latest_checkpoint(args.checkpoint_dir)
    if found is not None:
        raise UsageError(
            f"--checkpoint-dir {args.checkpoint_dir} already holds checkpoints of another run (newest: {found.name}). "
            f"Fix: --resume to continue that run, another --checkpoint-dir for a new one, or --init-from {found} "
            "with another --checkpoint-dir to start a new run from its weights."
        )


def _readable(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when it cannot be read: fit() then reports it, or falls back past it."""
    try:
        return load_checkpoint(path, mmap=True)  # mapped, not read: only its small entries are looked at here
    except CheckpointError:
        return None


def _model_mismatch(
    flag: str, path: Path, saved: dict[str, Any] | None, model: nn.Module, args: argparse.Namespace
) -> None:
    mine = model_config(model)
    if saved is None or mine is None or saved == mine:
        return
    theirs = saved["config"] if saved["class"] == mine["class"] else {}
    differ = [f"{k}={theirs.get(k)!r} there, {v!r} here" for k, v in mine["config"].items() if theirs.get(k) != v]
    detail = f" ({'; '.join(differ)})" if theirs else ""
    raise UsageError(
        f"{flag}: {path} holds a {describe_model(saved)}, and `tangtoc train {args.model} --size {args.size}` builds a "
        f"{mine['class']} of another shape{detail}. Fix: the model and --size that it was trained with."
    )


def check_init_from(path: Path, model: nn.Module, args: argparse.Namespace) -> int:
    """Load the weights (only those) of the checkpoint at ``path`` into ``model``, after checking that it holds this
    model's shape (:class:`UsageError` naming ``--size`` otherwise); returns the step it was saved at."""
    state = load_checkpoint(path, mmap=True)  # unreadable: the CheckpointError says why (exit 1)
    _model_mismatch("--init-from", path, state.get("model_config"), model, args)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:  # a config that matches, and weights that do not: a damaged file
        raise CheckpointError(f"--init-from: the weights in {path} do not fit this model: {e}") from e
    return int(state["step"])


def check_resume(
    path: Path, model: nn.Module, loader: ResidentLoader, world_size: int, args: argparse.Namespace
) -> int | None:
    """Refuse, with the flag that differs, a ``--resume`` from ``path`` that fit() would refuse: more steps done
    than ``--steps``, another number of processes or strategy family, another model, another data order. Returns
    the step it continues from (``None`` when it cannot be read: fit() then reports it, or falls back past it)."""
    state = _readable(path)
    if state is None:
        return None
    init = f"--init-from {path} with another --checkpoint-dir"
    step = int(state["step"])
    if step > args.steps:
        raise UsageError(
            f"--resume: {path} is at step {step}, past --steps {args.steps}: there is nothing to train. Fix: --steps "
            f"above {step} to train on from it, or another --checkpoint-dir for a new run."
        )
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size:
        raise UsageError(
            f"--resume: {path} was written by a run of {saved_world} process(es), and this one has {world_size}. "
            "Each process's data position and random state are in it, so resume on as many processes (--nproc, "
            f"--nnodes), or start a new run from its weights alone: {init}."
        )
    saved_strategy = state.get("strategy", "single")
    mine = args.strategy if args.strategy != "auto" else ("ddp" if world_size > 1 else "single")
    if checkpoint_family(saved_strategy) != checkpoint_family(mine):
        raise UsageError(
            f"--resume: {path} was written with --strategy {saved_strategy}, whose optimizer state this run "
            f"(--strategy {mine}) cannot load. Fix: --strategy {saved_strategy}, or {init}."
        )
    _model_mismatch("--resume", path, state.get("model_config"), model, args)
    saved_data = (state.get("data") or {}).get("loader") or {}
    here = loader.state_dict()  # not sharded yet (fit() shards it): the samples of every process
    here["num_samples"] //= world_size
    differ = [
        f"{flag} ({saved_data[key]!r} there, {here[key]!r} here)"
        for key, flag in _DATA_FLAGS.items()
        if key in saved_data and saved_data[key] != here[key]
    ]
    if differ:
        raise UsageError(
            f"--resume: {path} continues a sequence of batches that this run's data does not give: {', '.join(differ)} "
            f"differ. Fix: the same --data, --max-bytes, --batch-size and --seed as the run that wrote it, or, for "
            f"new data, {init}."
        )
    return step

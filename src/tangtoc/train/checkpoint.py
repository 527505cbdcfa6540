"""Checkpoints that survive a crash mid-write and cannot run code when loaded.

* **Atomic**: written with :func:`tangtoc.files.write_atomic` (a temporary file in the same folder, flushed and
  fsynced, renamed over the final name) and the folder fsynced, so a checkpoint file is either complete or absent;
  a run killed mid-write leaves only a ``.step-*.tmp`` file, removed by the next save.
* **One writer per folder**: a save holds the folder's lock (:mod:`~tangtoc.train.folderlock`), and so does a
  whole run under :func:`hold_checkpoint_dir` (and fit's metrics log, in the same folder by default), so a second
  run there is refused with the first one's PID instead of deleting its half-written file; a leftover
  ``.step-*.tmp`` is deleted only under the lock, when no other writer can own it.
* **Damage is caught and told apart from danger**: each checkpoint stores a CRC-32 of every tensor, checked on load;
  a file that is not a readable zip or pickle is reported as corrupt, never as one that could run code
  (:mod:`~tangtoc.train.integrity`); resuming skips a damaged newest checkpoint for the newest that verifies.
* **Safe to load**: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which unpickles only tensors
  and plain containers (dict, list, tuple, str, int, float, bool, None). A file holding any other object, such
  as one whose ``__reduce__`` would run a command, is refused instead of executed. So everything saved here is
  made of those types: RNG states are tensors, NumPy's state is converted, loader positions are ints.
* **Bounded**: the newest ``keep_last`` checkpoints are kept, older ones deleted.
* **Usable alone**: a run's checkpoint holds the model's class and config (:func:`model_config`) beside its
  weights, so ``GPT.from_checkpoint(path)`` rebuilds the model without knowing the size it was trained at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from tangtoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    DistributedError,
    FolderInUseError,
    SkippedCheckpointWarning,
)
from tangtoc.files import write_atomic
from tangtoc.move import to_cpu
from tangtoc.train.batches import BatchStream
from tangtoc.train.distributed import Distributed
from tangtoc.train.folderlock import FolderLock
from tangtoc.train.integrity import (
    CHECKSUMS,
    check_container,
    corrupt,
    refusal,
    tensor_checksums,
    unloadable,
    verify,
)
from tangtoc.train.schedule import resume_rates
from tangtoc.train.strategies import checkpoint_family, load_state_dicts, state_dicts

FORMAT = "tangtoc.checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")
_REQUIRED = ("step", "model", "optimizer", "rng", "data")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (by step, not by file time)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a file, the newest checkpoint in it when it is a folder (a run's
    ``--checkpoint-dir``); :class:`CheckpointError` saying which when there is none."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} holds no checkpoint (no step-NNNNNNNN.pt file); is it a run's folder?")
        return found
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: no such file or folder.")
    return path


def prepare_checkpoint_dir(directory: Path) -> None:
    """Create ``directory`` if needed and check that checkpoints can be written there, before any training: a
    :class:`CheckpointError` that says why not (a file in the way, a read-only file system, no permission), instead
    of an ``OSError`` at the first save."""
    problem = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's exist_ok covers folders only
        problem = "it is a file, not a folder"
    except NotADirectoryError:
        under = next((p for p in directory.parents if p.exists() and not p.is_dir()), directory.parent)
        problem = f"{under} is a file, so no folder can be made under it"
    except OSError as e:
        problem = f"it cannot be created ({e.strerror or e})"
    else:
        if not os.access(directory, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
            readonly = os.statvfs(directory).f_flag & os.ST_RDONLY if hasattr(os, "statvfs") else 0
            problem = "it is on a read-only file system" if readonly else "permission denied: it is not writable"
    if problem is not None:
        raise CheckpointError(
            f"cannot write checkpoints to {directory}: {problem}. Fix: a folder you can write to as checkpoint_dir "
            "(--checkpoint-dir in the CLI)."
        )


@contextlib.contextmanager
def hold_checkpoint_dir(directory: Path | None, parallel: Distributed | None) -> Iterator[None]:
    """Hold ``directory`` for a whole run (nothing to hold when it is ``None``): a second run there is refused with
    a :class:`~tangtoc.errors.FolderInUseError` naming this one's PID, before it reads or writes anything. Only the
    writer, rank 0, takes the lock (the other ranks of the same run would be refused by it); every rank learns
    whether it could, so that a busy folder stops all of them at once instead of leaving the others waiting for
    rank 0 at their first collective. The operating system lets go when the process dies."""
    if directory is None:
        yield
        return
    prepare_checkpoint_dir(directory)  # the lock file goes into it; every rank checks, so each fails alike
    lock, refused = None, None
    if parallel is None or parallel.is_main:
        try:
            lock = FolderLock(directory, "train")
        except FolderInUseError as e:
            refused = e
    if parallel is not None:
        told = parallel.all_gather(None if refused is None else (str(refused), refused.pid, refused.host))[0]
        if told is not None and refused is None:
            refused = FolderInUseError(told[0], pid=told[1], host=told[2])
    if refused is not None:
        raise refused
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """What rebuilds ``model`` from a checkpoint alone: its class name and its ``config`` as plain values, when
    ``model.config`` is a dataclass of plain values (tangtoc's GPT, MLP and CNN); ``None`` otherwise (a Hugging
    Face config holds types a safe load refuses)."""
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    values = dataclasses.asdict(config)
    if not all(_plain(v) for v in values.values()):
        return None
    cls = type(model)
    # FSDP2's fully_shard swaps the class for a subclass named FSDP<Name>: record the model's own class.
    own = next((base for base in cls.__bases__ if f"FSDP{base.__name__}" == cls.__name__), cls)
    return {"class": own.__name__, "config": values}


def _plain(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def describe_model(saved: dict[str, Any]) -> str:
    """``GPT(vocab_size=256, block_size=32, ...)``: a saved :func:`model_config` as a reader knows it."""
    fields = ", ".join(f"{k}={v!r}" for k, v in saved["config"].items())
    return f"{saved['class']}({fields})"


def _check_model(path: Path, saved: dict[str, Any] | None, model: nn.Module) -> None:
    """Refuse a checkpoint of another shape with the fields that differ, before load_state_dict's dump of every
    mismatched tensor."""
    mine = model_config(model)
    if saved is None or mine is None or saved == mine:
        return
    if saved["class"] != mine["class"]:
        differ = f"it holds a {describe_model(saved)}, and this model is a {mine['class']}"
    else:
        theirs = saved["config"]
        diffs = [f"{k}={theirs.get(k)!r} there, {v!r} here" for k, v in mine["config"].items() if theirs.get(k) != v]
        differ = f"it holds a {saved['class']} of another shape ({'; '.join(diffs)})"
    raise CheckpointError(
        f"checkpoint {path} does not match this model: {differ}. Fix: build the model with the checkpoint's config "
        f"({describe_model(saved)}; GPT.from_checkpoint(path) does that for a GPT), or use another checkpoint_dir."
    )


def _fsync_dir(directory: Path) -> None:
    # The rename is recorded in the folder's entry; without this it may be lost on power failure.
    # Opening a folder is not possible on Windows, where os.replace is durable enough.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike[str], *, keep_last: int) -> Path:
    """Write ``state`` (which must hold ``"step"``) atomically as ``directory/step-NNNNNNNN.pt`` with a CRC-32 of
    each of its tensors, delete all but the newest ``keep_last`` checkpoints and any temporary file a killed run
    left, and return the path. Holds the folder's lock while it writes: a folder another run holds is a
    :class:`~tangtoc.errors.FolderInUseError`, one that cannot take the file a :class:`CheckpointError` (see
    :func:`prepare_checkpoint_dir`) or an :class:`~tangtoc.errors.OutputError` (no space left)."""
    root = Path(directory)
    prepare_checkpoint_dir(root)
    final = checkpoint_path(root, int(state["step"]))
    saved = to_cpu(state)  # one copy to the host, which both the checksums and torch.save then read
    for key, value in saved.items():  # never write what load_checkpoint would refuse as "changed after writing"
        unsafe = unloadable(value)
        if unsafe:
            raise CheckpointError(
                f"cannot write checkpoint {final}: its {key!r} entry holds {', '.join(unsafe)}, which "
                "torch.load(weights_only=True) refuses, so resuming from it would fail. Fix: keep only tensors, "
                "numbers, strings and containers of them in that state, or allow the type with "
                "torch.serialization.add_safe_globals([...]) if you trust it."
            )
    payload = {"format": FORMAT, "version": VERSION, **saved, CHECKSUMS: tensor_checksums(saved)}
    with FolderLock(root, "write checkpoints"):
        # Under the lock no other writer can be mid-write here: a temporary file left now is a killed run's.
        for stale in root.glob(".step-*.tmp"):
            stale.unlink(missing_ok=True)
        write_atomic(final, lambda f: torch.save(payload, f))
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, refusing anything that could run code.

    ``mmap=True`` maps the tensors from the file instead of reading them into memory: the ranks of a distributed
    run that each load the same checkpoint then share one copy in the page cache instead of holding one each.

    Raises :class:`~tangtoc.errors.CorruptCheckpointError` (a :class:`CheckpointError`) for a file that is
    truncated or damaged: not a readable zip or pickle, or tensors that differ from the checksums written with them
    (checkpoints written before checksums existed load unverified); :class:`CheckpointError` for one that holds
    objects other than tensors and plain data, or that is not a tangtoc checkpoint.
    """
    path = Path(path)
    check_container(path)  # damage first: PyTorch reports garbage as objects that could run code
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise refusal(path, e, FORMAT) from e
    except Exception as e:  # the pickle is intact: what else PyTorch trips on is damage only loading shows
        raise corrupt(path, e) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a tangtoc checkpoint (no format={FORMAT!r} entry). To start from plain weights, load "
            "them into the model with model.load_state_dict(torch.load(path, weights_only=True)) and resume=False."
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {state.get('version')!r} checkpoint; this tangtoc reads version {VERSION}."
        )
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete.")
    verify(state, path)
    state.pop(CHECKSUMS, None)  # verified: the state reads as it was saved
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a training step may draw from, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )


# -- a fit() run's checkpoint -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunState:
    """What a checkpoint of a :func:`~tangtoc.fit` run saves and restores, besides the step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batches: BatchStream
    device: torch.device
    parallel: Distributed | None
    scheduler: LRScheduler | None = None

    @property
    def strategy(self) -> str | None:
        return self.parallel.strategy if self.parallel is not None else None

    @property
    def rank(self) -> int:
        return self.parallel.rank if self.parallel is not None else 0

    @property
    def world_size(self) -> int:
        return self.parallel.world_size if self.parallel is not None else 1


def newest_checkpoint(directory: Path, parallel: Distributed | None) -> Path | None:
    """The newest checkpoint in ``directory`` that loads and verifies, which every rank must see alike (each reads
    it to resume). Damaged newer ones are skipped with a :class:`~tangtoc.errors.SkippedCheckpointWarning` naming
    them (from rank 0); when every checkpoint there is damaged, :class:`~tangtoc.errors.CorruptCheckpointError`."""
    found = _newest_intact(directory, warn=parallel is None or parallel.is_main)
    if parallel is None:
        return found
    seen = parallel.all_gather(found.name if found is not None else None)
    if len(set(seen)) > 1:
        views = ", ".join(f"rank {r}: {name or 'none'}" for r, name in enumerate(seen))
        raise DistributedError(
            f"the ranks see different newest checkpoints in {directory} ({views}). Every rank reads the "
            "checkpoint it resumes from, so checkpoint_dir must be one folder that every machine shares (a "
            "network filesystem), not a local folder on each."
        )
    return found


def _newest_intact(directory: Path, warn: bool) -> Path | None:
    skipped: list[CorruptCheckpointError] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            load_checkpoint(path, mmap=True)  # mapped: only the checksums read the tensors, from the page cache
        except CorruptCheckpointError as e:
            skipped.append(e)
            continue
        if skipped and warn:
            warnings.warn(
                f"resuming from {path}, the newest checkpoint that verifies: skipped {_listed(skipped)}. Delete "
                "what was skipped once you no longer need it for a diagnosis.",
                SkippedCheckpointWarning,
                stacklevel=4,
            )
        return path
    if skipped:
        raise CorruptCheckpointError(
            f"every checkpoint in {directory} is damaged, so there is nothing to resume from: {_listed(skipped)}. "
            "Fix: start afresh in another checkpoint_dir, or delete these files.",
            path=skipped[0].path,
            reason=skipped[0].reason,
        )
    return None


def _listed(damaged: list[CorruptCheckpointError]) -> str:
    return "; ".join(f"{e.path.name}, which is corrupt or truncated ({e.reason})" for e in damaged)


def restore_run(path: Path, run: RunState) -> tuple[int, int]:
    """Load ``path`` into ``run`` (model, optimizer, scaler, learning-rate schedule, this rank's RNG states and data
    position); returns ``(step, skipped_steps)``."""
    state = load_checkpoint(path, mmap=run.parallel is not None)
    saved_world = int(state.get("world_size", 1))
    saved_strategy = state.get("strategy", "single")
    if saved_world != run.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by a run of {saved_world} process(es); this one has "
            f"{run.world_size}. Each rank's data position and random state are saved, so resume with the same "
            "number of processes. To start a new run from its weights only, load state['model'] (from "
            "tangtoc.train.load_checkpoint) into the model and train with another checkpoint_dir."
        )
    if checkpoint_family(saved_strategy) != checkpoint_family(run.strategy):
        raise CheckpointError(
            f"checkpoint {path} was written with strategy {saved_strategy!r}, whose optimizer state this run "
            f"({run.strategy or 'single'!r}) cannot load: FSDP keys it by parameter name, DDP and a single "
            "process by index. Resume with the strategy that wrote it."
        )
    _check_model(path, state.get("model_config"), run.model)
    try:
        load_state_dicts(run.model, run.optimizer, state["model"], state["optimizer"], run.strategy)
    except (RuntimeError, ValueError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(
            f"checkpoint {path} does not match this model or optimizer: {detail[:400]} Fix: use another "
            "checkpoint_dir, or delete its checkpoints to start afresh."
        ) from e
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    _restore_scheduler(path, state.get("scheduler"), run.scheduler, int(state["step"]))
    mine = state["ranks"][run.rank] if saved_world > 1 else state
    set_rng_state(mine["rng"], run.device)
    run.batches.load_state_dict(mine["data"])
    return int(state["step"]), int(state.get("skipped_steps", 0))


def check_schedule_saves(scheduler: LRScheduler | None) -> None:
    """Before training with checkpoints: refuse a schedule whose state (a ``LambdaLR``'s callable objects keep their
    attributes there) a safe load refuses, which would make every checkpoint of the run impossible to resume."""
    unsafe = unloadable(_scheduler_state(scheduler))
    if unsafe:
        raise CheckpointError(
            f"fit: the learning-rate schedule ({type(scheduler).__name__}) holds {', '.join(unsafe)} in its "
            "state_dict(), which checkpoints save and torch.load(weights_only=True) refuses, so no checkpoint of "
            "this run could be resumed. Fix: a schedule function that is a plain function or a functools.partial "
            "(or an object whose attributes are numbers and strings), tangtoc.warmup_cosine, or allow the type with "
            "torch.serialization.add_safe_globals([...]) if you trust it."
        )


def _scheduler_state(scheduler: LRScheduler | None) -> dict[str, Any] | None:
    # The class name goes with the state: a checkpoint of one schedule is not resumed under another.
    return None if scheduler is None else {"class": type(scheduler).__name__, "state": scheduler.state_dict()}


def _restore_scheduler(path: Path, saved: dict[str, Any] | None, scheduler: LRScheduler | None, step: int) -> None:
    """Continue the saved schedule, refusing a resume that would silently change it: a schedule dropped (the
    learning rate would stay at its value of ``step``), one added (it would start over at ``step``), or another
    class of schedule."""
    mine = type(scheduler).__name__ if scheduler is not None else None
    theirs = saved["class"] if saved is not None else None
    if mine == theirs:
        if scheduler is not None and saved is not None:
            scheduler.load_state_dict(saved["state"])
            resume_rates(scheduler)
        return
    if theirs is None:
        problem = f"without a learning-rate schedule, and this run has one ({mine}): it would start over at step {step}"
    elif mine is None:
        problem = (
            f"with a learning-rate schedule ({theirs}), and this run has none: the learning rate would stay at its "
            f"scheduled value of step {step}"
        )
    else:
        problem = f"with a {theirs} learning-rate schedule, and this run has a {mine}"
    raise CheckpointError(
        f"checkpoint {path} was written by a run {problem}. Fix: resume with the schedule that wrote it "
        "(scheduler=, --warmup in the CLI), or start the new schedule in another checkpoint_dir."
    )


def save_run(directory: Path, run: RunState, step: int, skipped: int, keep_last: int) -> Path:
    """Write ``run`` at ``step`` to ``directory`` (rank 0 writes; every rank's RNG state and data position are
    gathered into the file) and return the checkpoint's path once every rank knows it is complete."""
    model_state, optimizer_state = state_dicts(run.model, run.optimizer, run.strategy)  # FSDP: a collective
    mine = {"rng": rng_state(run.device), "data": run.batches.state_dict()}
    parallel = run.parallel
    ranks = parallel.gather(mine) if parallel is not None and run.world_size > 1 else None
    if run.rank == 0:
        state = {
            "step": step,
            "model": model_state,
            "model_config": model_config(run.model),
            "optimizer": optimizer_state,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "scheduler": _scheduler_state(run.scheduler),
            **mine,  # rank 0's, so that the format stays the same as a single process's
            "skipped_steps": skipped,
            "world_size": run.world_size,
            "strategy": run.strategy or "single",
        }
        if ranks is not None:
            state["ranks"] = ranks
        save_checkpoint(state, directory, keep_last=keep_last)
    if parallel is not None:
        parallel.barrier()  # whatever a rank does next (exit, resume, read it), the file is complete
    return checkpoint_path(directory, step)

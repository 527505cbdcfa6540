"""Checkpoints that survive a crash mid-write and cannot run code when loaded.

* **Atomic**: written to a temporary file in the same folder, flushed and fsynced, then renamed over the final
  name with ``os.replace`` (atomic on POSIX and Windows) and the folder fsynced, so a checkpoint file is either
  complete or absent; a run killed mid-write leaves only a ``.step-*.tmp`` file, removed by the next save.
* **Safe to load**: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which unpickles only tensors
  and plain containers (dict, list, tuple, str, int, float, bool, None). A file holding any other object, such
  as one whose ``__reduce__`` would run a command, is refused instead of executed. So everything saved here is
  made of those types: RNG states are tensors, NumPy's state is converted, loader positions are ints.
* **Bounded**: the newest ``keep_last`` checkpoints are kept, older ones deleted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tangtoc.train.errors import CheckpointError

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
    """Write ``state`` (which must hold ``"step"``) atomically as ``directory/step-NNNNNNNN.pt``, delete all but
    the newest ``keep_last`` checkpoints and any temporary file a killed run left, and return the path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):
        stale.unlink(missing_ok=True)
    final = checkpoint_path(root, int(state["step"]))
    fd, tmp = tempfile.mkstemp(prefix=".step-", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, refusing anything that could run code.

    ``mmap=True`` maps the tensors from the file instead of reading them into memory: the ranks of a distributed
    run that each load the same checkpoint then share one copy in the page cache instead of holding one each.

    Raises :class:`CheckpointError` for a file that is truncated or corrupt, that holds objects other than
    tensors and plain data, or that is not a tangtoc checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain data, and unpickling "
            f"them could run code ({reason}). tangtoc loads checkpoints with torch.load(weights_only=True). If you "
            "made this file yourself and trust it, load it with torch.load(path, weights_only=False) and save its "
            "tensors again."
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(e).__name__}: {first}). tangtoc "
            "writes checkpoints atomically, so it was damaged or cut after writing. Fix: delete it to resume from "
            "the previous checkpoint, or start afresh with resume=False."
        ) from e
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

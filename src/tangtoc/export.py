"""The weights of a tangtoc checkpoint for the wider ecosystem: a safetensors file any library loads without tangtoc.

A checkpoint holds everything a run needs to resume (optimizer, RNG states, the data position); the export keeps
only the model's tensors, under the same names as the model's ``state_dict()``, so ``model.load_state_dict(
safetensors.torch.load_file(path))`` restores them. Tensors that share storage in the model (a GPT's tied
embedding and output weights) are written once each under both names: safetensors refuses shared storage, and a
reader wants every key ``load_state_dict`` expects. The step and, where the checkpoint has it, the model's config
(class and fields) go into the file's metadata. ``safetensors`` is an optional extra (``tangtoc[export]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tangtoc.errors import CheckpointError
from tangtoc.files import write_atomic
from tangtoc.train.checkpoint import find_checkpoint, load_checkpoint


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "exporting to safetensors needs the safetensors package, which is not installed: "
            "pip install 'tangtoc[export]' (or pip install safetensors)."
        ) from None
    return safetensors.torch


def export_safetensors(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the model weights of ``checkpoint`` (a checkpoint file, or a run's folder: its newest) to ``out`` as
    safetensors; returns the path written. Raises :class:`~tangtoc.errors.CheckpointError` for a file that is not
    a tangtoc checkpoint, :class:`~tangtoc.errors.OutputError` when ``out`` cannot be written."""
    st = _safetensors()
    source = find_checkpoint(checkpoint)
    state = load_checkpoint(source)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{source} holds no model state_dict of tensors under 'model'; nothing to export.")
    tensors, seen = {}, set()
    for name, t in weights.items():
        t = t.detach().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)
        tensors[name] = t.clone() if key in seen else t  # a second name of shared storage gets its own copy
        seen.add(key)
    metadata = {"format": "pt", "tangtoc_step": str(state.get("step")), "tangtoc_source": source.name}
    if state.get("model_config"):
        metadata["tangtoc_model"] = json.dumps(state["model_config"])
    return write_atomic(out, st.save(tensors, metadata=metadata))

"""How a model is spread over the ranks: DDP (a full copy per rank, gradients all-reduced during the backward pass)
or FSDP2 (``fully_shard``: parameters, gradients and optimizer state sharded across ranks, for models that do not
fit one device); and how each saves and loads its state.

**Checkpoints are full state dicts, for both strategies.** DDP's model and optimizer are identical on every rank,
so rank 0's are the state. FSDP's shards are gathered to rank 0's host memory
(``get_state_dict(full_state_dict=True, cpu_offload=True)``) and written by rank 0 into the same single file as
any tangtoc checkpoint. Chosen over ``torch.distributed.checkpoint`` (one file per rank) because: the same
atomic writer and the same ``torch.load(weights_only=True)`` reader serve every run (DCP reads its ``.metadata``
with plain ``pickle.load``, which would run code from a crafted file); the model weights load into a plain model
of any world size for inference; and nothing needs a filesystem shared by writers. The price: rank 0's host must
hold the full model and optimizer state while saving, and gathering is serial through rank 0. That bounds it to
models whose full state fits one machine's RAM (a 7B-parameter model with AdamW: about 84 GiB); beyond that,
sharded DCP checkpoints are the way.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tangtoc.step import OptimizerFactory
from tangtoc.train.distributed import Distributed

try:  # torch >= 2.6
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch 2.5 has FSDP2 under its earlier, private name
    from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]


def wrap(model: nn.Module, parallel: Distributed, precision_name: str) -> nn.Module:
    """The module the forward pass goes through: a DDP wrapper around ``model``, or ``model`` itself sharded in
    place by FSDP2 (each block of every ``nn.ModuleList`` its own unit, then the root, as torchtitan does for
    transformer layers: one block's parameters are gathered at a time, not the whole model's)."""
    if parallel.strategy == "ddp":
        ids = [parallel.device.index] if parallel.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
        parallel.closers.append(lambda: _release_reducer(ddp))
        return ddp
    if precision_name == "fp16":
        # GradScaler's inf check would see only this rank's gradient shard, and ranks could disagree on skipping.
        raise ValueError(
            "fit: strategy='fsdp' with precision='fp16' is not supported: the GradScaler would check only this "
            "rank's shard of the gradients. Fix: precision='bf16' (no scaler needed) or strategy='ddp'."
        )
    from torch.distributed.device_mesh import init_device_mesh

    # Each rank keeps its own slice of its own copy: start them all from rank 0's weights, as DDP does, so that
    # ranks that initialised differently (another seed, another RNG state) still train one model.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(parallel.device.type, (parallel.world_size,))
    _shard_blocks(model, mesh)
    fully_shard(model, mesh=mesh)
    return model


def _shard_blocks(module: nn.Module, mesh: Any) -> None:
    # Not into a block: FSDP2 units must nest bottom-up, and one unit per block is the granularity wanted.
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                if any(True for _ in block.parameters()):
                    fully_shard(block, mesh=mesh)
        else:
            _shard_blocks(child, mesh)


def _release_reducer(ddp: DistributedDataParallel) -> None:
    """Free DDP's C++ reducer (and the logger that shares it) now, while the process group is still registered.

    The reducer holds a reference to the process group. Left to die with the DDP object, after the group was
    destroyed, it would drop the group's last reference while holding the GIL; gloo's destructor then joins its
    worker thread, which may itself be waiting for the GIL to free the tensors of the last collective: a
    deadlock at exit (seen in 1 of ~12 two-rank runs here). Dropped through the Python process-group object
    instead, the destructor runs with the GIL released.
    """
    for name in ("logger", "reducer"):
        if hasattr(ddp, name):
            delattr(ddp, name)


def micro_step_context(forward: nn.Module) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """What the gradient-accumulation micro-steps before the last one run under: DDP's ``no_sync`` (gradients
    accumulate locally, one all-reduce on the last micro-step). ``None`` otherwise, FSDP included: skipping its
    reduce-scatter would keep a full, unsharded copy of the gradients on every rank until the last micro-step,
    which is the memory FSDP is used to avoid; it pays one reduce-scatter per micro-step instead."""
    if isinstance(forward, DistributedDataParallel):
        return forward.no_sync
    return None


def build_optimizer(
    optimizer: torch.optim.Optimizer | OptimizerFactory | None,
    model: nn.Module,
    default: Callable[[], torch.optim.Optimizer],
    strategy: str | None,
) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s parameters as they are *after* wrapping. A factory (``params ->
    Optimizer``) is called on them; an optimizer instance is used as it is, except under FSDP, where
    ``fully_shard`` has replaced the parameters it was built on. A model with nothing to train, and an optimizer
    holding none of its trainable parameters, are refused: either would run to the end and change nothing."""
    trainable = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(
            f"fit: {type(model).__name__} has no trainable parameters (none, or all with requires_grad=False), so "
            "there is nothing to train. Fix: unfreeze what should learn (p.requires_grad_(True)), or pass the "
            "model that holds them."
        )
    if optimizer is None:
        return default()
    if isinstance(optimizer, torch.optim.Optimizer) and strategy != "fsdp":
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for key, name in trainable.items() if key not in held]
        if len(missing) == len(trainable):
            raise ValueError(
                f"fit: the optimizer holds none of the {len(trainable)} trainable parameters of this "
                f"{type(model).__name__} (it was built on another model, or before the model was made again), so "
                "training would change nothing. Fix: build it on this model, e.g. "
                "torch.optim.AdamW(model.parameters()), or pass optimizer=lambda params: torch.optim.AdamW(params)."
            )
        if missing:
            warnings.warn(
                f"fit: the optimizer holds {len(trainable) - len(missing)} of the model's {len(trainable)} trainable "
                f"parameters; these will not be updated: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. "
                "Freeze them (requires_grad_(False)) if that is meant.",
                stacklevel=4,
            )
    if isinstance(optimizer, torch.optim.Optimizer):
        if strategy == "fsdp":
            current = {id(p) for p in model.parameters()}
            if any(id(p) not in current for group in optimizer.param_groups for p in group["params"]):
                raise ValueError(
                    "fit: with strategy='fsdp', fully_shard replaces the model's parameters with sharded ones, so an "
                    "optimizer built before fit() would update the old ones. Fix: pass a function that builds it, "
                    "e.g. optimizer=lambda params: torch.optim.AdamW(params, lr=3e-4)."
                )
        return optimizer
    if callable(optimizer):
        built = optimizer(model.parameters())
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(f"fit: the optimizer function must return a torch.optim.Optimizer, got {type(built)}.")
        return built
    raise TypeError(
        f"fit: optimizer must be a torch.optim.Optimizer, a function params -> Optimizer, or None; got "
        f"{type(optimizer).__name__}."
    )


def state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str | None) -> tuple[dict, dict]:
    """(model, optimizer) state to checkpoint. Under FSDP a collective every rank must call: the full state is
    gathered onto rank 0's CPU, and the other ranks get empty dicts (they do not write)."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), optimizer.state_dict()


def load_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict, strategy: str | None
) -> None:
    """Load what :func:`state_dicts` saved. Under FSDP every rank passes the full state and keeps its shard."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=model_state,
            optim_state_dict=optimizer_state,
            options=StateDictOptions(full_state_dict=True),
        )
        return
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor: under FSDP ``clip_grad_norm_`` returns a replicated DTensor."""
    to_full = getattr(norm, "full_tensor", None)
    return to_full() if callable(to_full) else norm


def checkpoint_family(strategy: str | None) -> str:
    """Which checkpoints can resume which runs: FSDP's optimizer state is keyed by parameter name, DDP's and a
    single process's by parameter index, so those two read each other's and FSDP reads only its own."""
    return "fsdp" if strategy == "fsdp" else "plain"

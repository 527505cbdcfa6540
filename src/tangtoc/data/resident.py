"""A data loader that keeps the whole data set on the device (seed 4.3 and 6.3).

A ``DataLoader`` over in-memory tensors collates every batch sample by sample on the CPU and copies it to the
device; for data that fits in device memory that is all overhead. :class:`ResidentLoader` copies the tensors to
the device once, then each batch is one ``index_select`` per tensor *on the device*: no per-sample Python, no
per-batch host-to-device copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from tangtoc.data.checks import is_count
from tangtoc.device import DeviceLike, describe, resolve
from tangtoc.errors import DataTooLargeError
from tangtoc.move import pin, to_device

#: Share of the device's free memory the data set may take; the rest is left for the model, its gradients,
#: the optimizer state and the activations, which on a GPU usually need more than the data.
DEFAULT_MEMORY_FRACTION = 0.5


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(nbytes: int, free: int | None, device: torch.device, memory_fraction: float) -> None:
    """Raise :class:`DataTooLargeError` when ``nbytes`` exceed ``memory_fraction`` of ``free`` bytes.

    ``free=None`` (the free memory of the device is not known, e.g. MPS) passes: nothing to check against.
    """
    if free is None or nbytes <= free * memory_fraction:
        return
    raise DataTooLargeError(
        f"the data set needs {_gib(nbytes)} on {device}, but only {_gib(free * memory_fraction)} of its "
        f"{_gib(free)} free may be used (memory_fraction={memory_fraction}). Fix: keep the data on the CPU and "
        "stream it with `Prefetcher(DataLoader(dataset, batch_size=..., pin_memory=True), device)`, store it in a "
        "smaller dtype (e.g. uint8 tokens, float16 features), or load a subset."
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so that nearby pairs give unrelated streams; seed + epoch would make
    # (seed=0, epoch=1) replay (seed=1, epoch=0).
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def _check_shard(rank: int, world_size: int) -> None:
    if not (is_count(world_size, 1) and is_count(rank) and rank < world_size):
        raise ValueError(f"ResidentLoader: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")


class ResidentLoader:
    """Batches of ``tensors`` (same first dimension), shuffled and sliced on ``device``.

    Yields a tuple with one tensor per input tensor, e.g. ``(x, y)``. Iterating yields the rest of the current
    epoch, then moves on to the next one, so ``for epoch in range(3): for batch in loader:`` sees three
    epochs, each in its own order.

    Args:
        tensors: the data set, e.g. ``x, y``. Copied to ``device`` once (kept as is if already there).
        batch_size: samples per batch.
        shuffle: a new order every epoch, determined by ``(seed, epoch)`` alone. The permutation is drawn on
            the CPU, so the order is the same on every device, and copied to the device once per epoch (from
            pinned memory, without blocking).
        drop_last: drop the last batch of an epoch when it is smaller than ``batch_size``.
        device: where the data lives; ``None``/``"auto"`` for :func:`~tangtoc.device.pick_device`.
        seed: the shuffling seed, an int >= 0 (checked here, not at the first epoch).
        rank, world_size: this process's shard for distributed training (default: from ``torch.distributed``
            when it is initialised, else 0 and 1). Each rank takes every ``world_size``-th sample of the epoch's
            order; the ``len % world_size`` leftover samples are dropped so that every rank runs the same
            number of steps (an uneven count would hang the collectives).
        memory_fraction: the largest share of the device's free memory the data may take (see
            :func:`check_fits`); :class:`DataTooLargeError` says what to use instead when it does not fit.

    ``state_dict()``/``load_state_dict()`` save and restore the position (epoch and batch), so a resumed run
    continues with the batch that comes next.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        device: DeviceLike | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    ) -> None:
        if not tensors:
            raise ValueError("ResidentLoader needs at least one tensor, e.g. ResidentLoader(x, y, batch_size=64).")
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"ResidentLoader takes tensors; argument {i} is a {type(t).__name__}. "
                    "Convert it first with tt.as_tensor()."
                )
            if t.dim() == 0:
                raise ValueError(f"ResidentLoader: tensor {i} is 0-dimensional; samples are indexed on dimension 0.")
        sizes = [t.shape[0] for t in tensors]
        if len(set(sizes)) != 1:
            raise ValueError(f"ResidentLoader: the tensors must have the same first dimension, got sizes {sizes}.")
        if not is_count(batch_size, 1):
            raise ValueError(f"ResidentLoader: batch_size must be a positive int, got {batch_size!r}.")
        if not is_count(seed):
            # NumPy's SeedSequence takes only non-negative ints, and would refuse this at the first epoch.
            raise ValueError(
                f"ResidentLoader: seed must be an int >= 0, got {seed!r}. Fix: pass a non-negative int, e.g. seed=0."
            )
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"ResidentLoader: memory_fraction must be in (0, 1], got {memory_fraction!r}.")
        if rank is None or world_size is None:
            dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
            world_size = (
                world_size if world_size is not None else (torch.distributed.get_world_size() if dist_on else 1)
            )
        _check_shard(rank, world_size)  # before the data is copied anywhere
        self.device = resolve(device)
        moving = sum(t.numel() * t.element_size() for t in tensors if t.device != self.device)
        if moving:
            check_fits(moving, describe(self.device).free_memory, self.device, memory_fraction)
        self.tensors: tuple[torch.Tensor, ...] = tuple(to_device(t, self.device) for t in tensors)
        self.batch_size = int(batch_size)  # a NumPy int too: state_dict() holds plain ints
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)  # a NumPy int too; a plain int keeps state_dict() loadable with weights_only=True
        self.epoch = 0
        self.shard(rank, world_size)

    def shard(self, rank: int, world_size: int) -> None:
        """From now on yield only the share of rank ``rank`` of ``world_size`` (see the class docstring), from
        the start of the current epoch. :func:`~tangtoc.train.fit` calls it on a loader built before the
        process group existed, which therefore took the whole data set."""
        _check_shard(rank, world_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_samples = self.tensors[0].shape[0] // world_size  # samples this rank sees per epoch
        self.position = 0  # batches of the current epoch already yielded

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    @property
    def nbytes(self) -> int:
        """Bytes the data set takes on the device."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def _order(self, epoch: int) -> torch.Tensor | None:
        """This rank's sample indices for ``epoch``, on the device; ``None`` when plain slicing will do."""
        total = self.num_samples * self.world_size  # the leftover after an even split across ranks is dropped
        if self.shuffle:
            # Permute all samples, then cut: which ones are left over changes every epoch, so none is never seen.
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(self.tensors[0].shape[0], generator=g)[:total]
        elif self.world_size > 1:
            order = torch.arange(total)
        else:
            return None
        # Pinned, so the copy to a GPU is asynchronous: a new epoch does not stall the training loop.
        return to_device(pin(order[self.rank :: self.world_size]), self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch, order, bs, tensors = self.epoch, self._order(self.epoch), self.batch_size, self.tensors
        # Slices past the end are clamped, so the last, smaller batch needs no special case. Lists are built
        # inside tuple() because a generator expression costs a microsecond more per batch.
        for b in range(self.position, len(self)):
            if order is None:
                batch = tuple([t[b * bs : (b + 1) * bs] for t in tensors])  # views: no copy at all
            else:
                idx = order[b * bs : (b + 1) * bs]
                batch = tuple([t.index_select(0, idx) for t in tensors])
            self.position = b + 1
            yield batch
        self.epoch, self.position = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (what ``DistributedSampler.set_epoch`` does)."""
        if not is_count(epoch):
            raise ValueError(f"ResidentLoader.set_epoch: epoch must be an int >= 0, got {epoch!r}.")
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """The position and what it depends on, as plain ints (safe for ``torch.load(weights_only=True)``)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. Refuses a position saved for a different data set, seed, batch size
        or sharding, because the batches it points to would not be the ones that came next."""
        for key in ("seed", "batch_size", "num_samples", "rank", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"ResidentLoader.load_state_dict: the saved {key} is {state.get(key)!r} but this loader has "
                    f"{getattr(self, key)!r}; resuming would not continue the same sequence of batches. Build the "
                    "loader with the same data, seed, batch_size and sharding as the run that saved it."
                )
        position, epoch = state["position"], state["epoch"]
        if not is_count(position) or position > len(self):
            raise ValueError(f"ResidentLoader.load_state_dict: position {position!r} is not an int in 0..{len(self)}.")
        if not is_count(epoch):
            raise ValueError(f"ResidentLoader.load_state_dict: epoch {epoch!r} is not an int >= 0.")
        self.epoch, self.position = int(state["epoch"]), int(position)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in self.tensors)
        return (
            f"ResidentLoader({shapes}; batch_size={self.batch_size}, shuffle={self.shuffle}, device={self.device}, "
            f"epoch={self.epoch}, position={self.position}/{len(self)})"
        )

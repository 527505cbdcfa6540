"""Where fit() gets its batches: any iterable, cycled over epochs, moved to the device, with a position to save.

A loader with ``state_dict``/``load_state_dict`` (a :class:`~tangtoc.data.ResidentLoader`, torchdata's
``StatefulDataLoader``) saves and restores its own position. Any other iterable is resumed by counting: the
epoch and the number of batches consumed are saved, and on resume that many batches are drawn and dropped. That
reproduces the sequence exactly when the iterable yields the same batches each pass (a list, a loader without
shuffling, or one whose shuffling is seeded by the epoch); a ``DataLoader(shuffle=True)`` draws its order from
the global RNG when the pass begins, so its resumed order differs from an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from tangtoc.data.resident import ResidentLoader
from tangtoc.move import to_device


class BatchStream:
    """An endless stream of batches from ``data`` on ``device``."""

    def __init__(self, data: Iterable[Any], device: torch.device) -> None:
        self.data = data
        self.device = device
        self.stateful = callable(getattr(data, "state_dict", None)) and callable(getattr(data, "load_state_dict", None))
        # Batches of a ResidentLoader on this device are on it by construction; skipping the walk saves
        # microseconds per step, which is the whole budget of a tiny model.
        self.resident = isinstance(data, ResidentLoader) and data.device == device
        self.epoch = 0
        self.position = 0  # batches drawn in the current pass
        self._it: Iterator[Any] | None = None  # a pass positioned by load_state_dict, picked up by __iter__

    def __iter__(self) -> Iterator[Any]:
        """The endless stream. A generator, because resuming one costs less than a method call per batch."""
        device, resident = self.device, self.resident
        it, fresh = (self._it, False) if self._it is not None else (iter(self.data), True)
        self._it = None
        while True:
            produced = False
            for batch in it:
                produced = True
                self.position += 1
                yield batch if resident or _flat_on(batch, device) else to_device(batch, device)
            if fresh and not produced:
                raise ValueError(
                    f"fit: the data ({type(self.data).__name__}) yielded no batches. A generator can be consumed only "
                    "once; pass a list, a DataLoader or a ResidentLoader, which can be iterated again every epoch."
                )
            # A resumed pass may legitimately be empty (saved after its last batch); a new one may not.
            self.epoch, self.position = self.epoch + 1, 0
            it, fresh = iter(self.data), True

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "loader": self.data.state_dict() if self.stateful else None,  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.stateful and state.get("loader") is not None:
            self.data.load_state_dict(state["loader"])  # type: ignore[attr-defined]
            self._it = iter(self.data)  # starts at the restored position
            return
        self._it = iter(self.data)
        for _ in range(self.position):
            next(self._it)


def shard_resident(data: Any, rank: int, world_size: int, name: str) -> None:
    """Give a :class:`~tangtoc.data.ResidentLoader` built without a shard (it was made before the process group
    existed, so it took the whole data set) this rank's share, in place. A loader already sharded this way is
    left alone; one sharded for another rank or world size is refused. Other iterables are the caller's to shard
    (e.g. a ``DataLoader`` with a ``DistributedSampler``)."""
    if not isinstance(data, ResidentLoader) or (data.rank, data.world_size) == (rank, world_size):
        return
    if data.world_size != 1:
        raise ValueError(
            f"fit: {name} is a ResidentLoader for rank {data.rank} of {data.world_size}, but this process is rank "
            f"{rank} of {world_size}. Fix: build it without rank= and world_size=; fit() gives each rank its share."
        )
    data.shard(rank, world_size)


def _flat_on(batch: Any, device: torch.device) -> bool:
    """True for a tuple or list of tensors already on ``device``: the common batch, checked in a fraction of the
    time the general walk of :func:`~tangtoc.move.to_device` takes (which a tiny model's step would feel)."""
    if type(batch) is not tuple and type(batch) is not list:
        return False
    for t in batch:  # noqa: SIM110  # a plain loop: all() over a generator costs more than the check itself
        if type(t) is not torch.Tensor or t.device != device:
            return False
    return True

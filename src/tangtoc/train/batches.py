"""Where fit() gets its batches: any iterable, cycled over epochs, moved to the device, with a position to save;
and, under torchrun, each rank's share of them.

A loader with ``state_dict``/``load_state_dict`` (a :class:`~tangtoc.data.ResidentLoader`, torchdata's
``StatefulDataLoader``) saves and restores its own position. Any other iterable is resumed by counting: the
epoch and the number of batches consumed are saved, and on resume that many batches are drawn and dropped. That
reproduces the sequence exactly when the iterable yields the same batches each pass (a list, a loader without
shuffling, or one whose shuffling is seeded by the epoch, as a ``DistributedSampler`` is: its ``set_epoch`` is
called before every pass); a ``DataLoader(shuffle=True)`` in a single process draws its order from the global RNG
when the pass begins, so its resumed order differs from an uninterrupted run.

Splitting a ``DataLoader`` over the ranks follows Lightning's ``use_distributed_sampler`` (the loader made again
with a ``DistributedSampler``, ``set_epoch`` each epoch) rather than Accelerate's ``prepare`` (which wraps the
loader and also splits iterable data sets, by batch): a map-style data set with the default sampler is the case
that can be split without changing what a sample or a batch is; anything else is refused with the way to do it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

from tangtoc.data.resident import ResidentLoader
from tangtoc.move import to_device
from tangtoc.train.distributed import Distributed

#: What a DataLoader is made again with: every argument its constructor takes (in this torch version) except the
#: data set and what decides the order, read back from the attributes of the same names.
_KEPT = tuple(
    name
    for name in inspect.signature(DataLoader.__init__).parameters
    if name not in ("self", "dataset", "shuffle", "sampler", "batch_sampler")
)


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
        self._set_epoch = _epoch_setters(data)

    def _new_pass(self) -> Iterator[Any]:
        # A DistributedSampler shuffles by seed + epoch: without set_epoch every epoch repeats the first one's order.
        for set_epoch in self._set_epoch:
            set_epoch(self.epoch)
        return iter(self.data)

    def __iter__(self) -> Iterator[Any]:
        """The endless stream. A generator, because resuming one costs less than a method call per batch."""
        device, resident = self.device, self.resident
        it, fresh = (self._it, False) if self._it is not None else (self._new_pass(), True)
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
            it, fresh = self._new_pass(), True

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
            self._it = self._new_pass()  # starts at the restored position
            return
        self._it = self._new_pass()
        for _ in range(self.position):
            next(self._it)


def _epoch_setters(data: Iterable[Any]) -> list[Callable[[int], None]]:
    """The ``set_epoch`` of a ``DataLoader``'s sampler and batch sampler (and the sampler inside that), each once.
    Not the data's own: a :class:`~tangtoc.data.ResidentLoader`'s also rewinds it, and it keeps its epoch itself."""
    batch_sampler = getattr(data, "batch_sampler", None)
    found: dict[int, Callable[[int], None]] = {}
    for obj in (getattr(data, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        set_epoch = getattr(obj, "set_epoch", None)
        if callable(set_epoch):
            found.setdefault(id(obj), set_epoch)
    return list(found.values())


def shard_data(data: Iterable[Any], parallel: Distributed, name: str) -> Iterable[Any]:
    """This rank's share of ``data`` (fit's ``shard_data=True``): a :class:`~tangtoc.data.ResidentLoader` sharded in
    place, a ``DataLoader`` made again with a ``DistributedSampler`` (:func:`with_distributed_sampler`, the shuffle
    seed agreed on by the ranks: rank 0's), anything else as it is. Every rank must call it (it may all-gather)."""
    if isinstance(data, ResidentLoader):
        shard_resident(data, parallel.rank, parallel.world_size, name)
        return data
    if not isinstance(data, DataLoader):
        return data
    seed = parallel.all_gather(shuffle_seed(data))[0]
    return with_distributed_sampler(data, parallel.rank, parallel.world_size, name, seed)


def shuffle_seed(loader: DataLoader) -> int:
    """The seed a ``DistributedSampler`` made for ``loader`` shuffles with: its ``generator``'s, else 0 (as
    ``DistributedSampler`` and Lightning default to)."""
    generator = getattr(loader.sampler, "generator", None)
    return generator.initial_seed() if isinstance(generator, torch.Generator) else 0


def with_distributed_sampler(loader: DataLoader, rank: int, world_size: int, name: str, seed: int) -> DataLoader:
    """``loader`` yielding only rank ``rank``'s share of its data set: the same loader, made again with a
    ``DistributedSampler`` (shuffling as the loader did, with ``seed``; ``drop_last`` passed on, so that the ranks'
    samples are disjoint when it is set, and the ones left over are repeated to even the ranks out otherwise), and
    every other argument it was made with. A loader that has a ``DistributedSampler`` for this rank already is
    returned as it is; one that cannot be split safely is refused, saying how to do it."""
    sampler = loader.sampler
    fix = (
        f"Fix: build it with sampler=DistributedSampler(dataset, shuffle=...) (and no shuffle=) and call "
        f"sampler.set_epoch(epoch) each epoch, or make {name} yield only this rank's share and pass shard_data=False."
    )
    if isinstance(sampler, DistributedSampler):
        if (sampler.rank, sampler.num_replicas) != (rank, world_size):
            raise ValueError(
                f"fit: {name}'s DistributedSampler is for rank {sampler.rank} of {sampler.num_replicas}, but this "
                f"process is rank {rank} of {world_size}. Fix: build it after the process group exists, without "
                "num_replicas= and rank=, or let fit() add it: a DataLoader without a sampler is split for you."
            )
        return loader
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            f"fit: {name} is a DataLoader over an IterableDataset ({type(loader.dataset).__name__}), which no "
            f"sampler can split, so every one of the {world_size} ranks would train on the same samples. Fix: make "
            "the data set yield only this rank's share (e.g. every world_size-th sample, from "
            "torch.distributed.get_rank(), and split again by torch.utils.data.get_worker_info() with workers) and "
            "pass shard_data=False, or use a map-style data set (__getitem__ and __len__), which fit() splits."
        )
    custom = None
    if type(loader) is not DataLoader:
        custom = f"a {type(loader).__name__}, a DataLoader subclass, which cannot be made again faithfully"
    elif loader.batch_size is None and loader.batch_sampler is not None:  # batch_sampler= was given
        custom = f"a DataLoader with its own batch_sampler ({type(loader.batch_sampler).__name__})"
    elif type(sampler) not in (RandomSampler, SequentialSampler) or (
        isinstance(sampler, RandomSampler) and (sampler.replacement or sampler.num_samples != len(loader.dataset))
    ):
        custom = f"a DataLoader with its own sampler ({type(sampler).__name__})"
    if custom is not None:
        raise ValueError(
            f"fit: {name} is {custom}; under torchrun every one of the {world_size} ranks would train on the "
            f"same batches, and fit() splits only a DataLoader with the default sampler. {fix}"
        )
    distributed = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(loader.dataset, sampler=distributed, **{k: getattr(loader, k) for k in _KEPT})


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

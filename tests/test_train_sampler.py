"""Under torchrun, fit() splits a DataLoader over the ranks (tangtoc.train.batches): made again with a
DistributedSampler when that is safe, refused with the fix when not, ``set_epoch`` before every pass. The pieces
in one process, and a real launch of 2 gloo ranks (tests/distributed_worker.py's ``run_sampler``)."""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from tangtoc.train import fit
from tangtoc.train.batches import BatchStream, shuffle_seed, with_distributed_sampler
from test_train_distributed import _launch, _ok

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test

DEVICE = torch.device("cpu")


def _ids(n: int = 24) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def _collate(samples: list[tuple[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([s[0] for s in samples])


def _flat(batches: Iterator[Any], n: int) -> list[int]:
    return [int(v) for batch in islice(batches, n) for v in batch]


def test_the_loader_is_made_again_with_a_distributed_sampler_and_every_other_setting_kept() -> None:
    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(_ids(), batch_size=4, shuffle=True, collate_fn=_collate, num_workers=2, prefetch_factor=3,
                        pin_memory=True, drop_last=True, generator=generator, timeout=30)  # fmt: skip
    assert shuffle_seed(loader) == 7
    made = with_distributed_sampler(loader, 1, 2, "data", seed=7)
    sampler = made.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.rank, sampler.num_replicas, sampler.shuffle, sampler.seed) == (1, 2, True, 7)
    assert sampler.drop_last  # the loader's: the samples left over are dropped, not repeated on another rank
    assert made.dataset is loader.dataset and made.collate_fn is _collate and made.generator is generator
    assert (made.batch_size, made.num_workers, made.prefetch_factor, made.pin_memory, made.drop_last, made.timeout) == (
        4, 2, 3, True, True, 30)  # fmt: skip
    in_order = DataLoader(_ids(), batch_size=None)  # no shuffle, no batching: one sample at a time, in order
    assert shuffle_seed(in_order) == 0
    made = with_distributed_sampler(in_order, 0, 2, "data", seed=0)
    assert made.batch_size is None and not made.sampler.shuffle  # type: ignore[attr-defined]
    assert [int(s[0]) for s in made] == list(range(0, 24, 2))


def test_ranks_see_disjoint_samples_each_epoch_in_a_new_order_and_resume_the_same_batches() -> None:
    loader = DataLoader(_ids(), batch_size=3, shuffle=True, collate_fn=_collate)
    streams = [BatchStream(with_distributed_sampler(loader, r, 2, "data", seed=0), DEVICE) for r in (0, 1)]
    seen = [_flat(iter(s), 8) for s in streams]  # 2 epochs of 4 batches of 3 per rank
    for epoch in (slice(0, 12), slice(12, 24)):
        assert sorted(seen[0][epoch] + seen[1][epoch]) == list(range(24))  # disjoint, and all of them
    assert seen[0][:12] != seen[0][12:]  # set_epoch: a new order in the second epoch
    resumed = BatchStream(with_distributed_sampler(loader, 0, 2, "data", seed=0), DEVICE)
    resumed.load_state_dict({"epoch": 1, "position": 2, "loader": None})  # a checkpoint 2 batches into epoch 1
    assert _flat(iter(resumed), 2) == seen[0][18:24]


class _Stream(IterableDataset):
    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.arange(6))


class _MyLoader(DataLoader):
    pass


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (DataLoader(_Stream(), batch_size=2), r"data is a DataLoader over an IterableDataset \(_Stream\), which no "
         r"sampler can split, so every one of the 2 ranks would train on the same samples\. Fix: make the data set "
         r"yield only this rank's share .* and pass shard_data=False, or use a map-style data set"),
        (DataLoader(_ids(), batch_size=2, sampler=SubsetRandomSampler(range(10))), r"data is a DataLoader with its "
         r"own sampler \(SubsetRandomSampler\); under torchrun every one of the 2 ranks would train on the same "
         r"batches.* Fix: build it with sampler=DistributedSampler\(dataset, shuffle=\.\.\.\)"),
        (DataLoader(_ids(), batch_sampler=BatchSampler(SequentialSampler(range(24)), 4, False)), r"its own "
         r"batch_sampler \(BatchSampler\)"),
        (DataLoader(_ids(), batch_size=2, sampler=torch.utils.data.RandomSampler(range(24), replacement=True)),
         r"its own sampler \(RandomSampler\)"),
        (_MyLoader(_ids(), batch_size=2), r"a _MyLoader, a DataLoader subclass, which cannot be made again faithfully"),
        (DataLoader(_ids(), sampler=DistributedSampler(_ids(), num_replicas=4, rank=3)), r"data's DistributedSampler "
         r"is for rank 3 of 4, but this process is rank 1 of 2\. Fix: build it after the process group exists"),
    ],
    ids=["iterable", "sampler", "batch_sampler", "with_replacement", "subclass", "other_rank"],
)  # fmt: skip
def test_a_loader_that_cannot_be_split_safely_is_refused_with_the_fix(loader: DataLoader, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with_distributed_sampler(loader, 1, 2, "data", seed=0)


def test_a_loader_with_this_ranks_distributed_sampler_is_kept_and_its_epoch_set() -> None:
    sampler = DistributedSampler(_ids(), num_replicas=2, rank=1, shuffle=True)
    loader = DataLoader(_ids(), batch_size=4, sampler=sampler, collate_fn=_collate)
    assert with_distributed_sampler(loader, 1, 2, "data", seed=0) is loader
    stream = iter(BatchStream(loader, DEVICE))
    _flat(stream, 4)  # the 3 batches of epoch 0, and the first of epoch 1
    assert sampler.epoch == 1


def test_shard_data_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match=r"fit: shard_data must be True or False, got 'no'\."):
        fit(torch.nn.Linear(1, 1), [torch.ones(1)], steps=1, shard_data="no", progress=False)  # type: ignore[arg-type]


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and hasattr(signal, "SIGKILL")),
    reason="needs torch.distributed with gloo and POSIX signals",
)
def test_two_ranks_train_on_disjoint_samples_and_an_iterable_dataset_is_refused() -> None:
    code = "import distributed_worker; distributed_worker.run_sampler()"
    out = _ok(_launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "--no-python", sys.executable, "-c", code]))  # fmt: skip
    # By pattern, not by line: the two ranks' prints share one pipe, and a newline may land after the other's text.
    saw = {int(rank): json.loads(found) for rank, found in re.findall(r"rank (\d) saw (\{[^}]*\})", out)}
    assert sorted(saw) == [0, 1]
    assert saw[0]["steps"] == saw[1]["steps"] == 8  # epochs=2 of each rank's 4 batches of 3: half the data set
    assert saw[0]["last_lr"] == pytest.approx(1e-4)  # warmup_cosine's floor (0.1 x AdamW's 1e-3) at the 8th step
    for epoch in (0, 1):
        rank_0, rank_1 = saw[0]["epochs"][epoch], saw[1]["epochs"][epoch]
        assert not set(rank_0) & set(rank_1) and sorted(rank_0 + rank_1) == list(range(24))
    assert saw[0]["epochs"][0] != saw[0]["epochs"][1]  # reshuffled each epoch (set_epoch)
    for rank in (0, 1):
        assert f"rank {rank} refused: fit: data is a DataLoader over an IterableDataset (Stream)" in out
    assert "Fix: make the data set yield only this rank's share" in out and "pass shard_data=False" in out

"""Batches/s of ``ResidentLoader`` vs torch ``DataLoader`` (0 and 2 workers) vs raw tensor indexing, on
in-memory data.

The data set: 65,536 samples of 32 float32 features and an int64 label (8.3 MiB), on the CPU; batch 256,
shuffled every epoch. The contenders produce the same batches (shape and dtype checked first):

* raw indexing: ``perm = torch.randperm(n)``, then ``x[idx], y[idx]`` per batch: no abstraction, the way
  it is usually written (the issue's baseline);
* the same with ``x.index_select(0, idx)``, the gather ResidentLoader itself uses: the true floor;
* ``ResidentLoader(x, y, batch_size=256)``: the same work behind tangtoc's loader (shuffle by (seed, epoch),
  position tracking, sharding);
* ``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)``: per-sample ``__getitem__`` and collate,
  with 0 workers and with 2 persistent workers.

Time per epoch: each round times every contender over enough whole epochs to last about ``--min-time`` seconds,
in rotating order; rates relative to raw indexing are the median of the ratios within each round. 1 torch
thread in the main process.

Run:  python benchmarks/loader_overhead.py [--rounds N] [--min-time S] [--json PATH]
It is a measurement: it exits 0 whether or not the goal is met, and prints the verdict as measured.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from _train_bench import Goal, metadata, print_report, summarise, wall, write_json
from tangtoc.data import ResidentLoader

RAW, SELECT, RESIDENT = "raw indexing x[idx]", "raw x.index_select(0, idx)", "tangtoc ResidentLoader"
DL0, DL2 = "DataLoader, 0 workers", "DataLoader, 2 workers"
N, FEATURES, BATCH = 65_536, 32, 256
GOAL = 0.9


def raw_batches(x: torch.Tensor, y: torch.Tensor, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(0, x.shape[0], BATCH):
        idx = perm[i : i + BATCH]
        yield x[idx], y[idx]


def selected_batches(x: torch.Tensor, y: torch.Tensor, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(0, x.shape[0], BATCH):
        idx = perm[i : i + BATCH]
        yield x.index_select(0, idx), y.index_select(0, idx)


def make_epochs(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], Iterable]]:
    """Per contender: a function returning an iterable over one epoch."""
    resident = ResidentLoader(x, y, batch_size=BATCH, device="cpu")
    dataset = TensorDataset(x, y)
    dl0 = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
    dl2 = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
    counter = iter(range(1 << 30))
    return {
        RAW: lambda: raw_batches(x, y, next(counter)),
        SELECT: lambda: selected_batches(x, y, next(counter)),
        RESIDENT: lambda: resident,  # each iteration of a ResidentLoader is the next epoch
        DL0: lambda: dl0,
        DL2: lambda: dl2,
    }


def consume(epoch: Iterable) -> int:
    n = 0
    for _ in epoch:
        n += 1
    return n


def check(epochs: dict[str, Callable[[], Iterable]]) -> None:
    """Every contender yields the same number of batches, of the same shapes and dtypes, covering every sample."""
    expected = math.ceil(N / BATCH)
    for name, make in epochs.items():
        batches = list(make())
        assert len(batches) == expected, f"{name}: {len(batches)} batches, expected {expected}"
        xb, yb = batches[0]
        assert xb.shape == (BATCH, FEATURES) and xb.dtype == torch.float32 and yb.dtype == torch.int64, name
        ids = torch.cat([b[0][:, 0] for b in batches])
        assert ids.numel() == N and torch.unique(ids).numel() == N, f"{name}: not every sample once"


def rounds_per_epoch(epochs: dict[str, Callable[[], Iterable]], rounds: int, min_time: float) -> dict[str, list[float]]:
    names = list(epochs)
    per_call = {name: max(1, math.ceil(min_time / wall(lambda m=make: consume(m())))) for name, make in epochs.items()}
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            make, count = epochs[name], per_call[name]

            def run(make: Callable[[], Iterable] = make, count: int = count) -> None:
                for _ in range(count):
                    consume(make())

            out[name].append(wall(run) / count)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timing, whole epochs (default 0.3)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.min_time <= 0:
        p.error("need --rounds >= 1 and --min-time > 0")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    x[:, 0] = torch.arange(N, dtype=torch.float32)  # a sample id, for the coverage check
    y = torch.randint(0, 10, (N,), generator=g)
    epochs = make_epochs(x, y)
    check(epochs)
    times = rounds_per_epoch(epochs, args.rounds, args.min_time)
    summaries = summarise(times, RAW)
    res, select = summaries[RESIDENT], summaries[SELECT]
    dl_worst = min(summaries[DL0].ratio, summaries[DL2].ratio)
    goals = [
        Goal(
            f"ResidentLoader ≥ {GOAL}× raw indexing",
            res.ratio >= GOAL,
            f"{res.ratio:.3f}× (rounds: {res.ratio_min:.3f}–{res.ratio_max:.3f}×); against the same gather by hand "
            f"(index_select) {res.ratio / select.ratio:.3f}×; the slower DataLoader runs at {dl_worst:.3f}× "
            f"({1 / dl_worst:.0f}× slower than indexing)",
        )
    ]
    meta = metadata(rounds=args.rounds, min_time_s=args.min_time, samples=N, features=FEATURES, batch=BATCH)
    title = f"Time per epoch ({N:,} samples, batch {BATCH}, shuffled), CPU, in-memory tensors"
    print_report(title, "time / epoch", summaries, RAW, goals, meta)
    batches_per_s = {name: math.ceil(N / BATCH) / s.median_s for name, s in summaries.items()}
    write_json(args.json, meta, summaries, goals, batches_per_s=batches_per_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the distributed tests run on every rank, under ``python -m torch.distributed.run --nproc-per-node 2``.

Not a test module: ``tests/test_train_distributed.py`` launches it (and imports its model and data builders for
the single-process reference runs). Each scenario prints one ``rank R ...`` line per event the test checks.

    mlp  CKPT STRATEGY STEPS GRAD_ACCUM BATCH
                                          a 2-layer MLP, no dropout, AdamW, BATCH samples per micro-batch and
                                          rank (compared with one process)
    gpt  CKPT STEPS SIGTERM_AT            a tiny GPT with dropout; rank 1 sends itself SIGTERM after log step
                                          SIGTERM_AT (0: never)
    fail                                  rank 1 raises at step 2 while rank 0 goes on
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn
from torch.nn import functional as F

from tangtoc.data import ResidentLoader, stdlib_corpus, synthetic_classification
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.train import FitEvent, fit

MLP_SAMPLES = 96  # divisible by every global batch the tests use
LR = 1e-2


def mlp_model() -> MLP:
    torch.manual_seed(0)
    return MLP(MLPConfig(in_features=8, hidden=16, out_features=3, depth=1))


def mlp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_classification(MLP_SAMPLES, features=8, classes=3, seed=0)


def adamw(params: object) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR)  # type: ignore[arg-type]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(event: FitEvent) -> None:
    if event.kind == "checkpoint":
        print(f"rank {event.rank} checkpoint {event.step}", flush=True)
    if event.kind == "end":
        print(f"rank {event.rank} end {event.step}", flush=True)


def run_mlp(ckpt: str, strategy: str, steps: int, grad_accum: int, per_rank_batch: int) -> None:
    x, y = mlp_data()
    loader = ResidentLoader(x, y, batch_size=per_rank_batch, seed=1, device="cpu")  # sharded by fit()
    fit(mlp_model(), loader, optimizer=adamw, loss_fn=F.cross_entropy, steps=steps, grad_accum=grad_accum,
        log_every=2, checkpoint_dir=ckpt, progress=False, strategy=strategy, callbacks=[_say])  # fmt: skip


def gpt_model() -> nn.Module:
    torch.manual_seed(0)
    return GPT(gpt_config("tiny", dropout=0.1))


def run_gpt(ckpt: str, steps: int, sigterm_at: int) -> None:
    x, y = stdlib_corpus(max_bytes=1_000).windows(gpt_model().config.block_size)  # type: ignore[union-attr]
    loader = ResidentLoader(x, y, batch_size=3, seed=1, device="cpu")

    def preempt_rank_1(event: FitEvent) -> None:
        _say(event)
        if event.kind == "log" and event.step == sigterm_at and event.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this rank only

    fit(gpt_model(), loader, steps=steps, log_every=2, checkpoint_dir=ckpt, progress=False,
        callbacks=[preempt_rank_1])  # fmt: skip


def run_failing() -> None:
    x, y = mlp_data()

    def fail_on_rank_1(event: FitEvent) -> None:
        if event.rank == 1 and event.step == 2:
            raise RuntimeError("rank 1 failed on purpose at step 2")

    fit(mlp_model(), ResidentLoader(x, y, batch_size=4, device="cpu"), loss_fn=F.cross_entropy, steps=1_000_000,
        log_every=1, progress=False, callbacks=[fail_on_rank_1], dist_timeout_s=60)  # fmt: skip


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    kind, *rest = argv
    if kind == "mlp":
        ckpt, strategy, steps, accum, batch = rest
        run_mlp(ckpt, strategy, int(steps), int(accum), int(batch))
    elif kind == "gpt":
        ckpt, steps, sigterm_at = rest
        run_gpt(ckpt, int(steps), int(sigterm_at))
    elif kind == "fail":
        run_failing()
    else:
        raise SystemExit(f"unknown scenario {kind!r}")
    print(f"rank {_rank()} returned", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])


def run_sampler() -> None:
    """DataLoaders under 2 ranks (launched as ``python -c "...run_sampler()"``, not through main(), so that it
    needs no scenario there): one over a map-style data set with shuffle=True, trained for 2 epochs with a
    warmup_cosine, printing ``rank R saw {json}`` (the sample ids of each epoch, the steps, the last learning rate);
    then one over an IterableDataset, printing ``rank R refused: <fit's message>``. One process group for both fits
    (made here, so fit() leaves it alone)."""
    import json

    import torch.distributed as dist
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from tangtoc.train.schedule import warmup_cosine

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(1, 3)
            self.seen: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen += [int(v) for v in x[:, 0].tolist()]  # the sample ids this rank trains on
            return self.linear(x)

    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([(torch.ones(1), torch.tensor(0))] * 6)

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        ids = torch.arange(24, dtype=torch.float32)[:, None]
        data = TensorDataset(ids, torch.zeros(24, dtype=torch.long))
        loader = DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(5))
        model = Recorder()
        result = fit(model, loader, loss_fn=F.cross_entropy, epochs=2, scheduler=warmup_cosine(2), progress=False,
                     device="cpu")  # fmt: skip
        epochs = [model.seen[:12], model.seen[12:]]
        last_lr = result.history[-1]["lr"]  # the cosine's floor if it ends with the run's steps, as sharded
        print(f"rank {rank} saw {json.dumps({'epochs': epochs, 'steps': result.step, 'last_lr': last_lr})}", flush=True)
        try:
            fit(Recorder(), DataLoader(Stream(), batch_size=3), loss_fn=F.cross_entropy, steps=2, progress=False,
                device="cpu")  # fmt: skip
        except ValueError as e:
            print(f"rank {rank} refused: {e}", flush=True)
    finally:
        dist.destroy_process_group()

"""Steps/s of ``tangtoc.fit()`` vs a plain PyTorch loop vs Accelerate vs Lightning Fabric vs the Lightning Trainer.

The model is tiny on purpose (the ``tiny`` MLP: 32 -> 32 -> 10, batch 64, AdamW) so that a step costs tens to
hundreds of microseconds and a loop's own overhead is what is measured. CPU, 1 torch thread.

Every contender trains the same model from the same initial weights on the same 100 batches (CPU tensors, in
a list; the Trainer, which takes only DataLoaders, gets them through ``DataLoader(batch_size=None)``, which
hands each batch over unchanged), with the same AdamW, the same ``.to(device)`` of each batch, and the same
logging cadence: the loss is read on the host once every 100 steps (``fit(log_every=100)``). Before anything
is timed, each contender's parameters after 30 steps are checked against the plain loop's.

Per-step time of a contender = (T(long) - T(short)) / (long - short), T(n) being a complete run of n steps from
a fresh model: set-up and start-up (large for the Trainer) cancel. Rounds run every contender once, in rotating
order; rates relative to the plain loop are the median of the ratios measured within each round.

Run:  python benchmarks/loop_overhead.py [--rounds N] [--short S] [--long L] [--json PATH]
It is a measurement: it exits 0 whether or not the goals are met, and prints the verdict as measured.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from _train_bench import (
    Goal,
    RunFn,
    assert_same_parameters,
    metadata,
    per_step_rounds,
    print_report,
    summarise,
    write_json,
)
from tangtoc.models import MLP, mlp_config
from tangtoc.train import fit

FIT, PLAIN, ACCELERATE, FABRIC, TRAINER = (
    "tangtoc.fit",
    "plain loop",
    "accelerate",
    "lightning Fabric",
    "lightning Trainer",
)
FIT_GOAL = 0.97
LOG_EVERY = 100
BATCH, N_BATCHES = 64, 100
DEVICE = torch.device("cpu")


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(BATCH, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(N_BATCHES)
    ]


def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = MLP(mlp_config("tiny"))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def plain(batches: list) -> RunFn:
    def run(steps: int) -> nn.Module:
        model, opt = fresh()
        for step in range(steps):
            x, y = batches[step % N_BATCHES]
            x, y = x.to(DEVICE), y.to(DEVICE)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % LOG_EVERY == 0:
                loss.item()
        return model

    return run


def tangtoc_fit(batches: list) -> RunFn:
    def run(steps: int) -> nn.Module:
        model, opt = fresh()
        fit(model, batches, optimizer=opt, loss_fn=F.cross_entropy, steps=steps, log_every=LOG_EVERY, device=DEVICE,
            progress=False)  # fmt: skip
        return model

    return run


def accelerate(batches: list) -> RunFn:
    from accelerate import Accelerator

    def run(steps: int) -> nn.Module:
        accelerator = Accelerator(cpu=True)
        model, opt = fresh()
        model, opt = accelerator.prepare(model, opt)
        for step in range(steps):
            x, y = batches[step % N_BATCHES]
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            if (step + 1) % LOG_EVERY == 0:
                loss.item()
        return accelerator.unwrap_model(model)

    return run


def fabric(batches: list) -> RunFn:
    import lightning as L

    def run(steps: int) -> nn.Module:
        fab = L.Fabric(accelerator="cpu", devices=1)
        model, opt = fresh()
        wrapped, opt = fab.setup(model, opt)
        for step in range(steps):
            x, y = batches[step % N_BATCHES]
            x, y = x.to(fab.device), y.to(fab.device)
            loss = F.cross_entropy(wrapped(x), y)
            opt.zero_grad(set_to_none=True)
            fab.backward(loss)
            opt.step()
            if (step + 1) % LOG_EVERY == 0:
                loss.item()
        return model

    return run


def trainer(batches: list) -> RunFn:
    import lightning as L
    from torch.utils.data import DataLoader

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.opt = fresh()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return self.opt

    loader = DataLoader(batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]  # each item is a batch

    def run(steps: int) -> nn.Module:
        module = Module()
        t = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      log_every_n_steps=LOG_EVERY)  # fmt: skip
        t.fit(module, train_dataloaders=loader)
        return module.model

    return run


def load_contenders(batches: list) -> tuple[dict[str, RunFn], dict[str, str]]:
    contenders: dict[str, RunFn] = {PLAIN: plain(batches), FIT: tangtoc_fit(batches)}
    skipped: dict[str, str] = {}
    for name, make in ((ACCELERATE, accelerate), (FABRIC, fabric), (TRAINER, trainer)):
        try:
            contenders[name] = make(batches)
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
    return contenders, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--short", type=int, default=200, help="steps of the short run (default 200)")
    p.add_argument("--long", type=int, default=1200, help="steps of the long run (default 1200)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0 < args.short < args.long:
        p.error("need --rounds >= 1 and 0 < --short < --long")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the frameworks' advice about workers and loggers is not the subject
    batches = make_batches()
    contenders, skipped = load_contenders(batches)
    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import, which sets them to INFO
        logging.getLogger(name).setLevel(logging.ERROR)
    reference = contenders[PLAIN](30)
    for name, run in contenders.items():
        assert_same_parameters(reference, run(30), name)

    times = per_step_rounds(contenders, args.short, args.long, args.rounds)
    summaries = summarise(times, PLAIN)
    fit_s = summaries[FIT]
    goals = [
        Goal(
            f"fit() ≥ {FIT_GOAL}× the plain loop's steps/s",
            fit_s.ratio >= FIT_GOAL,
            f"{fit_s.ratio:.3f}× (rounds: {fit_s.ratio_min:.3f}–{fit_s.ratio_max:.3f}×)",
        )
    ]
    for name in (ACCELERATE, FABRIC, TRAINER):
        if name in skipped:
            goals.append(Goal(f"fit() ahead of {name}", None, skipped[name]))
            continue
        other = summaries[name]
        ahead = sum(a < b for a, b in zip(fit_s.rounds, other.rounds, strict=True))
        goals.append(
            Goal(
                f"fit() ahead of {name}",
                fit_s.ratio > other.ratio,
                f"fit {fit_s.ratio:.3f}× vs {name} {other.ratio:.3f}× of the plain loop; ahead in {ahead}/"
                f"{len(fit_s.rounds)} rounds",
            )
        )
    meta = metadata(rounds=args.rounds, short_steps=args.short, long_steps=args.long, batch=BATCH, model="MLP tiny")
    title = f"Per-step time, tiny MLP (batch {BATCH}, AdamW), CPU, 1 thread; T({args.long}) − T({args.short}) steps"
    print_report(title, "time / step", summaries, PLAIN, goals, meta)
    write_json(args.json, meta, summaries, goals, skipped=skipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

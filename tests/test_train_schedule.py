"""fit's learning-rate schedule (tangtoc.train.schedule): once per optimizer step, the logged rate is the one its step
used, saved and resumed exactly, a scheduler on another optimizer refused, and `tangtoc train --warmup`."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau, StepLR

from tangtoc.cli import main
from tangtoc.data import ResidentLoader, synthetic_classification
from tangtoc.models import MLP, MLPConfig
from tangtoc.train import CheckpointError, FitEvent, fit, load_checkpoint
from tangtoc.train.schedule import warmup_cosine

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test

QUIET = {"progress": False, "device": "cpu", "log_dir": None}


class Slope(nn.Module):
    """loss = w: its gradient is 1, so plain SGD moves w by exactly the learning rate of each step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w + 0 * x.sum()


def _train_lrs(history: list[dict]) -> list[float]:
    return [r["lr"] for r in history if r["kind"] == "train"]


def test_warmup_rises_from_the_first_step_and_the_cosine_ends_at_the_floor_on_the_last() -> None:
    schedule = warmup_cosine(4, total_steps=10, min_lr_ratio=0.1)
    factors = [schedule.factor(step) for step in range(1, 13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]  # step 1 already learns (no warmup from 0)
    decay = factors[4:10]
    assert all(a > b for a, b in itertools.pairwise(decay)) and decay[0] < 1.0
    assert factors[9:] == pytest.approx([0.1, 0.1, 0.1])  # the floor at the last step, and after it
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert warmup_cosine(0, total_steps=4, min_lr_ratio=0.0).factor(4) == 0.0  # the cosine only
    assert warmup_cosine(3, total_steps=3).factor(3) == 1.0  # all warmup: no division by an empty decay


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1,), r"warmup_steps must be an int >= 0, got -1"),
        ((2, 0), r"total_steps must be an int >= 1 or None, got 0"),
        ((2, 10, 1.5), r"min_lr_ratio must be a number in \[0, 1\], got 1.5"),
        ((11, 10), r"warmup_steps=11 is more than total_steps=10: the run would end before reaching its learning"),
    ],
)
def test_warmup_cosine_refuses_settings_that_cannot_work(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        warmup_cosine(*args)


def test_without_total_steps_only_fit_can_build_it() -> None:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(ValueError, match=r"total_steps is None, which only fit\(\) can fill in"):
        warmup_cosine(2)(optimizer)
    built = warmup_cosine(2, total_steps=5)(optimizer)
    assert isinstance(built, LambdaLR) and optimizer.param_groups[0]["lr"] == 0.5  # step 1's rate, set at once


def test_stepped_once_per_optimizer_step_under_grad_accum_and_the_logged_lr_is_the_one_used() -> None:
    model = Slope()
    schedule = warmup_cosine(2)  # over the run's own 6 steps
    seen: list[float] = []
    fit(model, [torch.ones(1)], optimizer=torch.optim.SGD(model.parameters(), lr=1.0), scheduler=schedule, steps=6,
        grad_accum=3, log_every=1, callbacks=[lambda e: seen.append(model.w.item()) if e.kind == "log" else None],
        **QUIET)  # fmt: skip
    expected = [warmup_cosine(2, 6).factor(k) for k in range(1, 7)]
    moved = [-(b - a) for a, b in zip([0.0, *seen], seen, strict=False)]  # what each step really applied
    assert moved == pytest.approx(expected)  # per batch, the warmup would be over after the first step
    result = fit(Slope(), [torch.ones(1)], optimizer=None, scheduler=schedule, steps=6, grad_accum=3, log_every=1,
                 **QUIET)  # fmt: skip
    assert _train_lrs(result.history) == pytest.approx([1e-3 * f for f in expected])  # AdamW's default lr, scheduled


def test_a_torch_scheduler_instance_or_factory_follows_torch_own_sequence() -> None:
    def reference(steps: int) -> list[float]:
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.5)
        sched = CosineAnnealingLR(opt, T_max=steps)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    model = Slope()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    run = fit(model, [torch.ones(1)], optimizer=opt, scheduler=CosineAnnealingLR(opt, T_max=5), steps=5, log_every=1,
              **QUIET)  # fmt: skip
    assert _train_lrs(run.history) == pytest.approx(reference(5))
    run = fit(Slope(), [torch.ones(1)], optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
              scheduler=lambda o: CosineAnnealingLR(o, T_max=5), steps=5, log_every=1, **QUIET)  # fmt: skip
    assert _train_lrs(run.history) == pytest.approx(reference(5))


def test_a_skipped_step_still_advances_the_schedule_without_torch_order_warning() -> None:
    model = Slope()
    batches = [torch.full((1,), float("nan")), torch.ones(1), torch.ones(1), torch.ones(1)]  # step 1's loss: NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" would fail here
        run = fit(model, batches, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), scheduler=warmup_cosine(2),
                  steps=4, log_every=1, on_nonfinite="skip", **QUIET)  # fmt: skip
    assert run.skipped_steps == 1
    assert _train_lrs(run.history) == pytest.approx([warmup_cosine(2, 4).factor(k) for k in range(1, 5)])


class Stop(Exception):
    pass


def _mlp_run(directory: Path, stop_at: int | None = None) -> tuple[MLP, list[float]]:
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3))
    x, y = synthetic_classification(60, features=8, classes=3)
    loader = ResidentLoader(x, y, batch_size=16, seed=2, device="cpu")  # 4 batches a pass: crosses epochs

    def crash(event: FitEvent) -> None:
        if event.kind == "log" and event.step == stop_at:
            raise Stop  # a crash after step 6's log point: the newest checkpoint is step 4's

    with contextlib.suppress(Stop):
        fit(model, loader, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.AdamW(p, lr=0.01),
            scheduler=warmup_cosine(3), steps=10, log_every=1, checkpoint_dir=directory, checkpoint_every=4,
            callbacks=[crash], progress=False, device="cpu")  # fmt: skip
    lrs = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return model, [r["lr"] for r in lrs if r["kind"] == "train"]


def test_a_run_stopped_and_resumed_gives_the_same_lrs_and_bitwise_the_same_weights(tmp_path: Path) -> None:
    straight, straight_lrs = _mlp_run(tmp_path / "straight")
    _, partial = _mlp_run(tmp_path / "split", stop_at=6)
    assert len(partial) == 6
    resumed, resumed_lrs = _mlp_run(tmp_path / "split")  # from step 4's checkpoint
    assert resumed_lrs == straight_lrs == pytest.approx([warmup_cosine(3, 10).factor(k) * 0.01 for k in range(1, 11)])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved = load_checkpoint(tmp_path / "split" / "step-00000008.pt")["scheduler"]
    assert saved["class"] == "LambdaLR" and saved["state"]["last_epoch"] == 8


def test_resumed_with_more_steps_the_cosine_stretches_to_the_new_end(tmp_path: Path) -> None:
    def run(steps: int) -> list[float]:
        result = fit(Slope(), [torch.ones(1)], optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                     scheduler=warmup_cosine(1), steps=steps, log_every=1, checkpoint_dir=tmp_path, progress=False,
                     device="cpu")  # fmt: skip
        return _train_lrs([r for r in result.history if r["step"] > result.start_step])

    assert run(4)[-1] == pytest.approx(0.1)
    assert run(8) == pytest.approx([warmup_cosine(1, 8).factor(k) for k in range(5, 9)])


def test_resume_refuses_a_schedule_dropped_added_or_changed(tmp_path: Path) -> None:
    def run(directory: Path, scheduler: object, steps: int) -> None:
        model = Slope()
        fit(model, [torch.ones(1)], optimizer=lambda p: torch.optim.SGD(p, lr=0.1), scheduler=scheduler,  # type: ignore[arg-type]
            steps=steps, checkpoint_dir=directory, **QUIET)  # fmt: skip

    run(tmp_path / "scheduled", warmup_cosine(1), 2)
    dropped = r"with a learning-rate schedule \(LambdaLR\), and this run has none: the learning rate would stay at"
    with pytest.raises(CheckpointError, match=dropped + r" its scheduled value of step 2\. Fix"):
        run(tmp_path / "scheduled", None, 4)
    with pytest.raises(CheckpointError, match=r"with a LambdaLR learning-rate schedule, and this run has a StepLR"):
        run(tmp_path / "scheduled", lambda o: StepLR(o, 2), 4)
    run(tmp_path / "plain", None, 2)
    added = r"without a learning-rate schedule, and this run has one \(LambdaLR\): it would start over at step 2"
    with pytest.raises(CheckpointError, match=added + r"\. Fix: resume with the schedule that wrote it"):
        run(tmp_path / "plain", warmup_cosine(1), 4)


def test_a_scheduler_fit_cannot_step_is_refused() -> None:
    model = Slope()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD(Slope().parameters(), lr=0.1)
    on_other = r"was built on another optimizer than the one fit\(\) trains with .* Fix: build it on the optimizer"
    with pytest.raises(ValueError, match=on_other):
        fit(model, [torch.ones(1)], optimizer=opt, scheduler=StepLR(other, 1), steps=1, **QUIET)
    with pytest.raises(ValueError, match=on_other):  # fit() builds the default optimizer itself
        fit(model, [torch.ones(1)], scheduler=StepLR(opt, 1), steps=1, **QUIET)
    with pytest.raises(ValueError, match=on_other):
        fit(model, [torch.ones(1)], optimizer=opt, scheduler=lambda o: StepLR(other, 1), steps=1, **QUIET)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau steps on a metric"):
        fit(model, [torch.ones(1)], optimizer=opt, scheduler=ReduceLROnPlateau(opt), steps=1, **QUIET)
    with pytest.raises(TypeError, match=r"scheduler function must return a torch.optim.lr_scheduler scheduler"):
        fit(model, [torch.ones(1)], optimizer=opt, scheduler=lambda o: 0.1, steps=1, **QUIET)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"scheduler must be a torch.optim.lr_scheduler scheduler, a function"):
        fit(model, [torch.ones(1)], scheduler="cosine", steps=1, **QUIET)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"warmup_cosine\(warmup_steps=6\) warms up over more steps than the run "
                                         r"has \(5\)\. Fix: fewer warmup steps \(--warmup in the CLI\)"):  # fmt: skip
        fit(model, [torch.ones(1)], scheduler=warmup_cosine(6), steps=5, **QUIET)


def test_cli_warmup_schedules_lr_to_the_last_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "mlp", "--size", "tiny", "--steps", "6", "--log-every", "1", "--lr", "0.01", "--warmup", "2",
            "--threads", "1", "--device", "cpu", "--checkpoint-dir", str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs == pytest.approx([0.01 * warmup_cosine(2, 6).factor(k) for k in range(1, 7)])
    assert lrs[-1] == pytest.approx(0.001)  # 0.1 x --lr at the last step
    capsys.readouterr()
    assert main([*argv[:5], "1", *argv[6:-3], "--no-save"]) == 2
    assert "warms up over more steps than the run has (1). Fix: fewer warmup steps (--warmup" in capsys.readouterr().err


def test_cli_help_documents_lr_and_warmup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR AdamW's learning rate, the peak with --warmup (default 0.001)" in help_text
    assert "--warmup STEPS raise the learning rate linearly to --lr over STEPS optimizer steps" in help_text
    assert "0.1 x --lr at the last step; 0: the cosine only (default: no schedule, --lr throughout)" in help_text

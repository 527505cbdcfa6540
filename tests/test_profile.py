"""profile: each step's wall time split into phases on an injectable clock, and the verdict on made-up timings."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _BaseDataLoaderIter

import tangtoc as tt
from tangtoc.diagnose import Profile, StopProfile, mark_step
from tangtoc.diagnose.profile_report import PHASES, DeviceTimes, StepTimes, device_times, judge
from tangtoc.errors import TangtocError


class FakeClock:
    """Seconds that pass only where a test says: each phase of the loop below advances it by a known amount."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class SlowData(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        CLOCK.now += 5.0 / 4  # 4 samples per batch: 5 s of data per step
        return torch.ones(2)


class SlowModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CLOCK.now += 2.0
        out = self.inner(x)  # a nested module call: still the one forward
        out.register_hook(lambda g: CLOCK.__setattr__("now", CLOCK.now + 3.0))  # runs inside backward()
        return out


class SlowSGD(torch.optim.SGD):
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        CLOCK.now += 1.0
        return super().step(closure)


# torch wraps the step() of each optimizer class it constructs; with SGD's wrapped too, SlowSGD.step runs the step
# hooks twice (its own wrapper and SGD's): still one step.
torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def train(steps: int, python_seconds: float = 0.5) -> None:
    model = SlowModel()
    opt = SlowSGD(model.parameters(), lr=0.1)
    for i, x in enumerate(DataLoader(SlowData(), batch_size=4)):
        if i == steps:
            break
        loss = model(x).sum()
        CLOCK.now += python_seconds  # the user's own Python between the phases
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_each_phase_gets_the_time_spent_in_it_and_the_phases_add_up_to_the_wall_time() -> None:
    with Profile(steps=3, warmup=1, clock=CLOCK) as p:
        train(10)
    report = p.report()
    assert [s.warmup for s in report.steps] == [True, False, False, False] and report.stopped
    for step in report.steady:
        assert step.seconds == {
            "data": 5.0,
            "copy": 0.0,
            "forward": 2.0,
            "backward": 3.0,
            "optimizer": 1.0,
            "sync": 0.0,
            "other": 0.5,
        }
        assert step.wall == 11.5 == sum(step.seconds.values())
    assert report.verdict is not None and report.verdict.bound == "input-bound"
    assert report.verdict.evidence.startswith("waiting for data is 43 % of the step")
    assert "DataLoader(num_workers=4) would prepare batches while the model runs: it would hide up to 43 % (a step" in (
        report.verdict.change
    )


def test_the_counting_step_is_the_last_warm_up_step_and_only_it_counts_operations() -> None:
    with Profile(steps=2, warmup=2, clock=CLOCK) as p:
        train(10)
    report = p.report()
    assert [s.ops is not None for s in report.steps] == [False, True, False, False]
    assert report.ops_per_step is not None and report.ops_per_step > 0
    assert p.report().to_dict()["steady_steps"] == 2


def test_without_an_optimizer_a_step_ends_where_the_next_backward_begins() -> None:
    w = torch.ones(2, requires_grad=True)
    with Profile(steps=2, warmup=0, clock=CLOCK) as p:
        for _ in range(10):
            (w * 2).sum().backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
    assert (p.report().step_source, len(p.report().steps)) == ("backward()", 2)


def test_marked_steps_are_timed(capsys: pytest.CaptureFixture[str]) -> None:
    with Profile(steps=3, warmup=0, clock=CLOCK) as p:
        for _ in range(10):
            CLOCK.now += 1.0
            mark_step()
    report = p.report()
    assert report.step_source == "mark_step()"
    assert [s.seconds["other"] for s in report.steps] == [1.0, 1.0, 1.0]


def test_everything_is_restored_on_exit_errors_included() -> None:
    def patched() -> tuple:
        return (
            torch.nn.Module.__call__,
            torch.Tensor.to,
            torch.autograd.backward,
            _BaseDataLoaderIter.__next__,
            torch.cuda.synchronize,
        )

    originals = patched()
    hooks = len(_global_optimizer_post_hooks)
    with pytest.raises(KeyError, match="boom"), Profile(steps=5):
        assert patched() != originals
        raise KeyError("boom")
    assert patched() == originals
    assert "item" not in vars(torch.Tensor) and "to" not in vars(torch.Tensor)
    assert len(_global_optimizer_post_hooks) == hooks


def test_profiles_do_not_nest_and_bad_arguments_say_what_to_give() -> None:
    with Profile(), pytest.raises(TangtocError, match="a profile is already active in this process"), Profile():
        pass
    with pytest.raises(ValueError, match=r"profile\(steps=...\) must be at least 1, got 0"):
        tt.profile(steps=0)
    with pytest.raises(ValueError, match=r"profile\(warmup=...\) must be 0 or more, got -1"):
        tt.profile(warmup=-1)
    assert issubclass(StopProfile, BaseException) and not issubclass(StopProfile, Exception)


def test_a_report_as_text_says_the_split_and_the_verdict() -> None:
    with Profile(steps=2, warmup=1, clock=CLOCK) as p:
        train(10)
    text = str(p.report()).splitlines()
    assert text[0] == "2 step(s) on cpu, 11.5 s per step (mean):"
    assert text[1].split() == ["waiting", "for", "data", "5", "s", "43", "%"]
    assert text[-2].startswith("verdict: input-bound: waiting for data is 43 % of the step")


# --- the verdict on made-up timings (seconds per step) ---


def split(wall: float = 0.1, **shares: float) -> dict[str, float]:
    seconds = {p: 0.0 for p in PHASES}
    seconds.update({p: s * wall for p, s in shares.items()})
    seconds["other"] += wall - sum(seconds.values())
    return seconds


def gpu(busy: float, kernels: float = 100) -> DeviceTimes:
    return DeviceTimes(steps=3, busy_seconds=busy * 0.1, wall_seconds=0.1, kernels=kernels)


@pytest.mark.parametrize(
    ("seconds", "kwargs", "bound", "evidence"),
    [
        (split(data=0.71, forward=0.1, backward=0.15), {}, "input-bound", "waiting for data is 71 % of the step"),
        (
            split(copy=0.4, forward=0.2, backward=0.3),
            {"device": gpu(0.5)},
            "transfer-bound",
            "host→device copies are 40 % of the step",
        ),
        (
            split(sync=0.45, forward=0.2, backward=0.3),
            {"device": gpu(0.5), "syncs": 2},
            "sync-bound",
            "the host waits for the device 45 % of the step, in 2 sync(s) per step",
        ),
        (
            split(sync=0.6, forward=0.2, backward=0.2),
            {"device": gpu(0.95), "syncs": 1},
            "compute-bound",
            "the GPU is busy 95 % of the step; forward, backward and optimizer are 40 %",
        ),
        (
            split(forward=0.5, other=0.5),
            {"device": gpu(3.0)},
            "compute-bound",
            "the GPU needs 300 ms per step and the host 100 ms: the host runs ahead until the queue fills",
        ),
        (
            split(forward=0.4, backward=0.4, optimizer=0.1),
            {"device": gpu(0.3, kernels=900)},
            "host-bound",
            "the GPU is idle 70 % of the step, waiting for the host to launch 900 kernels per step",
        ),
        (split(forward=0.4, backward=0.5), {"ops": 9000}, "host-bound", "9000 operations per step, 10 us each"),
        (split(forward=0.3, other=0.7), {}, "host-bound", "Python between the phases is 70 % of the step"),
        (split(forward=0.3, backward=0.6), {"ops": 50}, "compute-bound", "forward, backward and optimizer are 90 %"),
        # A wait under a quarter of the step is not the bound: the compute is.
        (split(data=0.2, forward=0.3, backward=0.4), {"ops": 50}, "compute-bound", "waiting for data 20 %"),
    ],
)
def test_the_verdict_follows_the_measured_shares(
    seconds: dict[str, float], kwargs: dict, bound: str, evidence: str
) -> None:
    verdict = judge(seconds, 0.1, **kwargs)
    assert verdict.bound == bound
    assert evidence in verdict.evidence


def test_the_first_change_states_the_gain_the_measurement_supports() -> None:
    change = judge(split(data=0.71, forward=0.29), 0.1, loader_workers=2).change
    assert change.startswith("more DataLoader workers than 2 (if cores are free), or less work per sample in the")
    assert "up to 71 % (a step of 29 ms instead of 100 ms)" in change
    # The host waits 60 % of the step, but the GPU computes through most of it: only its 30 % idle is to gain.
    sync = judge(split(sync=0.6, forward=0.4), 0.1, device=gpu(0.7), syncs=1).change
    assert "(`tt.fetch(loss, acc)` every 100 steps), not every step: up to 30 % (a step of 70 ms)" in sync
    assert "`tangtoc audit SCRIPT` names the line of each sync" in sync


def test_the_gpu_waited_on_the_host_in_the_steps_the_host_took_longer_than_the_gpu_was_busy() -> None:
    steady = [StepTimes(i, split(wall), wall) for i, wall in enumerate((0.004, 0.006, 0.003, 0.008), 3)]
    d = device_times(steady, profiled_steps=3, busy=0.005, kernels=120.0)
    assert (d.waited_steps, d.timed_steps, d.wall_seconds) == (2, 4, pytest.approx(0.00525))
    assert d.to_dict()["steps_gpu_waited_on_host"] == 2
    assert d.busy_share == pytest.approx(0.005 / 0.00525)


@pytest.mark.parametrize(("load", "noted"), [(0.5, False), (5.0, True)])
def test_a_busy_machine_is_noted_because_it_skews_host_times(
    monkeypatch: pytest.MonkeyPatch, load: float, noted: bool
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with Profile(steps=1, warmup=0, clock=CLOCK) as p:
        train(10)
    report = p.report()
    assert report.machine["load_average_1min"] == load
    expected = "this machine was busy with other work (load average 5.0 on 2 cores): host times include waiting for"
    assert [n.startswith(expected) for n in report.notes] == ([True] if noted else [])

"""tangtoc.train.fit: the loop's contract, its configuration, its reports and its failure messages (CPU)."""

from __future__ import annotations

import json
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tangtoc.data import ResidentLoader, stdlib_corpus, synthetic_classification
from tangtoc.device import describe
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.train import (
    FitEvent,
    FitResult,
    NonFiniteLossError,
    TrainingOutOfMemoryError,
    fit,
    latest_checkpoint,
    resolve_precision,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: one thread is faster and keeps float sums reproducible.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_classification(n, features=8, classes=3, seed=seed)


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(in_features=8, hidden=16, out_features=3, depth=1))


def _quiet(**kwargs: object) -> dict[str, object]:
    # The CPU even where a GPU is present: these tests compare exact numbers, which TF32 and bf16 would blur.
    return {"progress": False, "device": "cpu", **kwargs}


def test_fit_trains_and_reports(tmp_path: Path) -> None:
    x, y = _data()
    model = _mlp()
    result = fit(
        model,
        ResidentLoader(x, y, batch_size=32, device="cpu"),
        optimizer=torch.optim.AdamW(model.parameters(), lr=0.01),
        loss_fn=F.cross_entropy,
        steps=60,
        log_every=20,
        eval_data=[(x, y)],
        log_dir=tmp_path,
        **_quiet(),
    )
    train = [r for r in result.history if r["kind"] == "train"]
    assert [r["step"] for r in train] == [20, 40, 60]
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert result.step == 60 and result.precision == "fp32" and result.device == "cpu"
    assert result.eval_loss is not None and result.eval_loss < train[0]["loss"]
    assert result.samples_per_s is not None and result.samples_per_s > 0
    assert result.tokens_per_s is None  # features, not token ids
    assert result.mfu is None  # no published peak for a CPU: omitted, not guessed
    assert {"step_time_s", "samples_per_s", "elapsed_s", "lr"} <= set(train[1])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    assert result.plot_path == tmp_path / "loss.png" and result.plot_path.read_bytes()[:4] == b"\x89PNG"


def test_loss_fn_none_means_the_model_returns_the_loss() -> None:
    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.net(x), y)

    x, y = _data()
    result = fit(WithLoss(), [(x[:64], y[:64]), (x[64:128], y[64:128])], steps=30, log_every=10, **_quiet())
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_dict_batches_are_passed_as_keywords() -> None:
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, *, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return ((inputs * self.w - labels) ** 2).mean()

    batch = {"inputs": torch.ones(4), "labels": torch.full((4,), 2.0)}
    model = Keywords()
    fit(model, [batch], steps=100, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **_quiet())
    assert model.w.item() == pytest.approx(2.0, abs=1e-3)


def test_grad_accum_matches_one_big_batch() -> None:
    x, y = _data(64)
    big = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    small = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    models = [_mlp(), _mlp()]
    for model, data, accum in ((models[0], big, 1), (models[1], small, 2)):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        fit(model, data, optimizer=opt, loss_fn=F.cross_entropy, steps=8, grad_accum=accum, **_quiet())
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_epochs_count_optimizer_steps() -> None:
    x, y = _data(64)
    loader = ResidentLoader(x, y, batch_size=8, device="cpu")
    result = fit(_mlp(), loader, loss_fn=F.cross_entropy, epochs=3, grad_accum=2, **_quiet())
    assert result.step == 3 * 8 // 2
    with pytest.raises(ValueError, match=r"epochs= needs data with a length, and generator has none"):
        fit(_mlp(), (b for b in [(x, y)]), loss_fn=F.cross_entropy, epochs=1, **_quiet())


def test_clip_grad_logs_the_norm_and_bounds_the_update() -> None:
    x, y = _data(64)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = fit(model, [(x * 100, y)], optimizer=opt, loss_fn=F.cross_entropy, steps=1, clip_grad=0.01, **_quiet())
    assert result.history[0]["grad_norm"] > 0.01  # the norm before clipping
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert moved.item() == pytest.approx(0.01, rel=1e-3)  # lr 1 x clipped norm 0.01


def _count_host_reads(monkeypatch: pytest.MonkeyPatch, steps: int) -> int:
    reads = 0
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: object, _original: object = original, **kwargs: object) -> object:
            nonlocal reads
            reads += 1
            return _original(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, counting)
    x, y = _data(64)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD: no step counter read on the host (Adam reads one)
    fit(model, ResidentLoader(x, y, batch_size=8, device="cpu"), optimizer=opt, loss_fn=F.cross_entropy,
        steps=steps, log_every=steps, clip_grad=1.0, **_quiet())  # fmt: skip
    monkeypatch.undo()
    return reads


def test_host_reads_do_not_grow_with_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # One log point either way: 10 or 40 steps must read the same number of values on the host. A per-step
    # .item() or `if loss.isnan():` would make the second count larger by at least 30.
    few = _count_host_reads(monkeypatch, 10)
    many = _count_host_reads(monkeypatch, 40)
    assert few == many
    assert few >= 1  # the counter sees fit's one fetch


def _nan_at(step: int, n_steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data(8 * n_steps)
    batches = [(x[i * 8 : (i + 1) * 8].clone(), y[i * 8 : (i + 1) * 8]) for i in range(n_steps)]
    batches[step - 1][0][0, 0] = float("nan")
    return batches


def test_nan_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"loss was nan at step 7 .*step-00000005\.pt") as exc:
        fit(_mlp(), _nan_at(7, 12), loss_fn=F.cross_entropy, steps=12, log_every=5, checkpoint_dir=tmp_path,
            checkpoint_every=5, **_quiet())  # fmt: skip
    assert exc.value.step == 7
    assert exc.value.checkpoint == tmp_path / "step-00000005.pt"
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000005.pt"  # nothing saved after the NaN
    assert isinstance(exc.value, FloatingPointError)


def test_nan_without_checkpoint_says_so() -> None:
    with pytest.raises(NonFiniteLossError, match=r"at step 2 .*No checkpoint was written before it"):
        fit(_mlp(), _nan_at(2, 3), loss_fn=F.cross_entropy, steps=3, **_quiet())


def test_nan_step_can_be_skipped() -> None:
    model = _mlp()
    result = fit(model, _nan_at(3, 6), loss_fn=F.cross_entropy, steps=6, on_nonfinite="skip", **_quiet())
    assert result.skipped_steps == 1 and result.step == 6
    assert result.history[-1]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_out_of_memory_names_the_batch_and_the_fix() -> None:
    class Hungry(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    data = [(torch.ones(8, 2), torch.zeros(8))]
    with pytest.raises(
        TrainingOutOfMemoryError,
        match=r"ran out of memory at step 1 with batch size 8 \(grad_accum=1.*batch size 4, grad_accum=2\) to keep "
        r"the same 8 samples",
    ) as exc:
        fit(Hungry(), data, loss_fn=F.mse_loss, steps=1, **_quiet())
    assert isinstance(exc.value, torch.cuda.OutOfMemoryError)  # existing except clauses still catch it


def test_callbacks_see_every_kind_of_event(tmp_path: Path) -> None:
    x, y = _data(64)
    events: list[FitEvent] = []
    fit(_mlp(), [(x, y)], loss_fn=F.cross_entropy, steps=4, log_every=2, eval_data=[(x, y)], eval_every=4,
        checkpoint_dir=tmp_path, callbacks=[events.append], **_quiet())  # fmt: skip
    assert [(e.kind, e.step) for e in events] == [("log", 2), ("log", 4), ("eval", 4), ("checkpoint", 4), ("end", 4)]
    assert events[3].path == tmp_path / "step-00000004.pt"


def test_preemption_signal_finishes_the_step_checkpoints_and_returns(tmp_path: Path) -> None:
    x, y = _data(64)

    def preempt_at_3(event: FitEvent) -> None:
        if event.kind == "log" and event.step == 3:
            signal.raise_signal(signal.SIGUSR1)

    result = fit(_mlp(), [(x, y)], loss_fn=F.cross_entropy, steps=1000, log_every=3, checkpoint_dir=tmp_path,
                 on_preempt="return", callbacks=[preempt_at_3], **_quiet())  # fmt: skip
    assert result.preempted and result.step == 4  # the signal lands after step 3's log; step 4 completes
    assert result.checkpoint == tmp_path / "step-00000004.pt" and result.checkpoint.exists()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handler is restored


def test_precision_choices_on_cpu() -> None:
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    x, y = _data(64)
    for precision in ("bf16", "fp16"):
        result = fit(_mlp(), [(x, y)], loss_fn=F.cross_entropy, steps=3, precision=precision, **_quiet())
        assert result.precision == precision and result.loss is not None and result.loss == result.loss
    with pytest.raises(ValueError, match=r"precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        fit(_mlp(), [(x, y)], loss_fn=F.cross_entropy, steps=1, precision="fp8")


def test_compile_runs_the_forward_through_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[nn.Module] = []

    def fake_compile(model: nn.Module) -> nn.Module:
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _mlp()
    x, y = _data(16)
    fit(model, [(x, y)], loss_fn=F.cross_entropy, steps=1, compile=True, **_quiet())
    assert compiled == [model]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"pass exactly one of steps= or epochs=, got steps=None, epochs=None"),
        ({"steps": 1, "epochs": 1}, r"pass exactly one of steps= or epochs="),
        ({"steps": 0}, r"steps must be an int >= 1 or None, got 0"),
        ({"steps": 1, "grad_accum": 0}, r"grad_accum must be an int >= 1, got 0"),
        ({"steps": 1, "log_every": 2.5}, r"log_every must be an int >= 1, got 2.5"),
        ({"steps": 1, "clip_grad": -1.0}, r"clip_grad must be a number > 0 or None, got -1.0"),
        ({"steps": 1, "on_nonfinite": "ignore"}, r"on_nonfinite must be one of raise, skip, got 'ignore'"),
        ({"steps": 1, "on_preempt": "die"}, r"on_preempt must be one of exit, return, got 'die'"),
        ({"steps": 1, "checkpoint_every": 5}, r"checkpoint_every=5 needs somewhere to write; pass checkpoint_dir="),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit(_mlp(), [(torch.ones(2, 8), torch.zeros(2, dtype=torch.long))], loss_fn=F.cross_entropy, **kwargs)


def test_first_batch_problems_are_explained() -> None:
    x, y = _data(16)
    with pytest.raises(ValueError, match=r"loss_fn=None,? must return the loss as a one-element tensor, got shape"):
        fit(_mlp(), [(x,)], steps=1, **_quiet())  # the MLP returns logits, not a loss
    with pytest.raises(ValueError, match=r"trains on batches \(inputs, targets\), got a tuple of 3"):
        fit(_mlp(), [(x, y, y)], loss_fn=F.cross_entropy, steps=1, **_quiet())
    with pytest.raises(ValueError, match=r"yielded no batches. A generator can be consumed only once"):
        fit(_mlp(), (b for b in [(x, y)]), loss_fn=F.cross_entropy, steps=2, **_quiet())
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got function"):
        fit(lambda b: b, [(x, y)], steps=1, **_quiet())  # type: ignore[arg-type]


def _cuda_sync_warnings(steps: int) -> tuple[int, FitResult]:
    # fp16's GradScaler reads an inf flag on the host every step (documented); bf16 and fp32 must not sync.
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    torch.manual_seed(0)
    cfg = gpt_config("tiny")
    x, y = stdlib_corpus(max_bytes=200_000).windows(cfg.block_size)  # 700 batches: no epoch boundary crossed
    loader = ResidentLoader(x, y, batch_size=8, device="cuda")
    model = GPT(cfg).to("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fit(
                model, loader, steps=steps, log_every=steps, precision=precision, device="cuda", progress=False
            )
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), result


@pytest.mark.cuda
def test_no_hidden_syncs_on_cuda() -> None:
    _cuda_sync_warnings(3)  # warm-up: lazy CUDA initialisation happens once per process
    few, _ = _cuda_sync_warnings(10)
    many, result = _cuda_sync_warnings(40)
    assert few == many  # one log point each: 30 more steps, not one more sync
    if describe("cuda").peak_flops:
        assert result.history[-1]["mfu"] > 0 and result.peak_memory_bytes > 0


@pytest.mark.parametrize(
    ("name", "device_type", "key"),
    [("fp32", "cuda", "tf32"), ("fp32", "cpu", "float32"), ("bf16", "cuda", "bfloat16"), ("fp16", "cuda", "float16")],
)
def test_mfu_is_taken_against_the_peak_of_the_arithmetic_fit_runs(name: str, device_type: str, key: str) -> None:
    """fit() runs float32 on CUDA with TF32 matmuls, so its MFU bound is the TF32 peak, not plain FP32's."""
    from tangtoc.step import _DTYPES, Precision

    assert Precision(name=name, dtype=_DTYPES[name], device_type=device_type).peak_key() == key


def test_an_optimizer_of_another_model_is_refused_and_a_partial_one_warned(tmp_path: Path) -> None:
    # issue 13 items 7 and 14: these ran to the end and trained nothing, or failed with torch's bare message
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    with pytest.raises(ValueError, match=r"the optimizer holds none of the 2 trainable parameters of this Linear"):
        fit(model, batches, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), loss_fn=F.cross_entropy, steps=1,
            progress=False)  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"holds 1 of the model's 2 trainable parameters; these will not be updated: bias"
    ):
        fit(model, batches, optimizer=torch.optim.SGD([model.weight], lr=0.1), loss_fn=F.cross_entropy, steps=1,
            progress=False)  # fmt: skip
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"Linear has no trainable parameters .* nothing to train"):
        fit(frozen, batches, loss_fn=F.cross_entropy, steps=1, progress=False)


class _Slow(nn.Module):
    """A linear layer whose training forward takes at least ``train_s`` and whose evaluation forward ``eval_s``."""

    def __init__(self, train_s: float, eval_s: float) -> None:
        super().__init__()
        self.net, self.train_s, self.eval_s = nn.Linear(4, 2), train_s, eval_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.train_s if self.training else self.eval_s)
        return self.net(x)


def test_an_evaluation_between_log_points_keeps_the_training_time_and_leaves_out_its_own() -> None:
    # Evaluations at steps 3 and 6, log points at 4 and 8: the interval 5-8 holds an evaluation in its middle.
    # An evaluation used to restart the interval's clock, dropping steps 5-6's time but keeping their work: a
    # step_time_s below the 20 ms a step sleeps. Sleeps bound the time from below only, so load cannot fail this.
    batches = [(torch.randn(2, 4), torch.randn(2, 2)) for _ in range(8)]
    result = fit(_Slow(0.02, 1.0), batches, loss_fn=F.mse_loss, steps=8, log_every=4, eval_data=batches[:1],
                 eval_every=3, device="cpu", progress=False)  # fmt: skip
    train = [r for r in result.history if r.get("kind", "train") == "train" and "step_time_s" in r]
    assert [r["step"] for r in train] == [4, 8]
    assert all(r["step_time_s"] >= 0.02 for r in train), train
    assert all(r["step_time_s"] < 0.25 for r in train), train  # the 1 s evaluations are not in it (with: >= 0.27)

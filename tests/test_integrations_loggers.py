"""Loggers for tt.fit: TensorBoard with the real library (the event file read back), W&B and MLflow against fake
modules that record the calls the adapters make (the real wandb and mlflow are not installed here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tangtoc as tt
from tangtoc.integrations.loggers import MLflowLogger, TensorBoardLogger, WandbLogger, scalars
from tangtoc.models import MLP, MLPConfig
from tangtoc.train import FitEvent

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test


def _fit(callback: Any) -> tt.FitResult:
    """Six steps of a tiny MLP, logged every 2 steps and evaluated at step 4 and at the end."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3, depth=1))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    return tt.fit(
        model,
        batches,
        loss_fn=F.cross_entropy,
        steps=6,
        log_every=2,
        eval_data=batches[:1],
        eval_every=4,
        callbacks=[callback],
        progress=False,
        device="cpu",
    )


def _expected(result: tt.FitResult) -> list[tuple[int, dict[str, float]]]:
    return [
        (r["step"], scalars(FitEvent("log" if r["kind"] == "train" else "eval", r["step"], r))) for r in result.history
    ]


def test_scalars_groups_numbers_by_record_kind() -> None:
    log = FitEvent(
        "log", 10, {"kind": "train", "step": 10, "loss": 2.5, "mfu": 0.4, "lr": 1e-3, "note": "x", "b": True}
    )
    assert scalars(log) == {"train/loss": 2.5, "train/mfu": 0.4, "train/lr": 1e-3}
    assert scalars(FitEvent("eval", 10, {"kind": "eval", "step": 10, "eval_loss": 1.5})) == {"eval/loss": 1.5}
    assert scalars(FitEvent("checkpoint", 10, {"step": 10, "path": "ckpt/step-00000010.pt"})) == {}
    assert scalars(FitEvent("end", 10, {"step": 10, "loss": 2.5, "eval_loss": None})) == {}


def test_tensorboard_event_file_holds_fits_records(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    result = _fit(logger)
    assert logger.writer is not None and not list(tmp_path.glob("tb/*.tmp"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    written: dict[str, list[tuple[int, float]]] = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    expected: dict[str, list[tuple[int, float]]] = {}
    for step, numbers in _expected(result):
        for tag, value in numbers.items():
            expected.setdefault(tag, []).append((step, pytest.approx(value, rel=1e-6)))  # stored as float32
    assert {"train/loss", "train/samples_per_s", "train/step_time_s", "eval/loss"} <= set(written)
    assert [s for s, _ in written["train/loss"]] == [2, 4, 6] and [s for s, _ in written["eval/loss"]] == [4, 6]
    assert written == expected


def test_tensorboard_writes_nothing_on_other_ranks(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    logger(FitEvent("log", 2, {"kind": "train", "step": 2, "loss": 1.0}, rank=1))
    assert logger.writer is None and not (tmp_path / "tb").exists()


def _fake(name: str, calls: list[tuple[Any, ...]], *functions: str) -> types.ModuleType:
    module = types.ModuleType(name)
    for function in functions:

        def record(*args: Any, _name: str = function, **kwargs: Any) -> None:
            calls.append((_name, args, kwargs))

        setattr(module, function, record)
    return module


def test_wandb_logger_inits_logs_each_record_and_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setitem(sys.modules, "wandb", _fake("wandb", calls, "init", "log", "finish"))
    result = _fit(WandbLogger(project="tiny", mode="offline"))
    assert calls[0] == ("init", (), {"project": "tiny", "mode": "offline"})
    assert calls[1:-1] == [("log", (numbers,), {"step": step}) for step, numbers in _expected(result)]
    assert calls[-1] == ("finish", (), {})


def test_mlflow_logger_starts_logs_each_record_and_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setitem(sys.modules, "mlflow", _fake("mlflow", calls, "start_run", "log_metrics", "end_run"))
    result = _fit(MLflowLogger(run_name="tiny"))
    assert calls[0] == ("start_run", (), {"run_name": "tiny"})
    assert calls[1:-1] == [("log_metrics", (numbers,), {"step": step}) for step, numbers in _expected(result)]
    assert calls[-1] == ("end_run", (), {})


@pytest.mark.parametrize(
    ("make", "module", "extra"), [(WandbLogger, "wandb", "wandb"), (MLflowLogger, "mlflow", "mlflow")]
)
def test_a_missing_library_names_its_extra(monkeypatch: pytest.MonkeyPatch, make: Any, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: `import` raises ImportError
    with pytest.raises(ImportError, match=rf"needs {module}, which is not installed: pip install 'tangtoc\[{extra}\]'"):
        make()

"""TangtocCallback with the real transformers Trainer on the CPU: a tiny GPT-2 built here, nothing downloaded."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tangtoc as tt

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # the tiny config's token ids outside the vocabulary: not used here

from tangtoc.integrations.hf import TangtocCallback  # noqa: E402

SEQ, BATCH = 16, 4
RATES = {"tangtoc/step_time_s", "tangtoc/samples_per_s", "tangtoc/tokens_per_s"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def _data(n: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 64, (SEQ,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def _trainer(tmp_path: Path, model: nn.Module, **args: Any) -> Any:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "max_steps": 6,
        "logging_steps": 2,
        "per_device_train_batch_size": BATCH,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        **args,
    }
    evaluate = _data(8) if settings.get("eval_strategy") == "steps" else None
    arguments = transformers.TrainingArguments(**settings)
    return transformers.Trainer(model=model, args=arguments, train_dataset=_data(), eval_dataset=evaluate)


def _train_logs(trainer: Any) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in trainer.state.log_history if "loss" in r}


def test_rates_mfu_and_the_audit_reach_the_logs(tmp_path: Path) -> None:
    model = _gpt2()
    batch = {k: torch.stack([d[k] for d in _data()[:BATCH]]) for k in ("input_ids", "labels")}
    with FlopCounterMode(display=False) as reference:  # one training micro-batch, counted apart
        copy.deepcopy(model)(**batch).loss.backward()
    trainer = _trainer(tmp_path, model)
    lines: list[str] = []
    callback = TangtocCallback(audit_steps=2, peak_flops=1e12, echo=lines.append).attach(trainer)
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    trainer.train()

    logs = _train_logs(trainer)
    assert sorted(logs) == [2, 4, 6]
    audit = {k: v for k, v in logs[2].items() if k.startswith("tangtoc/")}
    assert set(audit) == {"tangtoc/audit_syncs_per_step", "tangtoc/audit_copies_per_step"}  # audited: no rates
    assert audit["tangtoc/audit_syncs_per_step"] >= 2  # the Trainer's isnan/isinf check of each step's loss
    assert list(callback.watch.meter.flops_by_shape.values()) == [reference.get_total_flops()]
    for step in (4, 6):
        log = logs[step]
        assert {k for k in log if k.startswith("tangtoc/")} == RATES | {"tangtoc/mfu", "tangtoc/peak_flops"}
        assert log["tangtoc/samples_per_s"] * log["tangtoc/step_time_s"] == pytest.approx(BATCH)
        assert log["tangtoc/tokens_per_s"] == pytest.approx(log["tangtoc/samples_per_s"] * SEQ)
        per_s = reference.get_total_flops() / log["tangtoc/step_time_s"]
        assert log["tangtoc/mfu"] == pytest.approx(per_s / 1e12) and log["tangtoc/peak_flops"] == 1e12

    assert lines[0] == "tangtoc: MFU against 1.0 TFLOP/s (peak_flops= given by the user)."
    assert lines[1].startswith("tangtoc audit of the first 2 step(s), model on cpu (no GPU in use")
    report = callback.audit_report
    assert len(report.steps) == 2
    nan_check = [f for f in report.findings if f.via and f.via.startswith("transformers.trainer.Trainer")]
    assert nan_check and nan_check[0].kind == "sync" and nan_check[0].op == "bool(tensor) / if tensor:"
    assert (nan_check[0].location.file, nan_check[0].location.line) == (__file__, line)  # the user's train() call
    assert f"{Path(__file__).name}:{line}  bool(tensor) / if tensor: inside transformers.trainer" in lines[1]


def test_without_a_peak_no_mfu_accumulation_counts_every_micro_batch_and_evaluation_none(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, _gpt2(), gradient_accumulation_steps=2, eval_strategy="steps", eval_steps=2)
    lines: list[str] = []
    callback = TangtocCallback(audit_steps=0, echo=lines.append)
    trainer.add_callback(callback)
    trainer.train()
    logs = _train_logs(trainer)
    assert [r["step"] for r in trainer.state.log_history if "eval_loss" in r] == [2, 4, 6]
    for step in (2, 4, 6):  # nothing audited or counted: every step is timed; evaluation's forwards are not counted
        assert {k for k in logs[step] if k.startswith("tangtoc/")} == RATES
        assert logs[step]["tangtoc/samples_per_s"] * logs[step]["tangtoc/step_time_s"] == pytest.approx(2 * BATCH)
    assert lines == [
        f"tangtoc: no published fp32 peak for {tt.describe('cpu').name} (cpu) in tangtoc's hardware table: MFU is "
        "not reported (give peak_flops= or $TANGTOC_PEAK_TFLOPS to report it)."
    ]
    assert callback.audit_report is None and callback.watch.meter.flops_by_shape == {}


def _tensorboard_tags(root: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in root.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("attached", [True, False])
def test_report_to_loggers_get_the_numbers_when_attached(tmp_path: Path, attached: bool) -> None:
    trainer = _trainer(tmp_path, _gpt2(), report_to=["tensorboard"])
    lines: list[str] = []
    callback = TangtocCallback(audit_steps=1, peak_flops=1e12, echo=lines.append)
    if attached:
        callback.attach(trainer)
    else:
        trainer.add_callback(callback)
    trainer.train()
    warning = (
        "tangtoc: the report_to loggers (tensorboard) run before this callback and will not receive tangtoc's "
        "numbers; add it with TangtocCallback(...).attach(trainer) instead."
    )
    tags = _tensorboard_tags(tmp_path)
    assert "train/loss" in tags
    if attached:
        assert warning not in lines
        assert {"train/tangtoc/tokens_per_s", "train/tangtoc/mfu", "train/tangtoc/audit_syncs_per_step"} <= tags
    else:
        assert warning in lines
        assert not any("tangtoc" in tag for tag in tags)  # what the warning says


class _PlainAttribute(nn.Module):
    """A model whose plain tensor attribute ``scale`` stays behind (on ``meta``) when the model moves."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 8)
        self.head = nn.Linear(8, 64)
        self.scale = torch.ones(8, device="meta")

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.emb(input_ids) * self.scale)
        return {"loss": nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())}


def test_guard_names_the_culprit_and_close_restores_everything(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, _PlainAttribute())
    callback = TangtocCallback(audit_steps=2, guard=True, echo=None)
    trainer.add_callback(callback)
    with pytest.raises(tt.DeviceMismatchError, match=r"Fix: register it in __init__: `self.register_buffer\('scale'"):
        trainer.train()
    assert torch._C._len_torch_function_stack() and torch._C._len_torch_dispatch_stack()  # the Trainer calls no one
    callback.close()
    assert not torch._C._len_torch_function_stack() and not torch._C._len_torch_dispatch_stack()
    assert callback.audit_report is not None and not callback.audit_report.steps
    with tt.audit():  # no audit left active
        pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"audit_steps": -1}, "audit_steps must be a whole number of steps, 0 for no audit, got -1"),
        ({"audit_steps": True}, "audit_steps must be a whole number of steps, 0 for no audit, got True"),
        ({"peak_flops": "fast"}, r"peak_flops must be the device's peak in FLOP/s \(e\.g\. 989\.5e12\), got 'fast'"),
    ],
)
def test_options_are_checked_when_made(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TangtocCallback(**kwargs)


def test_import_tangtoc_imports_no_trainer_and_a_missing_one_names_its_extra() -> None:
    code = """
import sys, tangtoc, tangtoc.integrations, tangtoc.integrations.loggers
print(sorted(m for m in ('transformers', 'lightning', 'tensorboard', 'wandb', 'mlflow') if m in sys.modules))
for module, name in (('transformers', 'hf'), ('lightning', 'lightning')):
    sys.modules[module] = None  # as if not installed: `import` raises ImportError
    try:
        __import__(f'tangtoc.integrations.{name}')
    except ImportError as e:
        print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[]",
        "tangtoc.integrations.hf needs transformers: pip install 'tangtoc[hf]' (or pip install transformers).",
        "tangtoc.integrations.lightning needs lightning: pip install 'tangtoc[lightning]' (or pip install lightning).",
    ]

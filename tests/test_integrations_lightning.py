"""TangtocCallback with the real Lightning Trainer on the CPU, its numbers read back from a real CSVLogger."""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tangtoc as tt
from tangtoc.models import MLP, MLPConfig

L = pytest.importorskip("lightning")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from tangtoc.integrations.lightning import TangtocCallback, precision_of  # noqa: E402

BATCH = 4
RATES = {"tangtoc/step_time_s", "tangtoc/samples_per_s"}
ITEM_LINE = 0  # the line of the `.item()` in Classifier.training_step, set below


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test


class Classifier(L.LightningModule):
    """A LightningModule around a model: tangtoc's MLP declares its FLOPs; a plain ``nn.Sequential`` does not."""

    def __init__(self, net: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise RuntimeError("the data ran out")
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.last = loss.item()  # a sync each step, for the audit to find
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


ITEM_LINE = next(
    inspect.getsourcelines(Classifier.training_step)[1] + i
    for i, text in enumerate(inspect.getsourcelines(Classifier.training_step)[0])
    if ".item()" in text
)


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(MLPConfig(in_features=8, hidden=16, out_features=3, depth=1))


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=BATCH)


def _fit(tmp_path: Path, module: L.LightningModule, callback: TangtocCallback, **trainer: Any) -> CSVLogger:
    logger = CSVLogger(tmp_path)
    settings: dict[str, Any] = {"max_steps": 6, "log_every_n_steps": 2, **trainer}
    L.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    ).fit(module, _loader())
    return logger


def _metrics(logger: CSVLogger) -> dict[int, dict[str, float]]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): {k: float(v) for k, v in r.items() if v and k != "step"} for r in rows}


def test_rates_mfu_audit_and_peak_reach_the_loggers(tmp_path: Path) -> None:
    net = _mlp()
    lines: list[str] = []
    callback = TangtocCallback(audit_steps=2, peak_flops=1e6, echo=lines.append)
    logger = _fit(tmp_path, Classifier(net), callback)

    metrics = _metrics(logger)
    assert sorted(metrics) == [1, 3, 5]  # optimizer steps 2, 4, 6, at the 0-based step Lightning logs its own at
    # audited steps: no rates; the .item() below, and Lightning moving x and y (copies on a GPU)
    assert metrics[1] == {"tangtoc/audit_syncs_per_step": 1.0, "tangtoc/audit_copies_per_step": 2.0}
    for step in (3, 5):
        m = metrics[step]
        assert set(m) == RATES | {"tangtoc/mfu", "tangtoc/peak_flops"}
        assert m["tangtoc/samples_per_s"] * m["tangtoc/step_time_s"] == pytest.approx(BATCH)
        declared = net.flops_per_sample() * BATCH / m["tangtoc/step_time_s"]  # the model's own count
        assert m["tangtoc/mfu"] == pytest.approx(declared / 1e6) and m["tangtoc/peak_flops"] == 1e6
    assert callback.watch.meter.flops_by_shape == {}  # declared, so nothing counted
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "tangtoc/peak: MFU against 0.0 TFLOP/s (peak_flops= given by the user)." in hparams

    report = callback.audit_report
    item = [f for f in report.findings if f.op == ".item()"]
    assert len(report.steps) == 2 and item[0].kind == "sync" and item[0].count == 2
    assert (item[0].location.file, item[0].location.line) == (__file__, ITEM_LINE)
    assert f"{Path(__file__).name}:{ITEM_LINE}  .item(): would synchronize on a GPU" in lines[1]


def test_undeclared_flops_are_counted_once_with_accumulation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = next(iter(_loader()))
    with FlopCounterMode(display=False) as reference:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad()
    callback = TangtocCallback(audit_steps=0, peak_flops=1e6, echo=None)
    metrics = _metrics(_fit(tmp_path, Classifier(net), callback, accumulate_grad_batches=2))
    assert list(callback.watch.meter.flops_by_shape.values()) == [reference.get_total_flops()]
    for step in (1, 3, 5):  # the first optimizer step ran under the counter: left out, the first interval has one
        m = metrics[step]
        assert m["tangtoc/samples_per_s"] * m["tangtoc/step_time_s"] == pytest.approx(2 * BATCH)
        per_s = 2 * reference.get_total_flops() / m["tangtoc/step_time_s"]
        assert m["tangtoc/mfu"] == pytest.approx(per_s / 1e6)


def test_an_exception_closes_the_audit_and_the_guard(tmp_path: Path) -> None:
    callback = TangtocCallback(audit_steps=5, guard=True, echo=None)
    with pytest.raises(RuntimeError, match="the data ran out"):
        _fit(tmp_path, Classifier(_mlp(), fail_at=3), callback)
    assert not torch._C._len_torch_function_stack() and not torch._C._len_torch_dispatch_stack()
    assert callback.audit_report is not None and len(callback.audit_report.steps) == 3
    with tt.audit():  # no audit left active
        pass


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("bf16-mixed", "bf16"),
        ("16-mixed", "fp16"),
        ("32-true", "fp32"),
        ("64-true", "fp64"),
        ("transformer-engine", None),
    ],
)
def test_lightning_precisions(precision: str, expected: str | None) -> None:
    assert precision_of(precision, torch.device("cpu")) == expected

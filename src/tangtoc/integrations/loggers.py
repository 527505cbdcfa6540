"""Loggers for :func:`tangtoc.fit`: TensorBoard, Weights & Biases and MLflow, as ``callbacks=``.

::

    from tangtoc.integrations.loggers import TensorBoardLogger
    tt.fit(model, data, steps=1000, callbacks=[TensorBoardLogger("runs/gpt")])

Each is a callable that takes fit's :class:`~tangtoc.train.FitEvent`. The numbers of a ``"log"`` record go under
``train/`` and those of an ``"eval"`` record under ``eval/``, by the record's own key names (the names of
``metrics.jsonl``: ``train/loss``, ``train/tokens_per_s``, ``train/mfu``...; ``eval_loss`` becomes ``eval/loss``),
at the record's optimizer step. Only rank 0 writes; the ``"end"`` event closes the writer or the run. Each library
is imported when the logger is made, so ``import tangtoc`` needs none of them; a missing one names its extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tangtoc.train import FitEvent

__all__ = ["MLflowLogger", "RunLogger", "TensorBoardLogger", "WandbLogger", "scalars"]


def scalars(event: FitEvent) -> dict[str, float]:
    """The numbers of a ``"log"`` or ``"eval"`` event under ``train/`` or ``eval/``; empty for other events."""
    if event.kind not in ("log", "eval"):
        return {}
    group = str(event.record.get("kind", "train" if event.kind == "log" else "eval"))
    out = {}
    for key, value in event.record.items():
        if key in ("kind", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{group}/{key.removeprefix(group + '_')}"] = float(value)
    return out


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this logger needs {module.split('.')[0]}, which is not installed: pip install 'tangtoc[{extra}]'."
        ) from e


class RunLogger:
    """What the three loggers share: at rank 0, ``start()`` at the first event, ``log(numbers, step)`` at each event
    with numbers (see :func:`scalars`), ``finish()`` at the ``"end"`` event (a later event starts a new run)."""

    def __init__(
        self,
        start: Callable[[], object],
        log: Callable[[dict[str, float], int], object],
        finish: Callable[[], object],
    ) -> None:
        self._start, self._log, self._finish = start, log, finish
        self._started = False

    def __call__(self, event: FitEvent) -> None:
        if event.rank != 0:
            return
        if not self._started:  # at the first event: a run that fails before logging leaves no empty run behind
            self._start()
            self._started = True
        numbers = scalars(event)
        if numbers:
            self._log(numbers, event.step)
        if event.kind == "end":
            self._finish()
            self._started = False


class TensorBoardLogger(RunLogger):
    """Writes fit's numbers as TensorBoard scalars in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``),
    flushed at each event so that a killed run keeps what it logged. Needs ``tangtoc[tensorboard]``."""

    def __init__(self, log_dir: str | Path) -> None:
        tensorboard = _require("torch.utils.tensorboard", "tensorboard")
        self.log_dir = Path(log_dir)
        self.writer: Any = None

        def start() -> None:
            self.writer = tensorboard.SummaryWriter(log_dir=str(self.log_dir))

        def log(numbers: dict[str, float], step: int) -> None:
            for tag, value in numbers.items():
                self.writer.add_scalar(tag, value, global_step=step)
            self.writer.flush()

        super().__init__(start, log, lambda: self.writer.close())


class WandbLogger(RunLogger):
    """Logs fit's numbers to a Weights & Biases run: ``wandb.init(**init)`` at the first event, ``wandb.log`` at
    each, ``wandb.finish()`` at the end. ``init`` is passed as is (``project=``, ``name=``, ``config=``,
    ``mode="offline"``...). Needs ``tangtoc[wandb]``."""

    def __init__(self, **init: Any) -> None:
        wandb = _require("wandb", "wandb")
        super().__init__(lambda: wandb.init(**init), lambda numbers, step: wandb.log(numbers, step=step), wandb.finish)


class MLflowLogger(RunLogger):
    """Logs fit's numbers to an MLflow run: ``mlflow.start_run(**start)`` at the first event, ``mlflow.log_metrics``
    at each, ``mlflow.end_run()`` at the end. ``start`` is passed as is (``run_name=``, ``experiment_id=``...); where
    runs are stored is MLflow's own setting (``MLFLOW_TRACKING_URI``). Needs ``tangtoc[mlflow]``."""

    def __init__(self, **start: Any) -> None:
        mlflow = _require("mlflow", "mlflow")
        super().__init__(
            lambda: mlflow.start_run(**start),
            lambda numbers, step: mlflow.log_metrics(numbers, step=step),
            mlflow.end_run,
        )

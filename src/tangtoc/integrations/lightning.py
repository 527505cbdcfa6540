"""``TangtocCallback`` for Lightning: audit the first steps, guard devices, log tokens/s and MFU to the loggers.

::

    import lightning as L
    from tangtoc.integrations.lightning import TangtocCallback

    L.Trainer(max_steps=1000, callbacks=[TangtocCallback(audit_steps=5)]).fit(module, loader)

What it does is :class:`~tangtoc.integrations.watch.Watch`'s (the same as the transformers callback): the first
``audit_steps`` optimizer steps run under :func:`tangtoc.audit`, whose findings are printed and kept in
:attr:`TangtocCallback.audit_report`; every ``trainer.log_every_n_steps`` optimizer steps, ``tangtoc/tokens_per_s``
(batches of token ids), ``tangtoc/samples_per_s``, ``tangtoc/step_time_s`` and, where the peak is known,
``tangtoc/mfu`` with ``tangtoc/peak_flops`` go to every logger of the trainer (``logger.log_metrics``), and the
peak's source to their hyperparameters (``tangtoc/peak_source``). FLOPs come from the module's (or its one child
model's) ``flops_per_token`` / ``flops_per_sample``, else from PyTorch's FLOP counter once per batch shape.
Numbers are this process's (rank 0's, in a distributed run).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tangtoc.console import to_stderr
from tangtoc.device import tf32_matmul_enabled
from tangtoc.diagnose import AuditReport
from tangtoc.integrations.watch import Echo, Watch

try:
    import lightning as L
except ImportError as e:  # pragma: no cover - exercised only where lightning is missing
    raise ImportError(
        "tangtoc.integrations.lightning needs lightning: pip install 'tangtoc[lightning]' (or pip install lightning)."
    ) from e

__all__ = ["TangtocCallback", "precision_of"]


def precision_of(precision: str, device: torch.device) -> str | None:
    """Lightning's ``trainer.precision`` (``"bf16-mixed"``, ``"16-true"``, ``"32-true"``, ``"64-true"``...) as
    :func:`~tangtoc.integrations.throughput.resolve_peak` names it; ``None`` for one without a peak (FP8)."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        return "tf32" if device.type == "cuda" and tf32_matmul_enabled() else "fp32"
    if precision.startswith("64"):
        return "fp64"
    return None


def declared_flops(module: nn.Module) -> nn.Module:
    """The module that declares the FLOPs: the LightningModule itself, or the one child model that does."""
    if hasattr(module, "flops_per_token") or hasattr(module, "flops_per_sample"):
        return module
    declaring = [m for m in module.children() if hasattr(m, "flops_per_token") or hasattr(m, "flops_per_sample")]
    return declaring[0] if len(declaring) == 1 else module


class TangtocCallback(L.Callback):
    """Audit, guard and meter a Lightning run (see the module docstring).

    Args:
        audit_steps: optimizer steps to audit from the start of ``fit()``; 0 for none. Audited steps run slower
            (every tensor operation is looked at) and are left out of the rates.
        guard: check devices at every operation of the whole run with :func:`tangtoc.device_guard`: a mismatch
            raises an error that names the module, the tensor and the fix. Costs time at every operation.
        peak_flops: the device's peak FLOP/s for MFU, instead of ``$TANGTOC_PEAK_TFLOPS`` or tangtoc's table.
        echo: where the peak line and the audit's findings go, one string each (default: stderr; ``None``: nowhere).
    """

    def __init__(
        self, audit_steps: int = 5, guard: bool = False, peak_flops: float | None = None, echo: Echo | None = to_stderr
    ) -> None:
        self.watch = Watch(audit_steps, guard, peak_flops, echo)
        self._model: nn.Module | None = None
        self._last_step = 0

    @property
    def audit_report(self) -> AuditReport | None:
        """The audit's :class:`~tangtoc.diagnose.AuditReport`, once the audited steps are done (else ``None``)."""
        return self.watch.audit_report

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        precision = precision_of(str(trainer.precision), device)
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        self._model = declared_flops(pl_module)
        self._last_step = trainer.global_step
        main = trainer.is_global_zero
        self.watch.begin(pl_module, optimizer, device, precision, trainer.global_step, main)
        peak = self.watch.peak
        if main and peak is not None:  # the peak and its source, beside the run's other settings
            for logger in trainer.loggers:
                logger.log_hyperparams({"tangtoc/peak": peak.line})

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.watch.step_start()
        assert self._model is not None
        self.watch.batch_start(self._model, batch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.watch.batch_end()
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch of gradient accumulation: the step goes on
            return
        self._last_step = step
        self.watch.step_end(step)
        every = trainer.log_every_n_steps
        if every and step % every == 0:  # Lightning's own cadence; 0 logs nothing
            numbers = self.watch.read()
            if numbers and trainer.is_global_zero:
                # The step Lightning logs its own metrics at (and its LearningRateMonitor and DeviceStatsMonitor
                # log at): the rows line up with the module's self.log() ones in every logger.
                at = trainer.fit_loop.epoch_loop._batches_that_stepped
                for logger in trainer.loggers:
                    logger.log_metrics(numbers, step=at)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch.idle()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.watch.close()

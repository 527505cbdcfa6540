"""``TangtocCallback`` for the transformers ``Trainer``: audit the first steps, guard devices, log tokens/s and MFU.

::

    from tangtoc.integrations.hf import TangtocCallback

    trainer = Trainer(model, args, train_dataset=ds)
    TangtocCallback(audit_steps=5).attach(trainer)   # or Trainer(..., callbacks=[TangtocCallback()])
    trainer.train()

What it does is :class:`~tangtoc.integrations.watch.Watch`'s: the first ``audit_steps`` optimizer steps run under
:func:`tangtoc.audit` and its findings (syncs, copies, CPU-born tensors, each at the line that called into
transformers, with the library function) are printed and kept in :attr:`TangtocCallback.audit_report`; at every
log point ``tangtoc/tokens_per_s``, ``tangtoc/samples_per_s``, ``tangtoc/step_time_s`` and, where the peak is
known, ``tangtoc/mfu`` with ``tangtoc/peak_flops`` are added to the logs. The micro-batches are seen through a
forward pre-hook on the model (the ``Trainer`` hands callbacks no batch); evaluation forwards are not counted.

The ``Trainer`` calls its callbacks in order, and the ``report_to`` loggers (TensorBoard, W&B...) come before any
callback passed to it: numbers added to the logs there reach ``trainer.state.log_history`` and the console, not
those loggers. :meth:`TangtocCallback.attach` puts the callback first, so that they receive them too.
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
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as e:  # pragma: no cover - exercised only where transformers is missing
    raise ImportError(
        "tangtoc.integrations.hf needs transformers: pip install 'tangtoc[hf]' (or pip install transformers)."
    ) from e

__all__ = ["TangtocCallback"]


def precision_of(args: TrainingArguments, device: torch.device) -> str:
    """The precision the Trainer's matmuls run in, as :func:`~tangtoc.integrations.throughput.resolve_peak` names
    it: its mixed-precision flags, else float32 (on TF32 tensor cores where PyTorch allows it, as ``tf32=True``
    makes it)."""
    if args.bf16:
        return "bf16"
    if args.fp16:
        return "fp16"
    return "tf32" if device.type == "cuda" and tf32_matmul_enabled() else "fp32"


class TangtocCallback(TrainerCallback):
    """Audit, guard and meter a transformers ``Trainer`` run (see the module docstring).

    Args:
        audit_steps: optimizer steps to audit from the start of ``train()``; 0 for none. Audited steps run slower
            (every tensor operation is looked at) and are left out of the rates.
        guard: check devices at every operation of the whole run with :func:`tangtoc.device_guard`: a mismatch
            raises an error that names the module, the tensor and the fix. Costs time at every operation.
        peak_flops: the device's peak FLOP/s for MFU, instead of ``$TANGTOC_PEAK_TFLOPS`` or tangtoc's table.
        echo: where the peak line and the audit's findings go, one string each (default: stderr; ``None``: nowhere).

    If ``train()`` raises, the ``Trainer`` calls no callback: call :meth:`close` to end an audit or guard still
    open (the next ``train()`` closes it too).
    """

    def __init__(
        self, audit_steps: int = 5, guard: bool = False, peak_flops: float | None = None, echo: Echo | None = to_stderr
    ) -> None:
        self.watch = Watch(audit_steps, guard, peak_flops, echo)
        self._hook: Any = None
        self._first = False

    @property
    def audit_report(self) -> AuditReport | None:
        """The audit's :class:`~tangtoc.diagnose.AuditReport`, once the audited steps are done (else ``None``)."""
        return self.watch.audit_report

    def attach(self, trainer: Trainer) -> TangtocCallback:
        """Add this callback to ``trainer`` before its ``report_to`` loggers, so that they log tangtoc's numbers."""
        trainer.callback_handler.callbacks.insert(0, self)
        self._first = True
        return self

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():  # a training micro-batch, not evaluation
            self.watch.batch_start(module, kwargs if kwargs else args)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.close()  # a previous train() that raised left its hook, audit or guard behind
        model: nn.Module = kwargs["model"]
        optimizer = kwargs.get("optimizer")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
        device = args.device
        self.watch.begin(
            model, optimizer, device, precision_of(args, device), state.global_step, state.is_world_process_zero
        )
        self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        reporters = [r for r in args.report_to or () if r != "none"]
        if not self._first and reporters and state.is_world_process_zero:
            self.watch.say(
                f"tangtoc: the report_to loggers ({', '.join(reporters)}) run before this callback and will not "
                "receive tangtoc's numbers; add it with TangtocCallback(...).attach(trainer) instead."
            )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.watch.step_start()

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.watch.batch_end()

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.watch.batch_end()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.watch.step_end(state.global_step)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.watch.idle()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.watch.idle()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or "loss" not in logs:  # evaluation and the end-of-training summary are not log points
            return
        numbers = self.watch.read()
        logs.update(numbers)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(numbers)  # the Trainer stored a copy of the logs before calling us

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the audit (reporting it), the guard and the model hook, if still open; idempotent."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.watch.close()

"""One training run of :func:`tangtoc.fit`: its state and the hot loop.

The hot loop never reads a tensor on the host. Each step's loss is kept on the device (a detached 0-dim tensor
in a list); every ``log_every`` steps :mod:`~tangtoc.train.logpoint` reads them with one :func:`tangtoc.fetch`: one
transfer and one sync per log interval, whatever the number of steps. Checkpoints (:mod:`~tangtoc.train.checkpoint`),
evaluation and the end of the run (:mod:`~tangtoc.train.result`) are the other points where the host waits for the
device. What a step is (the loss rule, precision, the work a batch counts) is :mod:`tangtoc.step`'s.

Under torchrun the same loop runs on every rank (:mod:`tangtoc.train.distributed`, :mod:`tangtoc.train.strategies`).
Beyond DDP's or FSDP's own gradient collectives, the ranks talk only at those same points: one all-reduce per log
interval carries the losses, the work counts and the preemption flag; evaluation sums its loss over the ranks;
a checkpoint gathers each rank's random state and data position onto rank 0, which writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tangtoc.clock import Stopwatch, now
from tangtoc.console import ProgressBar
from tangtoc.device import synchronize
from tangtoc.errors import (
    NonFiniteLossError,
    TorchOutOfMemoryError,
    TrainingOutOfMemoryError,
)
from tangtoc.flops import ShapeFlops, resolve_peak
from tangtoc.move import fetch, to_device
from tangtoc.step import LossFn, LossRule, OptimizerFactory, default_optimizer, resolve_precision, work_counter
from tangtoc.train.batches import BatchStream, shard_data, shard_resident
from tangtoc.train.checkpoint import (
    RunState,
    check_schedule_saves,
    newest_checkpoint,
    prepare_checkpoint_dir,
    restore_run,
    save_run,
)
from tangtoc.train.config import FitConfig
from tangtoc.train.distributed import Distributed
from tangtoc.train.logpoint import GpuUsage, read_interval
from tangtoc.train.metrics import Interval, MetricsLog, Record, rates
from tangtoc.train.result import Callback, FitEvent, FitResult, build_result
from tangtoc.train.schedule import build_scheduler, first_step
from tangtoc.train.signals import PreemptionHandler
from tangtoc.train.strategies import (
    build_optimizer,
    full_norm,
    micro_step_context,
    wrap,
)


class Run:
    """The state of one fit() call. Split into methods by what they do; the hot loop is :meth:`_loop`."""

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Any],
        optimizer: torch.optim.Optimizer | OptimizerFactory | None,
        loss_fn: LossFn | None,
        eval_data: Iterable[Any] | None,
        device: torch.device,
        callbacks: tuple[Callback, ...],
        config: FitConfig,
        parallel: Distributed | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}.")
        self.rule = LossRule(loss_fn, config.loss_from)  # checks loss_from before anything moves
        self.watch = Stopwatch()
        self.cfg = config
        self.device = device
        self.parallel = parallel
        self.strategy = parallel.strategy if parallel is not None else None
        self.rank = parallel.rank if parallel is not None else 0
        self.world_size = parallel.world_size if parallel is not None else 1
        self.precision = resolve_precision(config.precision, device)
        self.scaler = self.precision.grad_scaler()
        self.model = to_device(model, device).train()
        wrapped = wrap(self.model, parallel, self.precision.name) if parallel is not None else self.model
        self.optimizer = build_optimizer(
            optimizer, self.model, lambda: default_optimizer(self.model.parameters(), device), self.strategy
        )
        self.forward = torch.compile(wrapped) if config.compile else wrapped
        self.no_sync = micro_step_context(wrapped) if config.grad_accum > 1 else None
        self.eval_data = eval_data
        self.callbacks = callbacks
        # The peak MFU divides by, with its source; FLOPs a model does not declare are counted once per batch
        # shape, when there is a peak to divide them by (tangtoc.flops).
        self.peak = resolve_peak(device, self.precision, config.peak_flops)
        self.peak_flops = self.peak.flops * self.world_size if self.peak.flops else None  # all the ranks' devices
        self.shapes = ShapeFlops() if self.peak.flops else None
        self.left_out_since = 0.0  # when the step left out of the rates (it counts FLOPs) began
        self.usage = GpuUsage(device)  # NVML's utilisation and memory for the log records, where NVML is
        if parallel is not None and config.shard_data:
            data = shard_data(data, parallel, "data")
            shard_resident(eval_data, parallel.rank, parallel.world_size, "eval_data")  # a DataLoader: whole
        self.batches = BatchStream(data, device)
        self.total_steps = self._total_steps(data)  # after sharding: an epoch is one pass over every rank's share
        self.scheduler = build_scheduler(config.scheduler, self.optimizer, self.total_steps)
        self.state = RunState(self.model, self.optimizer, self.scaler, self.batches, device, parallel, self.scheduler)
        self.step = 0
        self.start_step = 0
        self.last_logged = 0
        self.checkpoint: Path | None = None
        self.pending: list[torch.Tensor] = []  # detached per-micro-batch losses since the last log point
        self.grad_norms: list[torch.Tensor] = []
        self.interval = Interval()
        self.intervals: list[tuple[Interval, float]] = []  # (work, seconds) of every log interval so far
        self.skipped = 0
        self.last_loss: float | None = None  # the mean over the last log interval, steps loss_steps
        self.loss_steps: tuple[int, int] | None = None
        self.last_step_loss: float | None = None
        self.eval_loss: float | None = None
        self.batch_size: int | None = None
        self.preempted = False
        self.evaluated = False  # at the final step, already (a finished run resumed)
        if config.checkpoint_dir is not None:
            prepare_checkpoint_dir(config.checkpoint_dir)  # every rank: each fails alike, none waits on another
            check_schedule_saves(self.scheduler)  # before training, not at resume: its state goes in every save
            found = newest_checkpoint(config.checkpoint_dir, parallel)
            if config.resume:
                if found is not None:
                    self._restore(found)
                    self._check_steps_left(found)
            elif found is not None:
                # Mixing runs in one folder would make a later resume pick the wrong run's newest step.
                raise ValueError(
                    f"fit: resume=False, but checkpoint_dir already holds checkpoints of another run (newest: "
                    f"{found.name}). Fix: pass an empty checkpoint_dir, delete those files, or resume=True."
                )
        log_path = config.log_dir / "metrics.jsonl" if config.log_dir is not None and self.rank == 0 else None
        self.log = MetricsLog(log_path, self.start_step if self.start_step else None)
        if self.start_step == self.total_steps:  # a finished run, resumed: report what its log says
            self._recall_finished()

    def _total_steps(self, data: Iterable[Any]) -> int:
        if self.cfg.steps is not None:
            return self.cfg.steps
        try:
            per_epoch = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"fit: epochs= needs data with a length, and {type(data).__name__} has none. Pass steps= instead."
            ) from None
        total = self.cfg.epochs * per_epoch // self.cfg.grad_accum  # type: ignore[operator]
        if total < 1:
            raise ValueError(
                f"fit: {self.cfg.epochs} epoch(s) of {per_epoch} batches make no step of grad_accum="
                f"{self.cfg.grad_accum} batches. Lower grad_accum or pass more data."
            )
        return total

    # -- checkpointing (what a checkpoint holds and how ranks agree on it: tangtoc.train.checkpoint) -----------------

    def _restore(self, path: Path) -> None:
        step, self.skipped = restore_run(path, self.state)
        self.step = self.start_step = self.last_logged = step
        self.checkpoint = path

    def _check_steps_left(self, found: Path) -> None:
        if self.step > self.total_steps:
            raise ValueError(
                f"fit: the checkpoint {found} is at step {self.step}, past steps={self.total_steps}: there is "
                f"nothing to train. Fix: steps > {self.step} (--steps in the CLI) to train on from it, or another "
                "checkpoint_dir for a new run."
            )

    def _recall_finished(self) -> None:
        """Nothing is left to train: the losses are the logged ones (evaluating again would add a second eval
        record at this step each time the finished run is resumed)."""
        at_step = [r for r in self.log.records if r.get("step") == self.step]
        train = [r for r in at_step if r.get("kind") == "train" and "loss" in r]
        evals = [r for r in at_step if r.get("kind") == "eval"]
        if train:
            self.last_loss = train[-1]["loss"]
            before = [r["step"] for r in self.log.records if r.get("kind") == "train" and r["step"] < self.step]
            self.loss_steps = ((before[-1] if before else 0) + 1, self.step)
        if evals:
            self.eval_loss = evals[-1]["eval_loss"]
            self.evaluated = True

    def _save(self) -> Path:
        directory: Path = self.cfg.checkpoint_dir  # type: ignore[assignment]
        self.checkpoint = save_run(directory, self.state, self.step, self.skipped, self.cfg.keep_last)
        self.watch.lap()  # writing is not training: keep it out of the next interval's rates
        self._emit("checkpoint", {"step": self.step, "path": str(self.checkpoint)}, self.checkpoint)
        return self.checkpoint

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> FitResult:
        cfg = self.cfg
        self.watch.lap()  # the first interval starts here, set-up excluded
        with contextlib.ExitStack() as stack:
            stack.callback(self.log.close)
            stack.callback(self.usage.close)
            if self.shapes is not None:
                stack.callback(self.shapes.close)  # a step cut short by an error leaves no FLOP counter running
            stack.enter_context(self.precision.math())
            preempt = stack.enter_context(PreemptionHandler()) if cfg.checkpoint_dir is not None else None
            bar = stack.enter_context(ProgressBar(self.total_steps, self.step, cfg.progress and self.rank == 0))
            try:
                self._loop(preempt, bar)
            except TorchOutOfMemoryError as e:
                raise TrainingOutOfMemoryError(self._oom_message()) from e
            if self.preempted:
                if cfg.on_preempt == "exit":
                    raise SystemExit(0)
                return build_result(self, plot=False)
            if (
                self.eval_data is not None
                and not self.evaluated
                and (cfg.eval_every is None or self.step % cfg.eval_every)
            ):
                self._evaluate(bar)
            if cfg.checkpoint_dir is not None and (self.checkpoint is None or self.step > self.start_step):
                self._save()
        result = build_result(self, plot=True)
        self._emit("end", {"step": self.step, "loss": result.loss, "eval_loss": result.eval_loss})
        return result

    def _loop(self, preempt: PreemptionHandler | None, bar: ProgressBar) -> None:
        cfg = self.cfg
        model, optimizer, scaler, pending = self.model, self.optimizer, self.scaler, self.pending
        batches = iter(self.batches)
        # fp32 runs without even a null context manager: a tiny model's step is tens of microseconds.
        autocast = self.precision.autocast if self.precision.dtype is not None else None
        interval = self.interval
        accum, log_every, clip = cfg.grad_accum, cfg.log_every, cfg.clip_grad
        ckpt_every, eval_every = cfg.checkpoint_every, cfg.eval_every
        skip = cfg.on_nonfinite == "skip"
        params = [p for p in model.parameters() if p.requires_grad] if clip is not None else []
        count = None
        shapes, tally = self.shapes, interval  # tally: where the work goes (a scratch Interval while left out)
        parallel, quiet, last = self.parallel, self.no_sync, accum - 1
        rule, forward = self.rule, self.forward
        scheduler = self.scheduler

        def first_lr_step() -> None:
            nonlocal advance
            first_step(scheduler)  # type: ignore[arg-type]  # set only with a scheduler
            advance = scheduler.step  # type: ignore[union-attr]

        advance: Callable[[], None] | None = first_lr_step if scheduler is not None else None

        def first(batch: Any) -> torch.Tensor:
            nonlocal compute
            loss = rule.first(forward, batch)  # decides how batches become losses, and checks it, once
            compute = rule.bind(forward)
            return loss

        compute: Callable[[Any], torch.Tensor] = rule.bind(forward) if rule.decided else first

        def micro_step(batch: Any) -> None:
            if autocast is None:
                loss = compute(batch)
            else:
                with autocast():
                    loss = compute(batch)
            if accum > 1:
                loss = loss / accum
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            pending.append(loss.detach())

        for step in range(self.step + 1, self.total_steps + 1):
            for i in range(accum):
                started = now()
                batch = next(batches)
                tally.data_wait_s += now() - started  # the data wait: host time in the iterator (tangtoc.clock)
                if count is None:
                    count = work_counter(model, batch)
                samples, tokens, flops = count(batch)
                if shapes is not None and not flops:  # FLOPs the model does not declare: counted once per shape
                    flops = shapes.start(batch)
                    if flops is None:  # a new shape, under the counter: out of the rates to the step's end
                        tally = self._leave_out() if tally is interval else tally
                        flops = 0.0
                self.batch_size = samples  # for the out-of-memory message
                tally.samples += samples
                tally.tokens += tokens
                tally.flops += flops
                if quiet is not None and i < last:
                    with quiet():  # DDP: accumulate locally; the last micro-step's backward all-reduces
                        micro_step(batch)
                else:
                    micro_step(batch)
                if tally is not interval:
                    shapes.stop()  # type: ignore[union-attr]  # the backward is done: the shape's count is cached
            if skip and not self._finite(torch.stack(pending[-accum:]).sum()):
                del pending[-accum:]
                optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
            else:
                if clip is not None:
                    if scaler is not None:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    self.grad_norms.append(full_norm(torch.nn.utils.clip_grad_norm_(params, clip)))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tally.steps += 1
            if tally is not interval:
                tally = self._rejoin()
            self.step = step
            requested = preempt is not None and preempt.requested is not None
            saving = ckpt_every is not None and step % ckpt_every == 0
            stopping = False
            # A single process stops at the step the signal arrives; ranks stop together, at a log point, where
            # the flag rides the all-reduce the losses need anyway (no collective per step).
            if step % log_every == 0 or step == self.total_steps or saving or (requested and parallel is None):
                stopping = self._log_point(bar, requested)
            # After the log point, which logs the rate this step used; before a checkpoint, which must hold the
            # schedule's position after this step. Once per optimizer step, whether or not it was skipped.
            if advance is not None:
                advance()
            if saving or stopping:
                self._save()
            if eval_every is not None and step % eval_every == 0 and self.eval_data is not None:
                self._evaluate(bar)
            if stopping:
                self.preempted = True
                return

    def _leave_out(self) -> Interval:
        """Leave the step under way out of the rates, from its micro-batch of a new batch shape (run under PyTorch's
        FLOP counter, which slows it) to its end; returns the scratch interval its work goes to. The device is
        synchronized first, so that the work queued before is timed in: one sync per new shape."""
        synchronize(self.device)
        self.left_out_since = now()
        return Interval()

    def _rejoin(self) -> Interval:
        """The left-out step is done: once its work is, its time is the interval's ``left_out_s``."""
        synchronize(self.device)
        self.interval.left_out_s += now() - self.left_out_since
        return self.interval

    def _finite(self, loss_sum: torch.Tensor) -> bool:
        """Whether this step's loss is finite (on_nonfinite="skip"): one sync per step, and in a distributed run
        one all-reduce per step, so that every rank skips the same steps (their gradients are the same)."""
        if self.parallel is not None:
            loss_sum = self.parallel.sum(loss_sum)
        return bool(torch.isfinite(loss_sum).item())

    # -- the host's view: log points, evaluation, events -------------------------------------------------------------

    def _log_point(self, bar: ProgressBar, stop_requested: bool) -> bool:
        """Read the interval's losses in one fetch, stop on a non-finite one, write the record. Returns whether to
        stop for preemption: ``stop_requested`` here, or on any rank of a distributed run."""
        reading = read_interval(
            self.pending,
            self.grad_norms,
            self.cfg.grad_accum,
            self.interval,
            stop_requested,
            self.parallel,
            self.device,
        )
        seconds, elapsed = self.watch.lap()
        self.pending.clear()
        self.grad_norms.clear()
        if reading.first_bad is not None:
            index, value = reading.first_bad
            self._raise_nonfinite(self.last_logged + 1 + index, value)
        record: Record = {"kind": "train", "step": self.step}
        if reading.loss is not None:
            record["loss"] = self.last_loss = reading.loss
            self.last_step_loss = reading.last_loss
            self.loss_steps = (self.last_logged + 1, self.step)
        if reading.grad_norm is not None:
            record["grad_norm"] = reading.grad_norm
        lr = self.optimizer.param_groups[0].get("lr")
        if isinstance(lr, float):
            record["lr"] = lr
        record.update(rates(self.interval, seconds, self.peak_flops))
        record["peak_flops"], record["peak_source"] = self.peak.flops, self.peak.source  # one device's
        if self.shapes is not None and self.shapes.estimated_shapes:  # FLOPs scaled from counted shapes, so far
            record["flops_estimated_shapes"] = self.shapes.estimated_shapes
        record.update(self.usage.read())
        if self.device.type == "cuda":
            record["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if self.skipped:
            record["skipped_steps"] = self.skipped
        record["elapsed_s"] = elapsed
        self.intervals.append((self.interval.take(), seconds))
        self.last_logged = self.step
        self.log.write(record)
        bar.update(self.step, record)
        self._emit("log", record)
        return reading.stop

    def _raise_nonfinite(self, step: int, value: float) -> None:
        where = (
            f"The last good checkpoint is {self.checkpoint}; it is what resume=True continues from."
            if self.checkpoint is not None
            else "No checkpoint was written before it (pass checkpoint_dir= and checkpoint_every= to have one)."
        )
        raise NonFiniteLossError(
            f"the training loss was {value} at step {step} (found at the log point of step {self.step}). {where} "
            "Common fixes: a lower learning rate, clip_grad=1.0, precision='bf16' instead of 'fp16', or "
            "on_nonfinite='skip' to skip such steps.",
            step=step,
            checkpoint=self.checkpoint,
        )

    @torch.no_grad()
    def _evaluate(self, bar: ProgressBar) -> None:
        # Evaluation is not training: its time goes out of this interval's rates (left_out_s), and the training
        # steps since the last log point stay in. (Lapping the stopwatch here, at a step that is not a log point,
        # threw their time away and kept their work, inflating the rates.) The sync times the queued training
        # work as training; an evaluation ends with a sync anyway, the fetch of its loss.
        synchronize(self.device)
        started = now()
        self.model.eval()
        total, n = torch.zeros((), device=self.device), 0
        # The plain model: compiling it again for eval mode would cost more than it saves here.
        rule = self.rule
        loss_of = rule.bind(self.model) if rule.decided else None
        try:
            for batch in self.eval_data:  # type: ignore[union-attr]
                batch = to_device(batch, self.device)
                with self.precision.autocast():
                    if loss_of is None:  # no training step decided the rule (resumed at the last step)
                        loss = rule.first(self.model, batch, training=False)
                        loss_of = rule.bind(self.model)
                    else:
                        loss = loss_of(batch)
                total += loss.float()
                n += 1
        finally:
            self.model.train()
        if n == 0:
            raise ValueError("fit: eval_data yielded no batches; pass a list, a DataLoader or a ResidentLoader.")
        mean = total / n
        if self.parallel is not None:  # the mean over every rank's batches
            summed = self.parallel.sum(
                torch.stack([total.double(), torch.tensor(float(n), dtype=torch.float64, device=self.device)])
            )
            mean = summed[0] / summed[1]
        (value,) = fetch(mean)
        self.interval.left_out_s += now() - started
        self.eval_loss = float(value)
        record = {"kind": "eval", "step": self.step, "eval_loss": self.eval_loss}
        self.log.write(record)
        bar.note(f"eval step {self.step} | eval loss {self.eval_loss:.4f}")
        self._emit("eval", record)

    def _emit(
        self, kind: Literal["log", "eval", "checkpoint", "end"], record: Mapping[str, Any], path: Path | None = None
    ) -> None:
        for callback in self.callbacks:
            callback(FitEvent(kind=kind, step=self.step, record=record, path=path, rank=self.rank))

    def _oom_message(self) -> str:
        b, g = self.batch_size, self.cfg.grad_accum
        if b is None or b < 2:
            fix = "Fix: a smaller model, precision='bf16', or compile=True (fuses kernels, fewer activations kept)."
        else:
            fix = (
                f"Fix: halve the batch and double the accumulation (batch size {b // 2}, grad_accum={2 * g}) to "
                f"keep the same {b * g} samples per step; precision='bf16' and compile=True also lower memory."
            )
        return (
            f"{self.device} ran out of memory at step {self.step + 1} with batch size {b} (grad_accum={g}, "
            f"precision={self.precision.name}). {fix}"
        )

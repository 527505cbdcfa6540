"""One training run of :func:`tangtoc.fit`: the state, the hot loop, log points, checkpoints and the result.

The hot loop never reads a tensor on the host. Each step's loss is kept on the device (a detached 0-dim tensor
in a list); every ``log_every`` steps they are stacked, checked for NaN/inf and averaged on the device, and read
with one :func:`tangtoc.fetch`: one transfer and one sync per log interval, whatever the number of steps.
Checkpoints, evaluation and the end of the run are the other points where the host waits for the device.

Under torchrun the same loop runs on every rank (:mod:`tangtoc.train.distributed`, :mod:`tangtoc.train.strategies`).
Beyond DDP's or FSDP's own gradient collectives, the ranks talk only at those same points: one all-reduce per log
interval carries the losses, the work counts and the preemption flag; evaluation sums its loss over the ranks;
a checkpoint gathers each rank's random state and data position onto rank 0, which writes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tangtoc.clock import Stopwatch
from tangtoc.device import describe
from tangtoc.move import fetch, to_device
from tangtoc.train.batches import BatchStream, shard_resident, work_counter
from tangtoc.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tangtoc.train.config import FitConfig
from tangtoc.train.distributed import Distributed
from tangtoc.train.errors import (
    CheckpointError,
    DistributedError,
    NonFiniteLossError,
    TorchOutOfMemoryError,
    TrainingOutOfMemoryError,
)
from tangtoc.train.metrics import Interval, MetricsLog, ProgressBar, Record, plot_loss, rates
from tangtoc.train.precision import resolve_precision, tf32_matmuls
from tangtoc.train.signals import PreemptionHandler
from tangtoc.train.strategies import (
    OptimizerFactory,
    build_optimizer,
    checkpoint_family,
    full_norm,
    load_state_dicts,
    micro_step_context,
    state_dicts,
    wrap,
)

LossFn = Callable[[Any, Any], torch.Tensor]
DEFAULT_LR = 1e-3


@dataclass(frozen=True, slots=True)
class FitEvent:
    """What a callback receives: a ``"log"``, ``"eval"``, ``"checkpoint"`` or ``"end"`` event at ``step``, with
    the host-side numbers of that moment (already fetched: a callback costs no extra sync). In a distributed run
    callbacks are called on every rank with the same numbers (summed or averaged over the ranks); ``rank`` says
    which one is calling, for a callback that should act once (``if event.rank == 0``)."""

    kind: Literal["log", "eval", "checkpoint", "end"]
    step: int
    record: Mapping[str, Any]
    path: Path | None = None  # the checkpoint written, for "checkpoint" events
    rank: int = 0


Callback = Callable[[FitEvent], None]


@dataclass(slots=True)
class FitResult:
    """The outcome of :func:`fit`. Rates are over the log intervals after the first one (which includes warm-up
    and compilation) when there is more than one; ``None`` where not measured or not known. In a distributed
    run, losses are the mean over the ranks, rates the sum over them, MFU a fraction of all their devices' peak,
    and peak memory this rank's own; ``metrics_path`` and ``plot_path`` are set on rank 0, which writes them."""

    step: int  # optimizer steps done in total, resumed ones included
    start_step: int  # the step this call resumed from (0 for a fresh run)
    device: str
    precision: str
    loss: float | None  # mean training loss of the last log interval
    eval_loss: float | None
    wall_time_s: float  # this call, set-up and evaluation included
    samples_per_s: float | None
    tokens_per_s: float | None
    mfu: float | None  # fraction of the device's published peak for this precision
    peak_memory_bytes: int | None  # CUDA only: torch.cuda.max_memory_allocated
    strategy: str  # "single", "ddp" or "fsdp"
    world_size: int  # processes that trained together (1 for a single process)
    skipped_steps: int  # steps skipped for a non-finite loss (on_nonfinite="skip")
    preempted: bool
    checkpoint: Path | None  # the newest checkpoint written or resumed from
    metrics_path: Path | None
    plot_path: Path | None
    history: list[Record] = field(default_factory=list)


def default_optimizer(model: nn.Module, device: torch.device, lr: float = DEFAULT_LR) -> torch.optim.Optimizer:
    """AdamW over every parameter with torch's defaults and ``lr``; the fused kernel (one launch for all
    parameters) on CUDA."""
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")


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
            optimizer, self.model, lambda: default_optimizer(self.model, device), self.strategy
        )
        self.forward = torch.compile(wrapped) if config.compile else wrapped
        self.no_sync = micro_step_context(wrapped) if config.grad_accum > 1 else None
        self.loss_fn = loss_fn
        self.eval_data = eval_data
        self.callbacks = callbacks
        info = describe(device)
        peak = info.peak_flops.get(self.precision.peak_key()) if info.peak_flops else None
        self.peak_flops = peak * self.world_size if peak else None  # MFU of all the ranks' devices together
        if parallel is not None:
            shard_resident(data, parallel.rank, parallel.world_size, "data")
            shard_resident(eval_data, parallel.rank, parallel.world_size, "eval_data")
        self.batches = BatchStream(data, device)
        self.total_steps = self._total_steps(data)
        self.step = 0
        self.start_step = 0
        self.last_logged = 0
        self.checkpoint: Path | None = None
        self.pending: list[torch.Tensor] = []  # detached per-micro-batch losses since the last log point
        self.grad_norms: list[torch.Tensor] = []
        self.interval = Interval()
        self.intervals: list[tuple[Interval, float]] = []  # (work, seconds) of every log interval so far
        self.skipped = 0
        self.last_loss: float | None = None
        self.eval_loss: float | None = None
        self.batch_size: int | None = None
        self.preempted = False
        if config.checkpoint_dir is not None:
            found = self._newest_checkpoint(config.checkpoint_dir)
            if config.resume:
                if found is not None:
                    self._restore(found)
            elif found is not None:
                # Mixing runs in one folder would make a later resume pick the wrong run's newest step.
                raise ValueError(
                    f"fit: resume=False, but checkpoint_dir already holds checkpoints of another run (newest: "
                    f"{found.name}). Fix: pass an empty checkpoint_dir, delete those files, or resume=True."
                )
        log_path = config.log_dir / "metrics.jsonl" if config.log_dir is not None and self.rank == 0 else None
        self.log = MetricsLog(log_path, self.start_step if self.start_step else None)

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

    # -- resuming and checkpointing ------------------------------------------------------------------------------

    def _newest_checkpoint(self, directory: Path) -> Path | None:
        """The newest checkpoint in ``directory``, which every rank must see alike (each reads it to resume)."""
        found = latest_checkpoint(directory)
        if self.parallel is None:
            return found
        seen = self.parallel.all_gather(found.name if found is not None else None)
        if len(set(seen)) > 1:
            views = ", ".join(f"rank {r}: {name or 'none'}" for r, name in enumerate(seen))
            raise DistributedError(
                f"the ranks see different newest checkpoints in {directory} ({views}). Every rank reads the "
                "checkpoint it resumes from, so checkpoint_dir must be one folder that every machine shares (a "
                "network filesystem), not a local folder on each."
            )
        return found

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, mmap=self.parallel is not None)
        saved_world = int(state.get("world_size", 1))
        saved_strategy = state.get("strategy", "single")
        if saved_world != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by a run of {saved_world} process(es); this one has "
                f"{self.world_size}. Each rank's data position and random state are saved, so resume with the same "
                "number of processes. To start a new run from its weights only, load state['model'] (from "
                "tangtoc.train.load_checkpoint) into the model and train with another checkpoint_dir."
            )
        if checkpoint_family(saved_strategy) != checkpoint_family(self.strategy):
            raise CheckpointError(
                f"checkpoint {path} was written with strategy {saved_strategy!r}, whose optimizer state this run "
                f"({self.strategy or 'single'!r}) cannot load: FSDP keys it by parameter name, DDP and a single "
                "process by index. Resume with the strategy that wrote it."
            )
        try:
            load_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"], self.strategy)
        except (RuntimeError, ValueError, KeyError) as e:
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise CheckpointError(
                f"checkpoint {path} does not match this model or optimizer: {detail[:400]} Fix: use another "
                "checkpoint_dir, or delete its checkpoints to start afresh."
            ) from e
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.rank] if saved_world > 1 else state
        set_rng_state(mine["rng"], self.device)
        self.batches.load_state_dict(mine["data"])
        self.step = self.start_step = self.last_logged = int(state["step"])
        self.skipped = int(state.get("skipped_steps", 0))
        self.checkpoint = path

    def _save(self) -> Path:
        directory: Path = self.cfg.checkpoint_dir  # type: ignore[assignment]
        model_state, optimizer_state = state_dicts(self.model, self.optimizer, self.strategy)  # FSDP: a collective
        mine = {"rng": rng_state(self.device), "data": self.batches.state_dict()}
        ranks = self.parallel.gather(mine) if self.parallel is not None and self.world_size > 1 else None
        if self.rank == 0:
            state = {
                "step": self.step,
                "model": model_state,
                "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                **mine,  # rank 0's, so that the format stays the same as a single process's
                "skipped_steps": self.skipped,
                "world_size": self.world_size,
                "strategy": self.strategy or "single",
            }
            if ranks is not None:
                state["ranks"] = ranks
            save_checkpoint(state, directory, keep_last=self.cfg.keep_last)
        if self.parallel is not None:
            self.parallel.barrier()  # whatever a rank does next (exit, resume, read it), the file is complete
        self.checkpoint = checkpoint_path(directory, self.step)
        self.watch.lap()  # writing is not training: keep it out of the next interval's rates
        self._emit("checkpoint", {"step": self.step, "path": str(self.checkpoint)}, self.checkpoint)
        return self.checkpoint

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> FitResult:
        cfg = self.cfg
        self.watch.lap()  # the first interval starts here, set-up excluded
        with contextlib.ExitStack() as stack:
            stack.callback(self.log.close)
            stack.enter_context(tf32_matmuls(self.device))
            preempt = stack.enter_context(PreemptionHandler()) if cfg.checkpoint_dir is not None else None
            bar = stack.enter_context(ProgressBar(self.total_steps, self.step, cfg.progress and self.rank == 0))
            try:
                self._loop(preempt, bar)
            except TorchOutOfMemoryError as e:
                raise TrainingOutOfMemoryError(self._oom_message()) from e
            if self.preempted:
                if cfg.on_preempt == "exit":
                    raise SystemExit(0)
                return self._result(plot=False)
            if self.eval_data is not None and (cfg.eval_every is None or self.step % cfg.eval_every):
                self._evaluate()
            if cfg.checkpoint_dir is not None and (self.checkpoint is None or self.step > self.start_step):
                self._save()
        result = self._result(plot=True)
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
        compute: Callable[[Any], torch.Tensor] = self._first_loss
        loss_of = self._loss_closure(self.forward)
        count = None
        parallel, quiet, last = self.parallel, self.no_sync, accum - 1

        def micro_step(batch: Any) -> None:
            nonlocal compute
            if autocast is None:
                loss = compute(batch)
            else:
                with autocast():
                    loss = compute(batch)
            compute = loss_of
            if accum > 1:
                loss = loss / accum
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            pending.append(loss.detach())

        for step in range(self.step + 1, self.total_steps + 1):
            for i in range(accum):
                batch = next(batches)
                if count is None:
                    count = work_counter(model, batch)
                samples, tokens, flops = count(batch)
                self.batch_size = samples  # for the out-of-memory message
                interval.samples += samples
                interval.tokens += tokens
                interval.flops += flops
                if quiet is not None and i < last:
                    with quiet():  # DDP: accumulate locally; the last micro-step's backward all-reduces
                        micro_step(batch)
                else:
                    micro_step(batch)
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
            interval.steps += 1
            self.step = step
            requested = preempt is not None and preempt.requested is not None
            saving = ckpt_every is not None and step % ckpt_every == 0
            stopping = False
            # A single process stops at the step the signal arrives; ranks stop together, at a log point, where
            # the flag rides the all-reduce the losses need anyway (no collective per step).
            if step % log_every == 0 or step == self.total_steps or saving or (requested and parallel is None):
                stopping = self._log_point(bar, requested)
            if saving or stopping:
                self._save()
            if eval_every is not None and step % eval_every == 0 and self.eval_data is not None:
                self._evaluate()
            if stopping:
                self.preempted = True
                return

    def _finite(self, loss_sum: torch.Tensor) -> bool:
        """Whether this step's loss is finite (on_nonfinite="skip"): one sync per step, and in a distributed run
        one all-reduce per step, so that every rank skips the same steps (their gradients are the same)."""
        if self.parallel is not None:
            loss_sum = self.parallel.sum(loss_sum)
        return bool(torch.isfinite(loss_sum).item())

    def _loss_closure(self, forward: Callable[..., Any]) -> Callable[[Any], torch.Tensor]:
        """``batch -> loss`` through ``forward``, with the loss_fn question settled once, not per batch."""
        loss_fn = self.loss_fn
        if loss_fn is not None:

            def supervised(batch: Any) -> torch.Tensor:
                inputs, targets = batch
                return loss_fn(forward(inputs), targets)

            return supervised

        def self_supervised(batch: Any) -> torch.Tensor:
            if isinstance(batch, (tuple, list)):
                return forward(*batch)
            if isinstance(batch, Mapping):
                return forward(**batch)
            return forward(batch)

        return self_supervised

    def _first_loss(self, batch: Any) -> torch.Tensor:
        """The loss of the first batch, checking what every later batch is then trusted to be."""
        if self.loss_fn is not None and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            kind = (
                f"a {type(batch).__name__} of {len(batch)}"
                if isinstance(batch, (tuple, list))
                else type(batch).__name__
            )
            raise ValueError(
                f"fit(loss_fn=...) trains on batches (inputs, targets), got {kind}. Fix: yield pairs, or pass "
                "loss_fn=None and let the model return the loss from model(*batch)."
            )
        loss = self._loss_closure(self.forward)(batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            who = "loss_fn" if self.loss_fn is not None else "the model, called as model(*batch) since loss_fn=None,"
            raise ValueError(
                f"fit: {who} must return the loss as a one-element tensor, got {got}. Fix: pass a loss_fn (e.g. "
                "torch.nn.functional.cross_entropy), or make the model return its loss when given targets."
            )
        if not loss.requires_grad:
            raise ValueError(
                "fit: the loss does not require grad, so nothing would be trained. Check that the model's "
                "parameters have requires_grad=True and that the loss is not computed under torch.no_grad()."
            )
        return loss

    # -- the host's view: log points, evaluation, events -------------------------------------------------------------

    def _log_point(self, bar: ProgressBar, stop_requested: bool) -> bool:
        """Read the interval's losses in one fetch, stop on a non-finite one, write the record. Returns whether to
        stop for preemption: ``stop_requested`` here, or on any rank of a distributed run."""
        first_step = self.last_logged + 1
        has_loss, has_norm = bool(self.pending), bool(self.grad_norms)
        values: list[torch.Tensor] = []
        per_step = None
        if has_loss:
            losses = torch.stack(self.pending).float()
            per_step = losses.view(-1, self.cfg.grad_accum).sum(1) if self.cfg.grad_accum > 1 else losses
        work = self.interval
        if self.parallel is not None:
            # The one all-reduce of the interval: every rank's per-step losses, work counts and preemption flag.
            host = [work.samples, work.tokens, work.flops, float(stop_requested)]
            counts = torch.tensor(host, dtype=torch.float64).to(self.device)
            summed = self.parallel.sum(torch.cat([per_step.double(), counts]) if per_step is not None else counts)
            if per_step is not None:
                per_step = summed[: per_step.numel()] / self.world_size  # the mean of the ranks' mean losses
            values += list(summed[-len(host) :].unbind())
        if per_step is not None:
            n = per_step.numel()
            first_bad = torch.where(torch.isfinite(per_step), n, torch.arange(n, device=per_step.device)).min()
            # gather, not per_step[first_bad]: indexing with a 0-dim tensor can turn it into a Python int (a sync).
            values += [per_step.mean(), first_bad, per_step.gather(0, first_bad.clamp(max=n - 1).view(1))]
        if has_norm:
            values.append(torch.stack(self.grad_norms).float().mean())
        fetched = fetch(*values)  # the one transfer and sync of the interval
        seconds, elapsed = self.watch.lap()
        self.pending.clear()
        self.grad_norms.clear()
        stop = stop_requested
        if self.parallel is not None:  # the sums over the ranks replace this rank's counts
            samples, tokens, flops, stops = fetched[:4]
            work.samples, work.tokens, work.flops = int(samples), int(tokens), float(flops)
            stop = stops > 0
            fetched = fetched[4:]
        record: Record = {"kind": "train", "step": self.step}
        if has_loss:
            mean, bad_index, bad_value = fetched[:3]
            if bad_index < n:  # only with on_nonfinite="raise": "skip" never keeps a non-finite loss
                self._raise_nonfinite(first_step + int(bad_index), float(bad_value))
            record["loss"] = self.last_loss = float(mean)
        if has_norm:
            record["grad_norm"] = float(fetched[-1])
        lr = self.optimizer.param_groups[0].get("lr")
        if isinstance(lr, float):
            record["lr"] = lr
        record.update(rates(self.interval, seconds, self.peak_flops))
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
        return stop

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
    def _evaluate(self) -> None:
        self.model.eval()
        total, n = torch.zeros((), device=self.device), 0
        # The plain model: compiling it again for eval mode would cost more than it saves here.
        loss_of = self._loss_closure(self.model)
        try:
            for batch in self.eval_data:  # type: ignore[union-attr]
                batch = to_device(batch, self.device)
                with self.precision.autocast():
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
        self.watch.lap()  # evaluation time is not training time: keep it out of the next interval's rates
        self.eval_loss = float(value)
        record = {"kind": "eval", "step": self.step, "eval_loss": self.eval_loss}
        self.log.write(record)
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

    def _result(self, *, plot: bool) -> FitResult:
        steady = self.intervals[1:] or self.intervals  # the first interval holds warm-up and compilation
        work, seconds = Interval(), 0.0
        for interval, lap in steady:
            work.add(interval)
            seconds += lap
        summary = rates(work, seconds, self.peak_flops)
        plot_path = None
        if plot and self.cfg.log_dir is not None and self.rank == 0:
            plot_path = plot_loss(self.log.records, self.cfg.log_dir / "loss.png")
        return FitResult(
            step=self.step,
            start_step=self.start_step,
            device=str(self.device),
            precision=self.precision.name,
            loss=self.last_loss,
            eval_loss=self.eval_loss,
            wall_time_s=self.watch.lap()[1],
            samples_per_s=summary.get("samples_per_s"),
            tokens_per_s=summary.get("tokens_per_s"),
            mfu=summary.get("mfu"),
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            strategy=self.strategy or "single",
            world_size=self.world_size,
            skipped_steps=self.skipped,
            preempted=self.preempted,
            checkpoint=self.checkpoint,
            metrics_path=self.log.path,
            plot_path=plot_path,
            history=list(self.log.records),
        )

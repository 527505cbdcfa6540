"""fit()'s settings as one typed config, validated on entry; every error names the argument."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tangtoc.step import PRECISIONS, LossFrom
from tangtoc.train.distributed import DEFAULT_TIMEOUT_S, check_strategy

NONFINITE_POLICIES = ("raise", "skip")
PREEMPT_POLICIES = ("exit", "return")


def _positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"fit: {name} must be an int >= 1{extra}, got {value!r}.")


@dataclass(kw_only=True, slots=True)
class FitConfig:
    """Everything about *how* :func:`~tangtoc.train.fit` trains; see its docstring for each field."""

    steps: int | None = None
    epochs: int | None = None
    precision: str = "auto"
    compile: bool = False
    grad_accum: int = 1
    clip_grad: float | None = None
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int | None = None
    keep_last: int = 3
    resume: bool = True
    on_nonfinite: str = "raise"
    on_preempt: str = "exit"
    progress: bool = True
    log_dir: Path | None = None
    strategy: str = "auto"
    dist_timeout_s: float = DEFAULT_TIMEOUT_S
    loss_from: LossFrom | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"fit: pass exactly one of steps= or epochs=, got steps={self.steps!r}, epochs={self.epochs!r}."
            )
        _positive_int("steps", self.steps, allow_none=True)
        _positive_int("epochs", self.epochs, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"fit: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        _positive_int("grad_accum", self.grad_accum)
        if self.clip_grad is not None and (isinstance(self.clip_grad, bool) or not self.clip_grad > 0):
            raise ValueError(f"fit: clip_grad must be a number > 0 or None, got {self.clip_grad!r}.")
        _positive_int("log_every", self.log_every)
        _positive_int("eval_every", self.eval_every, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("keep_last", self.keep_last)
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"fit: on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}.")
        if self.on_preempt not in PREEMPT_POLICIES:
            raise ValueError(f"fit: on_preempt must be 'exit' or 'return', got {self.on_preempt!r}.")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError(
                f"fit: checkpoint_every={self.checkpoint_every} needs somewhere to write; pass checkpoint_dir=."
            )
        check_strategy(self.strategy)
        if isinstance(self.dist_timeout_s, bool) or not (
            isinstance(self.dist_timeout_s, (int, float)) and self.dist_timeout_s > 0
        ):
            raise ValueError(f"fit: dist_timeout_s must be a number of seconds > 0, got {self.dist_timeout_s!r}.")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        self.log_dir = Path(self.log_dir) if self.log_dir is not None else self.checkpoint_dir

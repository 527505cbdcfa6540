"""Preemption: a scheduler's SIGTERM (or SLURM's SIGUSR1) asks the run to stop; the loop finishes its step,
checkpoints and leaves, instead of dying mid-step and losing everything since the last checkpoint. And, for the
commands and benchmarks that save as they go, SIGTERM raised as an interrupt, so their partial results are written."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

#: Signals treated as "stop soon": SIGTERM (Kubernetes, SLURM, systemd) and SIGUSR1 (SLURM's --signal) where the
#: platform has it.
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None
)


class PreemptionHandler:
    """A context manager that records preemption signals instead of dying of them, and restores the previous
    handlers on exit. The loop polls :attr:`requested` (a plain attribute: no system call per step).

    Python lets only the main thread install handlers; elsewhere this does nothing and :attr:`active` is False.
    """

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self.active = False
        self._previous: dict[signal.Signals, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum)

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            self.active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self.active = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was: a ``KeyboardInterrupt`` so that the code that already writes its
    partial result on Ctrl-C (``finally`` blocks, ``except KeyboardInterrupt``) does the same on a ``timeout`` or a
    scheduler's kill, which would otherwise end the process without running any of it."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of killing the process; the previous handler is
    restored on exit. For commands and benchmarks that save what they measured as they go (``fit`` handles
    preemption itself, with a checkpoint). Outside the main thread, where Python installs no handlers, it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"terminated by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

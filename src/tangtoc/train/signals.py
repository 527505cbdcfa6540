"""Preemption: a scheduler's SIGTERM (or SLURM's SIGUSR1) asks the run to stop; the loop finishes its step,
checkpoints and leaves, instead of dying mid-step and losing everything since the last checkpoint."""

from __future__ import annotations

import signal
import threading
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

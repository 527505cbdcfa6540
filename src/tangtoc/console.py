"""Every line tangtoc writes to a terminal goes through here: the consoles, fit's progress, the plain lines.

* :func:`console` — the one way to build a rich console (the CLI's tables and reports, fit's progress);
* :func:`say` — a line as is on such a console: no markup, no emoji codes, never wrapped;
* :func:`to_stderr` — a plain line on stderr, for code that has no console (a trainer callback's notes, a
  script's exit message or traceback as ``python`` would show it);
* :class:`ProgressBar` — fit's progress at log points: a bar on a terminal, one plain line per log point elsewhere.

Nothing else in tangtoc prints or builds a console (``tests/test_console.py`` checks it; ``cli/`` renders through
:func:`console`), so where output goes, how wide it is and how it degrades off a terminal is decided once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tangtoc.flops import mfu_text


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): as wide as the terminal, 160 columns when piped."""
    stream = sys.stderr if stderr else sys.stdout
    # Piped into a log or CI, rich falls back to 80 columns and wraps wide tables into unreadable towers.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    # Errors go to stderr unwrapped: a path or a command cut in two cannot be copied back into a terminal.
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=stderr)


def say(where: Console, text: str) -> None:
    """Print ``text`` as is: no markup (code has brackets), no emoji codes (``:x:`` stays ``:x:``), no wrapping
    (file:line and code stay on one line)."""
    where.print(text, markup=False, emoji=False, soft_wrap=True)


def to_stderr(text: str) -> None:
    """``text`` on stderr as a plain line, flushed: where trainers write their own progress, and where ``python``
    writes a script's traceback. Also the default ``echo`` of the trainer callbacks."""
    print(text, file=sys.stderr, flush=True)


class ProgressBar:
    """Progress on stderr at log points only (nothing is drawn between them): a rich bar on a terminal and in a
    notebook (rich draws it there through ipywidgets), and one plain line per log point anywhere else (a pipe, a
    log file, nohup, a batch job), where a redrawn bar would show nothing until the run ends.

    ``out`` is the console to draw on (default: :func:`console` on stderr).
    """

    def __init__(self, total: int, start: int, enabled: bool, out: Console | None = None) -> None:
        self._console = out or console(stderr=True)
        self._total = total
        self._enabled = enabled
        self._progress = None
        if enabled and _draws_live(self._console):
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, step: int, record: Mapping[str, Any]) -> None:
        """Show the log point at optimizer step ``step``, from its record (loss, rates, elapsed time)."""
        if not self._enabled:
            return
        info = _info(record)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
            return
        elapsed = f" | {record['elapsed_s']:.1f} s elapsed" if "elapsed_s" in record else ""
        # One line whatever width rich assumes for a file: say() never wraps.
        say(self._console, f"train step {step}/{self._total} | {info}{elapsed}")

    def note(self, line: str) -> None:
        """A line of its own (an evaluation's result), printed above the bar or among the log lines."""
        if self._enabled:
            say(self._console, line)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _draws_live(out: Console) -> bool:
    """Whether a redrawn bar is seen as it runs: on a terminal, or in Jupyter when ipywidgets is installed (without
    it rich only warns, and the plain lines serve better)."""
    if out.is_terminal and not out.is_dumb_terminal:
        return True
    return out.is_jupyter and importlib.util.find_spec("ipywidgets") is not None


def _info(record: Mapping[str, Any]) -> str:
    parts = [f"loss {record['loss']:.4f}"] if "loss" in record else []
    if "lr" in record:  # the rate this interval's last step trained with (a schedule's value for that step)
        parts.append(f"lr {record['lr']:.3g}")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    elif "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    if "peak_source" in record and record["peak_flops"] is None:
        parts.append("MFU n/a")  # why (no published peak for this device) is said once, in the run's summary
    elif "peak_source" in record:  # MFU beside the peak it divides by and that peak's source
        parts.append(mfu_text(record.get("mfu"), record["peak_flops"], record["peak_source"]))
    return " | ".join(parts)

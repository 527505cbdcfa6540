"""Run a training script unmodified, as ``python SCRIPT ARGS...`` would, and see where its steps end.

One runner for every tool that watches a script from outside (``tangtoc audit``, ``tangtoc profile``):

* :func:`load_script` refuses, before anything runs, what ``python`` would refuse (a missing file, a folder, a
  file that is not valid in its encoding, a syntax error), with a message that says what to do;
* :func:`run_script` runs it with ``sys.argv``, ``__main__`` and the script's folder first on ``sys.path``, inside
  the watcher's context, and returns its exit status, the error it raised (its traceback shown as ``python``
  would show it, from the script's first frame) or that it was interrupted (Ctrl-C, or its own
  ``KeyboardInterrupt``): the watcher still holds what it saw of the steps before;
* :class:`Steps` says where a training step ends: each ``step()`` of the first optimizer that steps, or each
  :func:`mark_step` once it is called. Only the thread that started watching is counted; optimizer steps in other
  threads are counted apart, so a report can say that it did not see them.
"""

from __future__ import annotations

import io
import os
import runpy
import sys
import threading
import tokenize
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from tangtoc.console import to_stderr
from tangtoc.errors import ScriptError, UsageError

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130  # 130 = 128 + SIGINT, as a shell reports a process Ctrl-C ended


class StopScript(BaseException):
    """Raised at the end of the last step a watcher asked for; the watcher swallows it on exit.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that a training loop's ``except Exception`` does not
    catch it and keep going.
    """

    def __init__(self, owner: object, message: str) -> None:
        super().__init__(message)
        self.owner = owner


def load_script(name: str) -> Path:
    """The path of the script ``name``, checked as ``python`` would check it, before anything runs.

    Raises:
        UsageError: no file there, or a folder.
        ScriptError: not valid text in its declared encoding (UTF-8 when it declares none), or a syntax error;
            the message quotes Python's.
    """
    path = Path(name)
    if path.is_dir():
        raise UsageError(
            f"{name!r} is a folder, not a script. Give the path of the Python file that trains, e.g. "
            f"{str(path / 'train.py')!r}."
        )
    if not path.is_file():
        raise UsageError(f"no such file: {name!r}. Give the path of a Python script, as you would to `python`.")
    source = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError:  # a first line that is not UTF-8, or a bad declaration: compile() says which below
        encoding = "utf-8"
    try:
        source.decode(encoding)  # compile() lets bad bytes in comments through; `python` does not
    except (UnicodeDecodeError, LookupError) as e:
        reason = (
            f"byte {e.object[e.start : e.start + 1]!r} at offset {e.start}: {e.reason}"
            if isinstance(e, UnicodeDecodeError)
            else str(e)
        )
        raise ScriptError(
            f"{path} is not valid {encoding} text ({reason}), so Python refuses to run it and nothing was run. "
            "Save it as UTF-8, or declare its encoding on its first line, e.g. `# -*- coding: latin-1 -*-`."
        ) from e
    try:
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise ScriptError(
            f"{path} has a syntax error, so nothing was run:\n"
            + "".join(traceback.format_exception_only(type(e), e)).rstrip()
        ) from e
    return path


@dataclass(frozen=True, slots=True)
class ScriptRun:
    """How the script ended: its exit status as ``python SCRIPT`` would give it, the error it raised
    (``"ValueError: no such column"``), and whether it was interrupted (Ctrl-C or its own ``KeyboardInterrupt``)."""

    status: int
    error: str | None = None
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"exit_status": self.status, "error": self.error, "interrupted": self.interrupted}


def run_script(path: Path, script_args: list[str], within: AbstractContextManager[Any]) -> ScriptRun:
    """Run ``path`` as ``python`` would, inside ``within`` (a watcher that swallows its own :class:`StopScript`).

    The script's own error is shown as ``python`` shows it, from the script's first frame; a ``SystemExit`` gives
    its status. ``sys.argv`` and ``sys.path`` are restored on every way out.
    """
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *script_args]
    sys.path.insert(0, str(path.resolve().parent))
    entered = False
    try:
        with within:
            entered = True
            runpy.run_path(str(path), run_name="__main__")
        return ScriptRun(0)
    except SystemExit as e:
        return ScriptRun(_exit_code(e.code))
    except KeyboardInterrupt:
        return ScriptRun(EXIT_INTERRUPTED, interrupted=True)
    except BaseException as e:  # the script's own error: shown as `python SCRIPT` would show it
        if not entered:  # the watcher could not start: tangtoc's error, not the script's
            raise
        shown = traceback.format_exception(type(e), e, _user_traceback(e.__traceback__, str(path.resolve())))
        to_stderr("".join(shown).rstrip("\n"))
        return ScriptRun(EXIT_FAILED, "".join(traceback.format_exception_only(type(e), e)).strip())
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def _user_traceback(tb: TracebackType | None, script: str) -> TracebackType | None:
    """``tb`` from the script's first frame on: tangtoc's and runpy's frames are not the user's."""
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    return tb


def _exit_code(code: object) -> int:
    """What `python SCRIPT` exits with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    to_stderr(str(code))
    return 1


_watchers: list[Steps] = []
_watchers_lock = threading.Lock()


def mark_step() -> None:
    """End the current step of every active watcher (:func:`~tangtoc.diagnose.audit`, :func:`~tangtoc.profile`);
    a no-op when none is active.

    For loops without an optimizer (evaluation, custom updates) or with several: once called, steps are counted
    only from these marks. Put it at the end of each iteration.
    """
    for steps in tuple(_watchers):
        steps.mark(sys._getframe(1))


StepCallback = Callable[[str, FrameType], None]


class Steps:
    """Where a training step ends, in the thread that installs it: calls ``on_step(source, frame)`` at each end.

    ``source`` is ``"optimizer.step()"`` (the first optimizer that steps sets the cadence: a GAN has two) or
    ``"mark_step()"`` (from the first call on, optimizer steps no longer end steps); ``frame`` is the caller's.
    ``on_optimizer`` is called once with the optimizer that sets the cadence. Optimizer steps in other threads
    are not steps of this thread: they are counted in ``other_thread_steps``, and nothing is raised there.
    """

    def __init__(self, on_step: StepCallback, on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None):
        self.on_step = on_step
        self.on_optimizer = on_optimizer
        self.thread = threading.get_ident()
        self.cadence: torch.optim.Optimizer | None = None
        self.marked = False
        self.other_thread_steps = 0
        self._hooks: list[Any] = []
        # An optimizer whose step() calls super().step() runs the hooks once per class in the chain (torch wraps
        # each class's step); only the outermost call is a step.
        self._nesting = 0

    def owns(self) -> bool:
        """Whether the calling thread is the watched one."""
        return threading.get_ident() == self.thread

    def install(self) -> None:
        self.thread = threading.get_ident()
        self._hooks = [
            register_optimizer_step_pre_hook(self._before_optimizer_step),
            register_optimizer_step_post_hook(self._on_optimizer_step),
        ]
        with _watchers_lock:
            _watchers.append(self)

    def uninstall(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()
        with _watchers_lock:
            if self in _watchers:
                _watchers.remove(self)

    def mark(self, frame: FrameType) -> None:
        if not self.owns():
            return
        self.marked = True
        self.on_step("mark_step()", frame)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.owns():
            self._nesting += 1

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.owns():
            self.other_thread_steps += 1
            return
        self._nesting = max(self._nesting - 1, 0)
        if self.marked or self._nesting:
            return
        if self.cadence is None:
            self.cadence = optimizer
            if self.on_optimizer is not None:
                self.on_optimizer(optimizer)
        if optimizer is self.cadence:
            self.on_step("optimizer.step()", sys._getframe(1))

"""Which Python frame is the user's own: the ``file:line`` a diagnosis points at.

A sync or a stray tensor is found deep inside PyTorch (or tangtoc, or another installed library); the
line worth reporting is the first one up the stack that the user wrote. Library frames are those of
PyTorch, tangtoc, anything under ``site-packages``/``dist-packages``, the standard library and frozen
modules (``<frozen runpy>``). Everything else is the user's: scripts, notebooks, ``<stdin>``, tests.
"""

from __future__ import annotations

import ast
import functools
import linecache
import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

import torch

import tangtoc

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_STDLIB_DIRS = tuple({os.path.abspath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")})
_LIBRARY_DIRS = (_TORCH_DIR, os.path.dirname(os.path.abspath(tangtoc.__file__)) + os.sep, *_STDLIB_DIRS)
_SITE_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
# Frames between a user's call and a TorchFunctionMode handler: the override machinery and the Python
# implementations of overridable functions (Tensor.__format__, torch.unique's boolean dispatch, ...).
_TORCH_PLUMBING = frozenset(
    os.path.join(_TORCH_DIR, name) for name in ("overrides.py", "_tensor.py", "functional.py", "_jit_internal.py")
)
_library_cache: dict[str, bool] = {}


def is_library_file(filename: str) -> bool:
    """True for files of PyTorch, tangtoc, installed packages, the standard library and frozen modules."""
    known = _library_cache.get(filename)
    if known is None:
        if filename.startswith("<"):
            known = filename.startswith("<frozen")
        else:
            path = os.path.abspath(filename)
            known = path.startswith(_LIBRARY_DIRS) or any(m in path for m in _SITE_MARKERS)
        _library_cache[filename] = known
    return known


@dataclass(frozen=True, slots=True)
class Location:
    """A line of the user's code."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{short_path(self.file)}:{self.line}"

    @property
    def code(self) -> str:
        """The source text of the line, stripped ('' when the file cannot be read)."""
        return linecache.getline(self.file, self.line).strip()

    def to_dict(self) -> dict[str, object]:
        return {"file": short_path(self.file), "line": self.line, "function": self.function, "code": self.code}


def short_path(filename: str) -> str:
    """``filename`` relative to the working directory when it lies under it, else as given."""
    if filename.startswith("<"):
        return filename
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if rel.startswith("..") else rel


def user_location(frame: FrameType | None = None) -> Location | None:
    """The first frame from ``frame`` (default: the caller's) outwards that is not a library's.

    ``None`` when there is none, e.g. on an autograd worker thread.
    """
    frame = frame if frame is not None else sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if not is_library_file(code.co_filename):
            return Location(code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


def caller(frame: FrameType | None) -> FrameType | None:
    """The frame that called a torch function, seen from its TorchFunctionMode handler.

    ``frame`` is the handler's caller. Frames of the override machinery are skipped; the first frame after
    them is the caller.
    """
    while frame is not None and frame.f_code.co_filename in _TORCH_PLUMBING:
        frame = frame.f_back
    return frame


def caller_is_user(frame: FrameType | None) -> bool:
    """Whether the code that called a torch function (seen from its TorchFunctionMode handler) is the user's.

    A call made by library code (an optimizer, ``nn.Linear.__init__``, tangtoc) is not the user's even though
    the user's code is further up the stack.
    """
    frame = caller(frame)
    return frame is not None and not is_library_file(frame.f_code.co_filename)


def _function_name(frame: FrameType) -> str:
    """``module.Class.method`` of a frame; a nested function or comprehension is named by its enclosing one."""
    name = frame.f_code.co_qualname.split(".<locals>.")[0]
    return f"{frame.f_globals.get('__name__', '?')}.{name}"


def _package(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]


def library_function(frame: FrameType | None) -> str | None:
    """For a torch call made by a library on the user's behalf: the library function that made it.

    ``frame`` is the calling frame (see :func:`caller`). ``None`` when the caller is the user's own code. When
    the call came through another library, the one the user called is named too:
    ``"transformers.tokenization_utils_base.BatchEncoding.to (from accelerate.data_loader.DataLoaderShard.__iter__)"``.
    PyTorch and the standard library are never named as the entry point: ``Module.__call__`` says nothing.
    """
    if frame is None or not is_library_file(frame.f_code.co_filename):
        return None
    name, inner = _function_name(frame), _package(frame)
    entry = None
    f = frame.f_back
    while f is not None and is_library_file(f.f_code.co_filename):
        package = _package(f)
        if package not in (inner, "torch", "tangtoc") and package not in sys.stdlib_module_names:
            entry = f
        f = f.f_back
    return name if entry is None else f"{name} (from {_function_name(entry)})"


def user_stack(frame: FrameType | None) -> tuple[tuple[str, int], ...]:
    """``(file, line)`` of every user frame from ``frame`` outwards: where each of the user's functions is now."""
    stack = []
    while frame is not None:
        if not is_library_file(frame.f_code.co_filename):
            stack.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return tuple(stack)


@dataclass(frozen=True, slots=True)
class Loop:
    """The lines of a ``for``/``while`` statement in a file: the training loop, found from its step call."""

    file: str
    first: int
    last: int

    def holds(self, stack: tuple[tuple[str, int], ...]) -> bool:
        """Whether code running with this user ``stack`` (see :func:`user_stack`) runs inside the loop."""
        return any(file == self.file and self.first <= line <= self.last for file, line in stack)


@functools.lru_cache(maxsize=64)
def _loops(filename: str) -> tuple[tuple[int, int], ...]:
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return ()
    kinds = (ast.For, ast.While, ast.AsyncFor)
    return tuple((n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree) if isinstance(n, kinds))


def enclosing_loop(frame: FrameType | None) -> Loop | None:
    """The innermost loop that the first user frame from ``frame`` outwards, running a loop statement, is in.

    Called at a step's end (``optimizer.step()``, ``backward()``): the loop around that call is the training
    loop, even when the call sits in a ``train_step()`` function that the loop calls.
    """
    for file, line in user_stack(frame):
        inside = [(first, last) for first, last in _loops(file) if first <= line <= last]
        if inside:
            first, last = max(inside)  # the innermost: it starts last
            return Loop(file, first, last)
    return None

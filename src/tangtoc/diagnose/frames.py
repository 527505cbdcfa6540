"""Which Python frame is the user's own: the ``file:line`` a diagnosis points at.

A sync or a stray tensor is found deep inside PyTorch (or tangtoc, or another installed library); the
line worth reporting is the first one up the stack that the user wrote. Library frames are those of
PyTorch, tangtoc, anything under ``site-packages``/``dist-packages``, the standard library and frozen
modules (``<frozen runpy>``). Everything else is the user's: scripts, notebooks, ``<stdin>``, tests.
"""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

import torch

import tangtoc

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_LIBRARY_DIRS = (
    _TORCH_DIR,
    os.path.dirname(os.path.abspath(tangtoc.__file__)) + os.sep,
    *{os.path.abspath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")},
)
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


def caller_is_user(frame: FrameType | None) -> bool:
    """Whether the code that called a torch function (seen from its TorchFunctionMode handler) is the user's.

    ``frame`` is the handler's caller. Frames of the override machinery are skipped; the first frame after
    them is the caller. A call made by library code (an optimizer, ``nn.Linear.__init__``, tangtoc) is
    not the user's even though the user's code is further up the stack.
    """
    while frame is not None and frame.f_code.co_filename in _TORCH_PLUMBING:
        frame = frame.f_back
    return frame is not None and not is_library_file(frame.f_code.co_filename)

"""Checks shared by the subcommands' flags: one usage error type, writable outputs, finite durations."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from tangtoc.errors import OutputError, UsageError
from tangtoc.files import check_target


def check_writable(path: Path | None, flag: str) -> None:
    """Fail before any work when ``path`` cannot be written, so a long run is not lost at the end.

    The folder is created if missing; the file itself is not created (a failed run leaves nothing behind)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'out.json'}.")
    try:
        check_target(path)  # a symlink or a device node at the path is refused before the work, not after
    except OutputError as e:
        raise UsageError(f"{flag}: {e}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"{flag}: cannot create the folder {path.parent}: {e.strerror}. Choose a writable path."
        ) from None
    # The file is replaced by a new one made in its folder, so the folder must be writable, whatever the file is.
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{flag}: cannot write {path}: permission denied in {path.parent}. Choose a writable path.")


def seconds(text: str) -> float:
    """argparse type for a duration: a finite number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds greater than 0, got {text!r}")
    return value

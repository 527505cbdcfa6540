"""Checks shared by the subcommands' flags: one usage error type, writable outputs, finite numbers and durations, a
thread count this process can run."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from tangtoc.device import cpu_cores
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


def finite(text: str) -> float:
    """argparse type for a real number that must be finite: ``inf`` and ``nan`` parse as floats, and would reach the
    arithmetic of a long run (an infinite job, a NaN of a prediction) instead of the command line."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def threads(text: str) -> int:
    """argparse type for ``--threads``: from 1 to the cores this process may use (its affinity mask). torch accepts
    any count, and ``torch.set_num_threads(100000)`` crashes the process at the next operation; more threads than
    cores only take turns on them."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    cores = cpu_cores()
    if not 1 <= value <= cores:
        raise argparse.ArgumentTypeError(f"expected 1 to {cores} (the cores this process may use), got {value}")
    return value


def script_options(given: dict[str, object], rest: list[str]) -> tuple[dict[str, str | None], list[str]] | str:
    """tangtoc's own options (by flag) and the script's arguments, or a usage error, for the subcommands that run a
    script (``audit``, ``profile``).

    ``given``: each of tangtoc's flags with the value parsed before SCRIPT (``None``: not given there). Any of
    them given before SCRIPT leaves everything after it to the script, verbatim. Otherwise those flags after
    SCRIPT (``--steps N``, ``--steps=N``) are tangtoc's, the usage line's form, and the rest, in order, the script's.
    """
    values = {flag: None if v is None else str(v) for flag, v in given.items()}
    if any(v is not None for v in values.values()):
        return values, list(rest)
    script_args: list[str] = []
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        if name in values:
            if not eq:
                if i + 1 >= len(rest):
                    return f"{name} needs a value"
                i += 1
                value = rest[i]
            values[name] = value
        else:
            script_args.append(rest[i])
        i += 1
    return values, script_args


def count_option(flag: str, value: str | None, default: int, minimum: int) -> int | str:
    """``value`` of ``flag`` as a whole number of steps (``default`` when not given), or a usage error."""
    try:
        n = default if value is None else int(value)
    except ValueError:
        return f"{flag} takes a whole number of steps, got {value!r}"
    if n < minimum:
        return f"{flag} must be at least {minimum}, got {n}"
    return n

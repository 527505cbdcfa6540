"""Formatting shared by the subcommands: units in every number, JSON that never fails on a torch type."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from rich.console import Console

from tangtoc.bench.measure import NOISY_SPREAD
from tangtoc.units import fmt_bytes, fmt_duration, fmt_flops, fmt_seconds

__all__ = ["console", "fmt_bytes", "fmt_duration", "fmt_flops", "fmt_seconds", "to_json"]


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped into a log or CI, rich falls back to 80 columns and wraps wide tables into unreadable towers.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    # Errors go to stderr unwrapped: a path or a command cut in two cannot be copied back into a terminal.
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=stderr)


def _default(obj: Any) -> Any:
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_default, sort_keys=False)


def noisy_note(count: int) -> str:
    """The line under a table whose rows carry measurements marked (noisy)."""
    return (
        f"{count} measurement(s) marked (noisy): their IQR exceeds {NOISY_SPREAD:.0%} of the median; another process "
        "may be using this machine. Rerun to confirm."
    )

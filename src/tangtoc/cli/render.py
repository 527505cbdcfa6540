"""Output shared by the subcommands: consoles (built by :mod:`tangtoc.console`), units in every number, JSON that
never fails on a torch type, result files written after the report, and ASCII where the terminal lacks Unicode."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable
from typing import IO, Any

import torch

from tangtoc.bench.measure import NOISY_SPREAD
from tangtoc.console import console, say
from tangtoc.errors import OutputError
from tangtoc.files import write_atomic
from tangtoc.units import fmt_bytes, fmt_duration, fmt_flops, fmt_seconds

__all__ = [
    "ascii_fallback",
    "console",
    "fmt_bytes",
    "fmt_duration",
    "fmt_flops",
    "fmt_seconds",
    "noisy_note",
    "save",
    "say",
    "to_json",
]


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


def save(path: str | None, data: str | Callable[[IO[bytes]], None], what: str, command: str) -> bool:
    """Write a report's file after the run; on failure say why, with the report already shown (False)."""
    if path is None:
        return True
    try:
        write_atomic(path, data)
    except OutputError as e:
        say(console(stderr=True), f"tangtoc {command}: the {what} was not written (it is shown above): {e}")
        return False
    say(console(), f"{what} written to {path}")
    return True


# What the reports write outside ASCII, in ASCII, for a terminal or pipe that cannot take it.
_ASCII = {"—": "--", "–": "-", "µ": "u", "×": "x", "→": "->", "≤": "<=", "≥": ">=", "…": "...", "·": "."}


def _to_ascii(e: UnicodeError) -> tuple[str, int]:
    assert isinstance(e, UnicodeEncodeError)
    return "".join(_ASCII.get(c, "?") for c in e.object[e.start : e.end]), e.end


codecs.register_error("tangtoc.ascii", _to_ascii)


def ascii_fallback() -> None:
    """Let stdout and stderr write what their encoding lacks (``PYTHONIOENCODING=ascii``, a C locale) as ASCII
    instead of raising UnicodeEncodeError after the work is done: "—" becomes "--", "µs" "us"."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", "strict") == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="tangtoc.ascii")

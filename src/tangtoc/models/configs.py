"""Named model configurations with per-field overrides, validated the same way for every model family."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

C = TypeVar("C")


def named_config(table: Mapping[str, C], name: str, overrides: Mapping[str, Any], family: str) -> C:
    """``table[name]`` with ``overrides`` applied (validated by the config's own ``__post_init__``).

    Errors name what was asked and what exists: an unknown ``name`` is a ``ValueError``, an unknown field a
    ``TypeError``, as for a misspelt keyword argument."""
    try:
        base = table[name]
    except KeyError:
        raise ValueError(f"unknown {family} size {name!r}; expected one of {', '.join(table)}.") from None
    known = [f.name for f in fields(base)]  # type: ignore[arg-type]
    unknown = set(overrides) - set(known)
    if unknown:
        kind = type(base).__name__
        raise TypeError(
            f"{family.lower()}_config got unknown field(s) {', '.join(sorted(unknown))}; {kind} fields are "
            f"{', '.join(known)}."
        )
    return replace(base, **overrides)  # type: ignore[type-var]

"""Argument checks shared by the data module's public functions."""

from __future__ import annotations

import numbers


def is_count(value: object, minimum: int = 0) -> bool:
    """True for an int of at least ``minimum``: a NumPy int too, a bool or a float never (``2.5`` samples, or
    ``True`` as a batch size, is a mistake that would otherwise fail later, far from the call)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum

"""The machine-readable documents tangtoc writes (``--json``), each with a name and a version.

Every document starts with ``"schema"`` (e.g. ``"tangtoc.bench"``) and ``"schema_version"``. A field a script may
read is never removed or renamed without a new version; adding fields does not change it. ``docs/JSON.md``
documents each schema, and ``tests/test_schemas.py`` fails when a documented field disappears from what a command
writes while its version stays the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: name -> version. Raise a version when a field is removed, renamed or changes meaning.
SCHEMAS: dict[str, int] = {
    "tangtoc.advise": 1,
    "tangtoc.audit": 1,
    "tangtoc.bench": 1,
    "tangtoc.doctor": 1,
    "tangtoc.gpu_check": 1,  # benchmarks/gpu_check.py writes it without importing tangtoc; a test keeps them equal
    "tangtoc.profile": 1,
    "tangtoc.train": 1,
}


def stamp(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``schema`` and ``schema_version`` first."""
    return {"schema": name, "schema_version": SCHEMAS[name], **data}


def field_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """Every field of a JSON document as a path (``rows[].measurement.median_s``); list items share ``[]``."""
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from field_paths(value, path)
    elif isinstance(data, list):
        for item in data:
            yield from field_paths(item, f"{prefix}[]")

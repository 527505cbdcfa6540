"""The ``tangtoc`` pytest plugin: keep a training step free of host-device syncs in CI.

* ``@pytest.mark.no_sync`` runs the test's body inside :func:`tangtoc.no_sync` (its fixtures are set up outside
  it): the test fails at the first sync with :class:`~tangtoc.diagnose.nosync.SyncError`, naming the call and
  its line. ``@pytest.mark.no_sync(on_sync="warn", device="cpu")`` passes its keywords on.
* The ``no_sync`` fixture is :func:`tangtoc.no_sync`, for a region inside a test: ``with no_sync(): step()``.

On a machine without a GPU the guard reports what would sync on one (see :mod:`tangtoc.diagnose.nosync`), so a
CPU-only CI job keeps the step clean too. pytest loads the plugin through the ``pytest11`` entry point
``tangtoc``; ``-p no:tangtoc`` turns it off. Loading it imports tangtoc, and so torch, when pytest starts.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from tangtoc.diagnose.nosync import no_sync


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "no_sync(on_sync='raise', device=None): run the test body inside tangtoc.no_sync(); it fails at the first "
        "host-device sync (on a CPU-only machine: at what would sync on a GPU), naming the line",
    )


# An old-style hookwrapper: new-style ones (wrapper=True) need pluggy >= 1.2, and this plugin loads in every
# project that installs tangtoc, whatever its pytest. The test's own outcome reaches pytest through the wrapper's
# result, not through this generator: a SyncError fails the test at its line.
@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, None]:
    marker = pyfuncitem.get_closest_marker("no_sync")
    if marker is None:
        yield
        return
    if marker.args:
        raise TypeError(
            f"@pytest.mark.no_sync takes keywords (on_sync='raise' or 'warn', device=...), got {marker.args!r}; "
            "write e.g. @pytest.mark.no_sync(on_sync='warn')."
        )
    with no_sync(**marker.kwargs):
        yield


@pytest.fixture(name="no_sync")
def no_sync_fixture() -> Callable[..., Any]:
    """:func:`tangtoc.no_sync`: ``with no_sync(): step()`` fails the test at the first sync in the step."""
    return no_sync

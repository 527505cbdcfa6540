"""Shared test setup: CUDA-only tests carry @pytest.mark.cuda and skip on machines without CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda"):  # not item.keywords: a parameter id "cuda" lands there too
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_device_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's TANGTOC_DEVICE must not change what the tests see.
    monkeypatch.delenv("TANGTOC_DEVICE", raising=False)


@pytest.fixture(autouse=True)
def _fresh_device_cache() -> None:
    # resolve() caches validated device specs; a test that fakes CUDA must not leak into the next one.
    from tangtoc import device

    device._validated.cache_clear()
    device.nvidia_driver_present.cache_clear()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch at one CPU thread for the test: on a shared 2-core machine two threads stall each other at every op,
    which makes tiny training steps 10-100x slower and timing-sensitive tests flaky."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Overlap the host-to-device copy of the next batch with the computation on the current one (seed 3.2, 6.3)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tangtoc.device import DeviceLike, resolve
from tangtoc.move import named_tensors, pin, to_device

_END = object()


class Prefetcher:
    """Wrap any iterable of batches (a ``DataLoader``, a generator, a list) so batches arrive on ``device``.

    On CUDA, each batch is pinned (a no-op for a ``DataLoader(pin_memory=True)``, whose batches already are) and
    copied on a side stream while the caller computes on the previous batch; the compute stream waits for the
    copy (``wait_stream``) and each tensor is marked as used there (``record_stream``) so the caching allocator
    does not hand its memory to the next copy too early. On every other device it is a plain pass-through that
    moves each batch with :func:`~tangtoc.move.to_device`.

    It holds one batch in flight: the wrapped iterable has always produced one batch more than was yielded.
    """

    def __init__(self, iterable: Iterable[Any], device: DeviceLike | None = None) -> None:
        self.iterable = iterable
        self.device = resolve(device)

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]  # TypeError, as for any iterable without len

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":
            return (to_device(batch, self.device) for batch in self.iterable)
        return self._cuda_iter()

    def _cuda_iter(self) -> Iterator[Any]:
        side = torch.cuda.Stream(self.device)
        source = iter(self.iterable)

        def start_copy() -> Any:
            batch = next(source, _END)
            if batch is _END:
                return _END
            with torch.cuda.stream(side):
                return to_device(pin(batch), self.device, non_blocking=True)

        upcoming = start_copy()
        while upcoming is not _END:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)
            for _, t in named_tensors(upcoming):
                if t.device.type == "cuda":
                    t.record_stream(compute)
            batch = upcoming
            upcoming = start_copy()  # queued before the caller's kernels for `batch`: they run concurrently
            yield batch

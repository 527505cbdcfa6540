"""Kernel suites: large matrix products, small elementwise ops, and CPU<->GPU transfers (seed 6.2, 3.2, 4.3).

Every kernel's output is checked once against a float64 CPU reference before it is timed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tangtoc.bench.cases import BenchConfig, Case, Row, checked
from tangtoc.device import DeviceInfo, describe, float32_math, synchronize
from tangtoc.errors import WrongResultError

# Square sizes of the matmul suite. The CPU stops earlier in the quick run; in the full run every
# size is tried while its estimated time stays inside PER_CASE_BUDGET.
MATMUL_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_CPU_MATMUL_MAX = 2048
PER_CASE_BUDGET = 30.0  # seconds one matmul case may take in the full run
SMALL_OP_SIZES = tuple(10**k for k in range(2, 8))
#: Elements created by the create-on-device case: the article's own torch.randn(100, device=device) (4.3), and
#: 64 MiB of float32, where the copy dominates.
CREATE_SIZES = (100, 16 << 20)
TRANSFER_SIZES_QUICK = tuple(4 << (10 + 2 * k) for k in range(0, 9, 2))  # 4 KiB ... 256 MiB, x16 apart
TRANSFER_SIZES_FULL = tuple(4 << (10 + 2 * k) for k in range(0, 10))  # 4 KiB ... 1 GiB, x4 apart
_REFERENCE_ROWS = 64  # rows of a matmul recomputed in float64: enough to catch a wrong kernel, cheap at n=8192


def _matmul_dtypes(device: torch.device, info: DeviceInfo) -> tuple[str, ...]:
    if device.type == "cpu":
        return ("float32",)
    keys = ["float32"]
    if device.type == "cuda" and info.compute_capability and info.compute_capability >= (8, 0):
        keys.append("tf32")
    if info.bf16_supported is not False:
        keys.append("bfloat16")
    return tuple(keys)


def _torch_dtype(key: str) -> torch.dtype:
    return torch.float32 if key == "tf32" else getattr(torch, key)


def _fits(nbytes: int, info: DeviceInfo) -> bool:
    return info.free_memory is None or nbytes < 0.8 * info.free_memory


def matmul(cfg: BenchConfig, sizes: tuple[int, ...] | None = None) -> list[Case]:
    """Square ``n x n`` products: time, TFLOP/s and % of the published peak, per device and dtype."""
    cases: list[Case] = []
    for device in cfg.devices:
        info = cfg.infos.get(str(device)) or describe(device)
        for key in _matmul_dtypes(device, info):
            last: dict[str, float] = {}  # the previous size's seconds, to skip sizes that would take too long
            for n in sizes or MATMUL_SIZES:
                if sizes is None and device.type == "cpu" and not cfg.full and n > QUICK_CPU_MATMUL_MAX:
                    continue
                cases.append(
                    Case("matmul", f"matmul {n} {key} on {device}", _matmul_case(cfg, device, info, key, n, last))
                )
    return cases


def _matmul_case(
    cfg: BenchConfig, device: torch.device, info: DeviceInfo, key: str, n: int, last: dict[str, float]
) -> Callable[[], Row]:
    def run() -> Row:
        row = Row(suite="matmul", case=f"matmul {n}", device=str(device), dtype=key, size=n)
        dtype = _torch_dtype(key)
        nbytes = 3 * n * n * dtype.itemsize
        if not _fits(nbytes, info):
            row.note = f"skipped: needs {nbytes / 2**30:.1f} GiB, more than 80% of the free memory on {device}"
            return row
        estimate = last.get("s", 0.0) * 8  # matmul time grows as n^3
        if estimate * 5 > PER_CASE_BUDGET:
            row.note = f"skipped: estimated {estimate:.1f} s per call, over the {PER_CASE_BUDGET:.0f} s case budget"
            return row
        gen = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=gen).to(device, dtype)
        b = torch.randn(n, n, generator=gen).to(device, dtype)

        def product() -> torch.Tensor:
            return torch.mm(a, b)

        with float32_math(tf32_matmul=key == "tf32"):
            r = min(n, _REFERENCE_ROWS)  # the very function that is timed is the one checked
            row.check = checked(product()[:r], a[:r].double().cpu() @ b.double().cpu(), key)
            row.measurement = cfg.time(product, device, row.case)
        seconds = row.measurement.median
        last["s"] = seconds
        flops = 2 * n**3 / seconds
        peak = (info.peak_flops or {}).get(key)
        row.metrics = {"tflops": flops / 1e12, "pct_peak": 100 * flops / peak if peak else None}
        return row

    return run


# name -> (function, bytes moved per element at float32); the same function gives the float64 reference
_SMALL_OPS: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "add": (lambda x, y: x + y, 12),
    "mul": (lambda x, y: x * y, 12),
    "relu": (lambda x, y: torch.relu(x), 8),
    "sum": (lambda x, y: x.sum(), 4),
}


def small_ops(cfg: BenchConfig, sizes: tuple[int, ...] | None = None) -> list[Case]:
    """Elementwise add/mul/relu and a sum over 10^2 ... 10^7 float32 elements: where launch overhead rules."""
    return [
        Case("small-ops", f"{op} {n:.0e} on {device}", _small_op_case(cfg, device, op, n))
        for device in cfg.devices
        for op in _SMALL_OPS
        for n in sizes or SMALL_OP_SIZES
    ]


def _small_op_case(cfg: BenchConfig, device: torch.device, op: str, n: int) -> Callable[[], Row]:
    def run() -> Row:
        fn, bytes_per_element = _SMALL_OPS[op]
        row = Row(suite="small-ops", case=f"{op} {n:.0e}", device=str(device), dtype="float32", size=n)
        gen = torch.Generator().manual_seed(n)
        # rand, not randn: a sum of positive values has no cancellation, so its relative error is meaningful.
        x64, y64 = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64)
        x, y = x64.float().to(device), y64.float().to(device)
        row.check = checked(fn(x, y), fn(x.double().cpu(), y.double().cpu()), "float32")
        row.measurement = cfg.time(lambda: fn(x, y), device, row.case)
        seconds = row.measurement.median
        row.metrics = {"gbps": bytes_per_element * n / seconds / 1e9}
        if device.type == "cuda":
            # Replayed from a CUDA graph the kernel runs without the host's per-op launch cost: the
            # difference is what launch overhead adds to a small op.
            graphed = cfg.time(lambda: fn(x, y), device, row.case + " (CUDA graph)", cuda_graph=True)
            row.metrics["graphed_us"] = graphed.median * 1e6
        return row

    return run


def transfer(cfg: BenchConfig, sizes: tuple[int, ...] | None = None) -> list[Case]:
    """Host<->device copies in GB/s (pageable vs pinned, blocking vs not), and create-on-CPU-then-move vs
    create-on-device. Needs an accelerator; without one the suite says so in a single row."""
    if not cfg.accelerators:
        return [Case("transfer", "transfer (needs an accelerator)", no_accelerator("transfer"))]
    sizes = sizes or (TRANSFER_SIZES_FULL if cfg.full else TRANSFER_SIZES_QUICK)
    cases = []
    for device in cfg.accelerators:
        for nbytes in sizes:
            for direction in ("h2d", "d2h"):
                for pinned in (False, True):
                    for non_blocking in (False, True):
                        if non_blocking and not pinned:
                            continue  # non_blocking from/to pageable memory is synchronous anyway
                        name = f"{direction} {nbytes} {'pinned' if pinned else 'pageable'}"
                        name += " non-blocking" if non_blocking else ""
                        cases.append(
                            Case(
                                "transfer",
                                f"{name} on {device}",
                                _copy_case(cfg, device, direction, nbytes, pinned, non_blocking),
                            )
                        )
        for n in CREATE_SIZES:
            cases.append(
                Case("transfer", f"create {n:,} on CPU then move vs on {device}", _create_case(cfg, device, n))
            )
    return cases


def no_accelerator(suite: str) -> Callable[[], Row]:
    def run() -> Row:
        return Row(
            suite=suite,
            case=suite,
            device="cpu",
            note="not measured: no GPU present (this suite compares host and device memory)",
        )

    return run


def _copy_case(
    cfg: BenchConfig, device: torch.device, direction: str, nbytes: int, pinned: bool, non_blocking: bool
) -> Callable[[], Row]:
    def run() -> Row:
        kind = ("pinned" if pinned else "pageable") + (" non-blocking" if non_blocking else "")
        row = Row(suite="transfer", case=f"{direction} {kind}", device=str(device), dtype="uint8", size=nbytes)
        host = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, pin_memory=pinned)
        on_device = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        if direction == "d2h":  # the source holds the data, the destination something else: a copy must change it
            on_device.copy_(host)
            host.zero_()
        dst, src = (on_device, host) if direction == "h2d" else (host, on_device)

        def fn() -> None:
            dst.copy_(src, non_blocking=non_blocking)

        fn()
        synchronize(device)
        if not torch.equal(dst.cpu(), src.cpu()):
            raise WrongResultError("wrong result: the copy does not match its source; the time is not reported.")
        row.check = "bytes identical after the copy"
        row.measurement = cfg.time(fn, device, row.case)
        row.metrics = {"gbps": nbytes / row.measurement.median / 1e9}
        return row

    return run


def _create_case(cfg: BenchConfig, device: torch.device, n: int) -> Callable[[], Row]:
    def run() -> Row:
        row = Row(suite="transfer", case="create on CPU then move", device=str(device), dtype="float32", size=n * 4)
        made = torch.randn(n, device=device)
        if made.device != device or made.shape != (n,) or not torch.isfinite(made).all():
            raise WrongResultError(f"wrong result: torch.randn(n, device={device}) gave {made.device} {made.shape}")
        moved = cfg.time(lambda: torch.randn(n).to(device), device, "create on CPU then move")
        direct = cfg.time(lambda: torch.randn(n, device=device), device, "create on device")
        row.measurement = moved
        row.metrics = {"created_on_device_us": direct.median * 1e6, "move_over_direct": moved.median / direct.median}
        row.check = "random data: no reference; device, shape and finiteness checked"
        row.note = f"torch.randn(n, device=...) is {moved.median / direct.median:.1f}x faster than randn(n).to(...)"
        return row

    return run

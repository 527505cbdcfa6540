"""The article's claims judged by stated rules, fed with made-up GPU rows: in range, below, above, mixed dtypes."""

from __future__ import annotations

import pytest
import torch

from tangtoc.bench import loops
from tangtoc.bench.cases import BenchConfig, Row
from tangtoc.bench.claims import seed_claims
from tangtoc.bench.measure import Measurement
from tangtoc.bench.report import add_speedups


def timed(seconds: float, device: str = "cpu") -> Measurement:
    return Measurement(times=(seconds,), number_per_block=1, device=device)


def op(size: int, cpu_s: float, gpu_s: float, name: str = "add") -> list[Row]:
    case = f"{name} {size:.0e}"
    return [Row(suite="small-ops", case=case, device=d, dtype="float32", size=size, measurement=timed(t))
            for d, t in (("cpu", cpu_s), ("cuda:0", gpu_s))]  # fmt: skip


def matmul(n: int, cpu_s: float, gpu: dict[str, float]) -> list[Row]:
    rows = [Row(suite="matmul", case=f"matmul {n}", device="cpu", dtype="float32", size=n, measurement=timed(cpu_s),
                metrics={"tflops": 2 * n**3 / cpu_s / 1e12})]  # fmt: skip
    rows += [Row(suite="matmul", case=f"matmul {n}", device="cuda:0", dtype=k, size=n, measurement=timed(t))
             for k, t in gpu.items()]  # fmt: skip
    return rows


def gpt(cpu_s: float, gpu_s: float, case: str = "gpt2 train step (gpt2, short)") -> list[Row]:
    return [Row(suite="gpt2", case=case, device=d, measurement=timed(1.0), metrics={"projected_s": s},
                note="10M tokens of the gpt2 model (124M params), estimated from 4 x 256-token steps")
            for d, s in (("cpu", cpu_s), ("cuda:0", gpu_s))]  # fmt: skip


def judged(rows: list[Row], **kw: int) -> dict[str, tuple[str, str]]:
    add_speedups(rows)
    return {c.claim: (c.verdict, c.measured) for c in seed_claims(rows, **kw)}


SMALL = "the GPU is 2 to 5 times faster than the CPU on small operations"
LARGE = "with large matrices the gap can be much larger"
GPT2 = "for GPT-2 the GPU cuts training from tens of minutes to a few seconds"
COST = "transfers cost time; the cost is not large, but must be weighed"
CONSTANT = "moving data back and forth all the time lowers performance"
CREATE = "creating data directly on the device avoids the transfer cost"


@pytest.mark.parametrize(
    ("speedups", "verdict", "text"),
    [
        ((3.0, 4.5), "confirmed", "3.00x to 4.50x over 2 cases"),
        ((1.2, 1.8), "not confirmed", "1.20x to 1.80x over 2 cases (below 2x)"),  # the example: not "partly"
        ((6.0, 9.0), "not confirmed", "(above 5x)"),
        ((1.5, 3.0), "partly", "1.50x to 3.00x"),
    ],
)
def test_small_ops_rule(speedups: tuple[float, ...], verdict: str, text: str) -> None:
    rows = [r for i, s in enumerate(speedups) for r in op(100 * 10**i, s * 1e-6, 1e-6)]
    rows += op(10**6, 1.0, 1e-3)  # above 1e4 elements: not a small op, whatever its ratio
    got_verdict, measured = judged(rows)[SMALL]
    assert got_verdict == verdict and text in measured


@pytest.mark.parametrize(
    ("gpu", "verdict", "text"),
    [
        ({"float32": 0.05}, "confirmed", "20.0x at n=4096 (float32 on both)"),
        ({"float32": 0.125}, "partly", "8.0x"),
        # bf16 on the GPU is 6x the CPU's fp32 but fp32 is only 3x: the claim is judged on fp32, bf16 only shown
        ({"float32": 1 / 3, "bfloat16": 1 / 6}, "not confirmed", "best dtype: bfloat16 on cuda:0 vs CPU float32, 6x"),
    ],
)
def test_large_matrix_rule_compares_the_same_dtype(gpu: dict[str, float], verdict: str, text: str) -> None:
    rows = matmul(1024, 0.01, {"float32": 0.001}) + matmul(4096, 1.0, gpu)
    got_verdict, measured = judged(rows)[LARGE]
    assert got_verdict == verdict and text in measured


def test_large_matrices_without_a_gpu_float32_row_are_not_measured() -> None:
    verdict, measured = judged(matmul(4096, 1.0, {"bfloat16": 0.001}))[LARGE]
    assert verdict == "not measured" and measured.startswith("no GPU float32 row; CPU float32 at n=4096")


@pytest.mark.parametrize(("cpu_s", "gpu_s", "verdict"), [(7 * 3600, 1200, "not confirmed"), (1800, 20, "confirmed")])
def test_gpt2_rule_needs_sixty_times(cpu_s: float, gpu_s: float, verdict: str) -> None:
    got, measured = judged(gpt(cpu_s, gpu_s))[GPT2]
    assert got == verdict and "estimated from 4 x 256-token steps" in measured


def test_gpt2_claim_is_not_judged_on_a_smaller_model() -> None:
    verdict, measured = judged(gpt(3000, 6, case="gpt2 train step (small)"))[GPT2]
    assert verdict == "not measured"
    assert "this run trained (small); add --gpt-size gpt2 or --full" in measured


def test_gpt2_claim_without_a_gpu_says_so_and_keeps_the_cpu_projection() -> None:
    verdict, measured = judged(gpt(3000, 6, case="gpt2 train step (small)")[:1])[GPT2]
    assert verdict == "not measured" and measured.startswith("no GPU measured; CPU: 50 min for 10M tokens")


def test_a_cpu_held_to_one_thread_leaves_the_speedups_not_judged() -> None:
    claims = judged(op(100, 3e-6, 1e-6) + gpt(1800, 20), cpu_threads=1, default_threads=16)
    assert claims[SMALL][0] == claims[GPT2][0] == "not judged"
    assert "CPU baseline on 1 of its default 16 threads (--threads) inflates the ratio" in claims[SMALL][1]
    assert claims[LARGE][0] == "not measured"  # nothing measured: nothing to hold back


def residency(slowdown: float) -> Row:
    return Row(suite="residency", case="residency", device="cuda:0", measurement=timed(1.0),
               metrics={"slowdown_copied": slowdown, "slowdown_pinned": 1.01})  # fmt: skip


@pytest.mark.parametrize(
    ("slowdown", "cost", "constant"),
    [(1.3, "confirmed", "confirmed"), (1.01, "not confirmed", "not confirmed"), (3.0, "not confirmed", "confirmed")],
)
def test_transfer_claims(slowdown: float, cost: str, constant: str) -> None:
    claims = judged([residency(slowdown)])
    assert (claims[COST][0], claims[CONSTANT][0]) == (cost, constant)
    if slowdown >= 2:
        assert "(larger than 'not large')" in claims[COST][1]


def created(ratios: dict[int, float]) -> list[Row]:
    return [Row(suite="transfer", case="create on CPU then move", device="cuda:0", size=4 * n, measurement=timed(1.0),
                metrics={"move_over_direct": x}) for n, x in ratios.items()]  # fmt: skip


@pytest.mark.parametrize(
    ("ratios", "verdict"),
    [({100: 1.6, 16 << 20: 30.0}, "confirmed"), ({100: 1.0, 16 << 20: 30.0}, "partly"), ({100: 0.9}, "not confirmed")],
)
def test_create_on_device_rule_at_the_articles_size(ratios: dict[int, float], verdict: str) -> None:
    got, measured = judged(created(ratios))[CREATE]
    assert got == verdict and "100 elements" in measured


def test_without_a_gpu_every_claim_says_not_measured() -> None:
    claims = seed_claims(op(100, 2e-6, 1e-6)[:1])
    assert [c.section for c in claims] == ["3.2", "4.3", "6.2", "6.2", "6.2", "6.3"]
    assert {c.verdict for c in claims} == {"not measured"}
    assert "CPU per call at 100 elements: add 2.0 us" in claims[2].measured


def test_the_quick_gpt2_suite_adds_the_real_model_where_a_gpu_is_shortened_on_the_cpu_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("meta")  # meta plays the GPU: only the case list is looked at
    cases = loops.gpt2(BenchConfig(devices=(cpu, gpu)))
    assert [c.description for c in cases] == ["gpt2 training steps (small) on cpu", "gpt2 training steps (small) on "
        "meta", "GPT-2 124M, shorter steps, on cpu", "GPT-2 124M on meta"]  # fmt: skip
    assert len(loops.gpt2(BenchConfig(devices=(cpu,)))) == 1  # no GPU: the claim is not measured, 124M not run
    assert len(loops.gpt2(BenchConfig(devices=(cpu, gpu), gpt_size="tiny"))) == 2

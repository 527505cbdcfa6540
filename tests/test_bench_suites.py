"""Bench suites on the CPU: every result checked against float64, wrong kernels never timed, reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tangtoc import bench
from tangtoc.bench import kernels, loops, report
from tangtoc.bench.cases import BenchConfig, Row, WrongResultError, checked
from tangtoc.bench.claims import seed_claims
from tangtoc.bench.measure import Measurement
from tangtoc.device import describe

CPU = torch.device("cpu")


@pytest.fixture
def cfg() -> BenchConfig:
    return BenchConfig(devices=(CPU,), min_time=0.01, max_time=0.05, infos={"cpu": describe("cpu")})


def timed(seconds: float, device: str = "cpu") -> Measurement:
    return Measurement(times=(seconds,), number_per_block=1, device=device)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="must start with the CPU"):
        BenchConfig(devices=(torch.device("meta"),))
    with pytest.raises(ValueError, match="min_time must be > 0"):
        BenchConfig(devices=(CPU,), min_time=0)
    with pytest.raises(ValueError, match="token_budget must be positive"):
        BenchConfig(devices=(CPU,), token_budget=0)


@pytest.mark.parametrize(("dtype_key", "noise"), [("float32", 1e-3), ("bfloat16", 0.1), ("float32", float("nan"))])
def test_checked_rejects_a_wrong_result(dtype_key: str, noise: float) -> None:
    ref = torch.rand(100, dtype=torch.float64) + 1
    with pytest.raises(WrongResultError, match=f"wrong result: relative error .* exceeds the {dtype_key} tolerance"):
        checked(ref.float() * (1 + noise), ref, dtype_key)


def test_checked_accepts_rounding_error() -> None:
    ref = torch.rand(100, dtype=torch.float64) + 1
    assert checked(ref.bfloat16(), ref, "bfloat16").startswith("rel err")


def test_matmul_case_is_checked_and_timed(cfg: BenchConfig) -> None:
    (case,) = kernels.matmul(cfg, sizes=(96,))
    row = case.run()
    assert row.error is None and row.check and row.check.startswith("rel err")
    assert row.measurement is not None and row.measurement.median > 0
    assert row.metrics["tflops"] == pytest.approx(2 * 96**3 / row.measurement.median / 1e12)
    assert row.metrics["pct_peak"] is None  # no published peak for a CPU: omitted, never guessed


def test_a_wrong_matmul_is_reported_and_not_timed(cfg: BenchConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: real_mm(a, b) * 1.01)  # a fast, wrong kernel
    (case,) = kernels.matmul(cfg, sizes=(64,))
    row = bench.run_case(case)
    assert row.measurement is None
    assert row.error is not None and "wrong result" in row.error


def test_small_ops_cover_every_op_and_size(cfg: BenchConfig) -> None:
    cases = kernels.small_ops(cfg, sizes=(100, 1000))
    rows = bench.run(cases)
    assert sorted({r.case.split()[0] for r in rows}) == ["add", "mul", "relu", "sum"]
    assert all(r.error is None and r.metrics["gbps"] > 0 for r in rows)


def test_a_wrong_small_op_is_caught(cfg: BenchConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = (lambda x, y: x + y + (x.dtype == torch.float32), 12)  # right in float64, wrong in float32
    monkeypatch.setitem(kernels._SMALL_OPS, "add", wrong)
    rows = bench.run(kernels.small_ops(cfg, sizes=(100,)))
    add = next(r for r in rows if r.case.startswith("add"))
    assert add.measurement is None and "wrong result" in (add.error or "")


def test_matmul_skips_sizes_that_do_not_fit() -> None:
    small_memory = dataclasses.replace(describe("cpu"), free_memory=1000)
    tiny = BenchConfig(devices=(CPU,), min_time=0.01, infos={"cpu": small_memory})
    (case,) = kernels.matmul(tiny, sizes=(64,))
    row = case.run()
    assert row.measurement is None and "skipped: needs" in (row.note or "")


@pytest.mark.parametrize("suite", [kernels.transfer, loops.residency])
def test_host_device_suites_say_no_gpu_plainly(cfg: BenchConfig, suite) -> None:
    (case,) = suite(cfg)
    row = case.run()
    assert row.measurement is None and "no GPU present" in (row.note or "")


def test_gpt2_suite_on_a_tiny_model(cfg: BenchConfig) -> None:
    tiny = BenchConfig(devices=(CPU,), min_time=0.01, max_time=0.05, gpt_size="tiny", token_budget=1_000_000)
    (case,) = loops.gpt2(tiny)
    row = case.run()
    assert row.error is None and row.check and row.check.startswith("rel err")
    tokens_per_s = row.metrics["tokens_per_s"]
    assert tokens_per_s == pytest.approx(row.size / row.measurement.median)
    assert row.metrics["projected_s"] == pytest.approx(1_000_000 / tokens_per_s)
    assert row.metrics["mfu_pct"] is None


def fake_rows(with_gpu: bool) -> list[Row]:
    rows = [
        Row(suite="small-ops", case="add 1e+02", device="cpu", dtype="float32", size=100, measurement=timed(2e-6)),
        Row(
            suite="matmul",
            case="matmul 4096",
            device="cpu",
            dtype="float32",
            size=4096,
            measurement=timed(1.0),
            metrics={"tflops": 0.14},
        ),
        Row(
            suite="gpt2",
            case="gpt2 train step (small)",
            device="cpu",
            measurement=timed(0.5),
            metrics={"projected_s": 3000.0},
            note="10M tokens",
        ),
    ]
    if with_gpu:
        rows += [
            Row(
                suite="small-ops", case="add 1e+02", device="cuda:0", dtype="float32", size=100, measurement=timed(5e-6)
            ),
            Row(
                suite="matmul",
                case="matmul 4096",
                device="cuda:0",
                dtype="bfloat16",
                size=4096,
                measurement=timed(0.001),
            ),
            Row(
                suite="gpt2",
                case="gpt2 train step (small)",
                device="cuda:0",
                measurement=timed(0.01),
                metrics={"projected_s": 6.0},
                note="10M tokens",
            ),
        ]
    return rows


def test_speedups_compare_each_gpu_row_with_its_cpu_row() -> None:
    rows = fake_rows(with_gpu=True)
    report.add_speedups(rows)
    gpu = {r.suite: r.metrics.get("speedup_vs_cpu") for r in rows if r.device == "cuda:0"}
    assert gpu["small-ops"] == pytest.approx(0.4)  # slower: launch overhead
    assert gpu["matmul"] == pytest.approx(1000.0)
    assert all("speedup_vs_cpu" not in r.metrics for r in rows if r.device == "cpu")


def test_json_has_rows_metadata_and_claims(cfg: BenchConfig, tmp_path: Path) -> None:
    rows = fake_rows(with_gpu=False)
    path = tmp_path / "b.json"
    report.write_json(path, rows, report.metadata(cfg, ["tangtoc", "bench"]), seed_claims(rows))
    data = json.loads(path.read_text())
    assert data["metadata"]["command"] == "tangtoc bench"
    assert data["metadata"]["torch"] == torch.__version__
    assert {"date", "cpu_model", "cpu_cores", "threads", "devices"} <= set(data["metadata"])
    assert data["rows"][0]["measurement"]["median_s"] == 2e-6
    assert [c["section"] for c in data["seed_claims"]] == ["3.2", "4.3", "6.2", "6.2", "6.2", "6.3"]
    assert all(c["rule"] and c["verdict"] == "not measured" for c in data["seed_claims"])


@pytest.mark.parametrize("with_gpu", [False, True])
def test_plot_writes_a_png(tmp_path: Path, with_gpu: bool) -> None:
    rows = fake_rows(with_gpu)
    report.add_speedups(rows)
    path = tmp_path / "b.png"
    report.plot(path, rows)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cuda
def test_every_suite_runs_and_checks_on_cuda() -> None:
    gpu = torch.device("cuda", 0)
    cfg = BenchConfig(devices=(CPU, gpu), min_time=0.01, max_time=0.05, gpt_size="tiny")
    cases = kernels.matmul(cfg, (256,)) + kernels.small_ops(cfg, (1000,)) + kernels.transfer(cfg, (1 << 20,))
    rows = bench.run(cases + loops.residency(cfg) + loops.gpt2(cfg))
    assert [r.error for r in rows if r.error] == []
    report.add_speedups(rows)
    assert {r.suite for r in rows if r.metrics.get("speedup_vs_cpu")} >= {"matmul", "small-ops", "gpt2"}
    assert all(r.metrics["graphed_us"] > 0 for r in rows if r.suite == "small-ops" and r.device == "cuda:0")
    assert {r.dtype for r in rows if r.suite == "matmul" and r.device == "cuda:0"} >= {"float32", "bfloat16"}

"""The GPU evidence harness (benchmarks/gpu_check.sh): its rehearsal on the CPU, what survives a kill, and verdicts
that can fail, fed with made-up GPU outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the harness's modules import each other from their folder
import _gpu_figures as figs  # noqa: E402
import gpu_check  # noqa: E402

VERDICTS = {"met", "missed", "not measured", "recorded"}


def harness(out: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


# -- the whole harness, rehearsed on the CPU ------------------------------------------------------------------------


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_leaves_three_files(tmp_path: Path) -> None:
    proc = harness(tmp_path, "--rehearse")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, (
        (tmp_path / "summary.txt").read_text() if (tmp_path / "summary.txt").exists() else output
    )

    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.tgz", "summary.json", "summary.txt"]
    data = summary(tmp_path)
    assert data["complete"] and data["steps_failed"] == [] and data["mode"] == "rehearsal on the CPU"
    assert [s["name"] for s in data["steps"]] == [s.name for s in gpu_check.PLAN]
    assert all(s["status"] == "ok" for s in data["steps"]), data["steps"]
    assert data["plan_s"] <= data["budget_s"] == 175
    assert {f["verdict"] for f in data["figures"]} <= VERDICTS
    # Nothing is judged against a GPU goal on the CPU, but the CPU's own numbers are there.
    assert not any(f["verdict"] in ("met", "missed") for f in data["figures"])
    assert any(f["name"] == "GPT-2 124M tokens/s" and f["value"] > 0 for f in data["figures"])
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = set(tar.getnames())
    assert {f"results/logs/{s.name}.log" for s in gpu_check.PLAN} <= names
    assert {"results/gpu_train.json", "results/junit.xml", "results/matmul.json"} <= names
    assert "steps failed: none" in (tmp_path / "summary.txt").read_text()
    assert "total of the limits: 170 s; the budget: 175 s" in output


@pytest.mark.slow
def test_a_harness_killed_part_way_leaves_a_readable_summary(tmp_path: Path) -> None:
    proc = harness(tmp_path, "--rehearse", "--only", "device,gpt2-train,ddp")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the second step is running, then kill the harness
        try:
            running = [s["name"] for s in summary(tmp_path)["steps"] if s["status"] == "running"]
        except (OSError, ValueError):
            running = []
        if running == ["gpt2-train"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output[-2000:]
    data = summary(tmp_path)
    status = {s["name"]: s["status"] for s in data["steps"]}
    assert status["device"] == "ok" and status["gpt2-train"] == "interrupted" and status["ddp"] == "skipped"
    assert data["steps_failed"] == ["gpt2-train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.tgz", "summary.json", "summary.txt"]


def test_a_step_past_its_limit_gets_sigterm_and_keeps_what_it_wrote(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time, pathlib\n"
        "def bye(*_):\n"
        f"    pathlib.Path({str(tmp_path / 'partial.json')!r}).write_text('{{\"partial\": true}}')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "slow.py").write_text(script)
    step = gpu_check.Step("slow", "sleeps past its limit", 7, 7, "{py} " + str(tmp_path / "slow.py"), "", lambda w: [])
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    record = gpu_check.StepRecord("slow", step.what, 7)
    h = gpu_check.Harness(tmp_path / "out", work, False, 100.0, (step,), [record])
    (tmp_path / "out").mkdir()
    h.run_step(step, record, sys.executable, dict(os.environ))
    assert record.status == "timed out" and record.exit_code == 143
    assert record.detail == "SIGTERM at 2 s (limit 7 s)"
    assert json.loads((tmp_path / "partial.json").read_text()) == {"partial": True}
    assert (work / "logs" / "slow.log").read_text() == "working\n"  # unbuffered: the log is there after a kill


def test_a_step_that_cannot_finish_in_the_budget_is_skipped_and_says_so(tmp_path: Path) -> None:
    record = gpu_check.StepRecord("gpt2-train", "train", 120)
    h = gpu_check.Harness(tmp_path, tmp_path, False, 100.0, gpu_check.PLAN[3:4], [record])
    h.run_step(gpu_check.PLAN[3], record, sys.executable, {})
    assert record.status == "skipped"
    assert record.detail.endswith("s of the 100 s budget left, needs 120 s")


def test_the_gpu_plan_fits_seven_minutes_most_important_first() -> None:
    names = [s.name for s in gpu_check.PLAN]
    assert names[:4] == ["device", "matmul", "transfer", "gpt2-train"]
    assert sum(s.limit_s for s in gpu_check.PLAN) <= gpu_check.BUDGET_S["gpu"] <= 420
    assert sum(s.rehearse_limit_s for s in gpu_check.PLAN) <= gpu_check.BUDGET_S["rehearse"] < 180


def test_bad_flags_are_refused_with_the_choices(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path), "--only", "nope"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "unknown step(s) nope; the steps are: device, matmul" in out.stderr
    (tmp_path / "other.txt").write_text("x")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path), "--only", "ddp"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "holds other files (other.txt); give an empty folder" in out.stderr


# -- verdicts that can fail: made-up GPU outputs through every reader ------------------------------------------------


def bench_row(suite: str, case: str, dtype: str, size: int, metrics: dict[str, float], device: str = "cuda:0") -> dict:
    return {"suite": suite, "case": case, "device": device, "dtype": dtype, "size": size, "metrics": metrics,
            "measurement": {"median_s": 1e-6}}  # fmt: skip


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def judged(figures: list[figs.Figure]) -> dict[str, str]:
    return {f.name: f.judge(rehearsal=False).verdict for f in figures}


@pytest.mark.parametrize(("bf16_pct", "verdict"), [(79.6, "met"), (60.0, "missed")])
def test_matmul_verdict_follows_the_percent_of_peak(tmp_path: Path, bf16_pct: float, verdict: str) -> None:
    rows = [bench_row("matmul", "matmul 8192", "bfloat16", 8192, {"tflops": 787.0, "pct_peak": bf16_pct}),
            bench_row("matmul", "matmul 4096", "bfloat16", 4096, {"tflops": 700.0, "pct_peak": 70.8}),
            bench_row("matmul", "matmul 8192", "float32", 8192, {"tflops": 9.0}, device="cpu")]  # fmt: skip
    write(tmp_path / "matmul.json", {"rows": rows})
    v = judged(figs.matmul_figures(tmp_path))
    assert v["matmul bfloat16: best of the sizes"] == verdict
    assert v["matmul float32: best of the sizes"] == "not measured"  # the CPU row is not a GPU figure


def test_pinned_transfer_below_48_gb_s_is_missed(tmp_path: Path) -> None:
    rows = [bench_row("transfer", "h2d pinned", "uint8", 2**28, {"gbps": 30.1}),
            bench_row("transfer", "h2d pinned non-blocking", "uint8", 2**28, {"gbps": 31.0}),
            bench_row("transfer", "d2h pinned", "uint8", 2**28, {"gbps": 50.0})]  # fmt: skip
    write(tmp_path / "transfer.json", {"rows": rows})
    figures = figs.transfer_figures(tmp_path)
    assert judged(figures)["h2d pinned: best of the sizes"] == "missed"
    assert figures[0].value == 31.0 and figures[0].note == "h2d pinned non-blocking, 256 MiB"


@pytest.mark.parametrize(("mfu", "last", "mfu_verdict", "loss_verdict"),
                         [(0.55, 3.0, "met", "met"), (0.31, 11.0, "missed", "missed")])  # fmt: skip
def test_training_verdicts(tmp_path: Path, mfu: float, last: float, mfu_verdict: str, loss_verdict: str) -> None:
    write(tmp_path / "gpu_train.json", {"complete": True, "compiled": True, "mfu": mfu, "tokens_per_s": 4e5,
                                        "first_loss": 10.9, "last_loss": last, "history": []})  # fmt: skip
    v = judged(figs.train_figures(tmp_path))
    assert (v["GPT-2 124M bf16 MFU"], v["last loss"]) == (mfu_verdict, loss_verdict)


def test_a_training_run_cut_short_still_gives_its_last_interval(tmp_path: Path) -> None:
    history = [{"step": 10, "loss": 10.9, "mfu": 0.1, "tokens_per_s": 1e4}, {"step": 20, "loss": 9.0, "mfu": 0.52,
                                                                            "tokens_per_s": 4e5}]  # fmt: skip
    write(tmp_path / "gpu_train.json", {"complete": False, "compiled": True, "history": history, "first_loss": 10.9,
                                        "last_loss": 9.0})  # fmt: skip
    mfu = figs.train_figures(tmp_path)[0].judge(rehearsal=False)
    assert mfu.value == pytest.approx(52.0) and mfu.verdict == "met" and "incomplete run" in mfu.note


def test_a_failing_cuda_test_is_named(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_x" name="test_ok"/>'
        '<testcase classname="tests.test_x" name="test_bad"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_x" name="test_skip"><skipped/></testcase></testsuite></testsuites>'
    )
    f = figs.pytest_figures(tmp_path)[0].judge(rehearsal=False)
    assert f.verdict == "missed" and f.value == 1
    assert f.note.startswith("1 passed, 1 failed or errored, 1 skipped (JUnit XML); failing: tests.test_x::test_bad")


def test_without_junit_xml_the_counts_come_from_the_log(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "pytest-cuda.log").write_text(
        "tests/test_a.py::test_one PASSED [ 50%]\ntests/test_a.py::test_two PASSED [100%]\n"
    )
    f = figs.pytest_figures(tmp_path)[0].judge(rehearsal=False)
    assert f.verdict == "met" and "2 passed" in f.note and "no JUnit XML" in f.note


def test_no_cuda_test_run_is_not_a_pass(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text('<testsuite><testcase classname="t" name="a"><skipped/></testcase></testsuite>')
    assert figs.pytest_figures(tmp_path)[0].judge(rehearsal=False).verdict == "not measured"


def test_advise_is_judged_by_its_worst_prediction(tmp_path: Path) -> None:
    row = {"precision": "fp32", "data": "resident", "limited_by": "compute"}
    rows = [{**row, "model": "gpt2", "ratio": 1.2}, {**row, "model": "gpt2", "ratio": 0.4},
            {**row, "model": "mlp", "ratio": 1.4}]  # fmt: skip
    write(tmp_path / "advise_check.json", {"meta": {"dry_run_on_cpu": False}, "rows": rows})
    v = judged(figs.advise_figures(tmp_path))
    assert v == {"advise gpt2: predicted / measured": "missed", "advise mlp: predicted / measured": "met"}


@pytest.mark.parametrize(("ratio", "verdict"), [(0.99, "met"), (0.95, "missed"), (None, "not measured")])
def test_ddp_world_size_one_goal(tmp_path: Path, ratio: float | None, verdict: str) -> None:
    write(tmp_path / "ddp_overhead.json", {"complete": True, "ratios": [1.0], "throughput_ddp_over_plain": ratio})
    assert figs.ddp_figures(tmp_path)[0].judge(rehearsal=False).verdict == verdict


def test_graph_replay_slower_than_eager_is_missed(tmp_path: Path) -> None:
    rows = [bench_row("small-ops", "add 1e+02", "float32", 100, {"graphed_us": 3.0, "speedup_vs_cpu": 0.5}),
            bench_row("residency", "residency", "float32", 64, {"slowdown_copied": 1.8})]  # fmt: skip
    write(tmp_path / "small_ops.json", {"rows": rows})  # eager: 1 us (bench_row's median)
    v = judged(figs.small_ops_figures(tmp_path))
    assert v["launch overhead removed by CUDA-graph replay"] == "missed"
    assert v["GPU / CPU speed-up, smallest add"] == "recorded"


def test_a_torn_json_is_not_measured_rather_than_a_crash(tmp_path: Path) -> None:
    (tmp_path / "gpu_train.json").write_text('{"complete": false, "hist')
    assert judged(figs.train_figures(tmp_path))["GPT-2 124M bf16 MFU"] == "not measured"


@pytest.mark.slow
def test_gpu_train_writes_each_log_interval_and_its_partial_result_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--device", "cpu", "--size", "tiny", "--steps",
           "100000", "--batch-size", "2", "--precision", "fp32", "--no-compile", "--json", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(json.loads(out.read_text())["history"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM): writing what was measured" in err
    data = json.loads(out.read_text())
    assert data["complete"] is False and len(data["history"]) >= 2
    assert data["first_loss"] > 0 and data["compile_and_warmup_s"] >= 0

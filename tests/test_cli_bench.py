"""`tangtoc bench` as a user runs it: bad input gives a message and exit 2; results are written, partial too."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tangtoc import bench
from tangtoc.cli import main

FAST = ["--min-time", "0.01", "--matmul-sizes", "64", "--op-sizes", "100"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "nosuch"], "unknown suite 'nosuch'; the suites are: matmul, small-ops"),
        pytest.param(
            ["bench", "--device", "cuda"],
            "this PyTorch build is CPU-only",
            marks=pytest.mark.skipif(torch.version.cuda is not None, reason="the message of a CPU-only build"),
        ),
        (["bench", "--device", "gpu"], "Did you mean 'cuda'"),
        (["bench", "--json", "/proc/no/such/dir/b.json"], "--json: cannot create the folder /proc/no/such/dir"),
        (["bench", "--plot", "/"], "--plot / is a folder; give a file name"),
        (["bench", "matmul", "--matmul-sizes", "1000000"], "matmul size 1000000 needs .* but cpu has .* free"),
    ],
)
def test_bad_input_is_a_usage_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--op-sizes", "ten"], "expected comma-separated positive integers"),
        (["--min-time", "0"], "expected a finite number of seconds greater than 0, got '0'"),
        (["--min-time", "inf"], "expected a finite number of seconds greater than 0, got 'inf'"),
        (["--min-time", "nan"], "expected a finite number of seconds greater than 0, got 'nan'"),
    ],
)
def test_malformed_values_are_rejected_by_the_parser(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_small_run_writes_table_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["bench", "matmul", "small-ops", *FAST, "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    text = capsys.readouterr().out
    assert "matmul 64" in text and "The article's claims vs measured here" in text and "No GPU present" in text
    data = json.loads(out_json.read_text())
    assert {r["suite"] for r in data["rows"]} == {"matmul", "small-ops"}
    assert all(r["measurement"]["median_s"] > 0 for r in data["rows"])
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_a_failing_case_keeps_the_others_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(cfg: bench.BenchConfig) -> list[bench.Case]:
        def run() -> bench.Row:
            raise RuntimeError("CUDA out of memory (simulated)")

        return [bench.Case("residency", "residency on cpu", run)]

    monkeypatch.setitem(bench.SUITES, "residency", broken)
    out_json = tmp_path / "b.json"
    assert main(["bench", "matmul", "residency", *FAST, "--json", str(out_json)]) == 1
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["suite"] for r in rows] == ["matmul", "residency"]
    assert rows[0]["measurement"] is not None
    assert rows[1]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "CUDA out of memory (simulated)" in capsys.readouterr().out


def test_interrupted_run_still_writes_what_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.run_case
    calls = []

    def run_case(case: bench.Case) -> bench.Row:
        calls.append(case)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(case)

    monkeypatch.setattr(bench, "run_case", run_case)
    out_json = tmp_path / "b.json"
    assert main(["bench", "small-ops", *FAST, "--json", str(out_json)]) == 130
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["case"] == "add 1e+02"


def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_sigterm_ends_the_run_with_every_case_measured_so_far_written(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    sizes = ",".join(["100"] * 40)  # many slow cases: the run is still going when it is terminated
    proc = subprocess.Popen([sys.executable, "-m", "tangtoc", "bench", "small-ops", "--op-sizes", sizes,
                             "--min-time", "0.2", "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip

    def rows_written() -> bool:
        try:
            return len(json.loads(out.read_text())["rows"]) >= 2
        except (OSError, ValueError):
            return False

    _wait_for(rows_written)  # the JSON is rewritten after every case, long before the end
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "tangtoc bench: terminated (SIGTERM)" in err
    data = json.loads(out.read_text())
    assert 2 <= data["metadata"]["cases_done"] == len(data["rows"]) < data["metadata"]["cases_planned"] == 160


def test_the_noisy_note_states_the_threshold_measure_uses() -> None:
    from tangtoc.bench.measure import NOISY_SPREAD
    from tangtoc.cli.render import noisy_note

    assert noisy_note(3).startswith(f"3 measurement(s) marked (noisy): their IQR exceeds {NOISY_SPREAD:.0%} of")

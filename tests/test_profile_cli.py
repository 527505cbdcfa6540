"""`tangtoc profile SCRIPT`: scripts written as users write them, each with a known bound, run unmodified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tangtoc.cli import main
from tangtoc.errors import OutputError

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "profile"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # On a CPU shared with other jobs, OpenMP's threads spin at every barrier and a 64-wide Linear takes
    # milliseconds instead of microseconds: the verdict would judge the machine, not the script.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def profile_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "profile.json"
    code = main(["profile", *args, "--json", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize(
    ("name", "bound"),
    [("input_bound.py", "input-bound"), ("compute_bound.py", "compute-bound"), ("host_bound.py", "host-bound")],
)
def test_each_script_gets_its_known_verdict_on_the_cpu(tmp_path: Path, name: str, bound: str) -> None:
    code, report = profile_json(tmp_path, str(CORPUS / name), "--steps", "3", "--warmup", "1")
    assert code == 0
    assert report["verdict"]["bound"] == bound, report["verdict"]
    assert report["steady_steps"] == 3 and report["stopped_at_limit"]
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"] == torch.__version__


def test_the_phases_add_up_to_the_wall_time_within_5_percent(tmp_path: Path) -> None:
    _, report = profile_json(tmp_path, str(CORPUS / "input_bound.py"), "--steps", "3", "--warmup", "1")
    for step in report["steps"]:
        assert sum(step["seconds"].values()) == pytest.approx(step["wall_seconds"], rel=0.05)


def test_the_terminal_report_names_the_phases_the_verdict_and_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = CORPUS / "input_bound.py"
    assert main(["profile", str(script), "--steps", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"tangtoc profile: {script}: 2 step(s) timed after 1 warm-up (steps end at optimizer.step()); on cpu ("
    )
    for phase in ("waiting for data", "host→device copies", "forward", "backward", "optimizer", "other host time"):
        assert f"│ {phase} " in out
    assert "verdict: input-bound\n  evidence: waiting for data is " in out
    assert "  first change: DataLoader(num_workers=4) would prepare batches while the model runs" in out
    assert "Not seen: other threads (DataLoader workers are covered by the time the loop waits for them)" in out
    assert "what would wait on a GPU: on the CPU nothing waits for a device, so syncs and copies cost nothing here" in (
        out
    )


def test_plot_draws_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "steps.png"
    assert main(["profile", str(CORPUS / "host_bound.py"), "--steps", "2", "--warmup", "1", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in capsys.readouterr().out


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(body)
    return path


LOOP = """
import torch
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range({steps}):
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
"""


def test_the_scripts_exit_status_and_errors_pass_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(script(tmp_path, LOOP.format(steps=3) + "raise SystemExit(3)\n")), "--steps", "9"]) == 3
    path = script(tmp_path, LOOP.format(steps=3) + "raise ValueError('no such column')\n")
    assert main(["profile", str(path), "--steps", "9", "--warmup", "1"]) == 1
    err = capsys.readouterr().err
    assert "ValueError: no such column" in err
    assert f"tangtoc profile: {path} raised ValueError: no such column; the report covers the 3 step(s) before" in err


def test_an_interrupted_profile_reports_the_steps_done_marked_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, LOOP.format(steps=3) + "raise KeyboardInterrupt\n")
    code, report = profile_json(tmp_path, str(path), "--steps", "9", "--warmup", "1")
    assert code == 130
    assert report["run"]["interrupted"] and report["steady_steps"] == 2
    captured = capsys.readouterr()
    assert "(steps end at optimizer.step(); PARTIAL: interrupted after 2 of 9 steps)" in captured.out
    assert "tangtoc profile: interrupted; the report above is partial: it covers the 3 step(s) before." in captured.err


def test_a_script_that_ends_in_warm_up_is_told_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(script(tmp_path, LOOP.format(steps=2))), "--warmup", "2"]) == 1
    assert "ended after 2 step(s), none after the 2 warm-up step(s): nothing to judge." in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        (["--warmup", "x"], "--warmup takes a whole number of steps, got 'x'"),
        (["--plot"], "--plot needs a value"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["profile", str(script(tmp_path, LOOP.format(steps=1))), *args]) == 2
    assert f"tangtoc profile: error: {message}" in capsys.readouterr().err


def test_a_folder_and_a_missing_script_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path)]) == 2
    assert main(["profile"]) == 2
    err = capsys.readouterr().err
    assert f"tangtoc profile: error: {str(tmp_path)!r} is a folder, not a script." in err
    assert "tangtoc profile: error: give the training script to run" in err


# On CUDA: the bounds that only a device shows. Run by benchmarks/gpu_check.sh on a GPU machine.
@pytest.mark.cuda
@pytest.mark.parametrize(
    ("name", "bound"),
    [
        ("sync_bound.py", "sync-bound"),
        ("transfer_bound.py", "transfer-bound"),
        ("host_bound.py", "host-bound"),
        ("compute_bound.py", "compute-bound"),
        ("input_bound.py", "input-bound"),
    ],
)
def test_each_script_gets_its_known_verdict_on_cuda(tmp_path: Path, name: str, bound: str) -> None:
    extra = ["--width", "4096", "--batch", "2048"] if name == "compute_bound.py" else []
    code, report = profile_json(tmp_path, str(CORPUS / name), "--device", "cuda", *extra, "--steps", "5")
    assert code == 0
    assert report["verdict"]["bound"] == bound, report["verdict"]
    device = report["device_times"]
    assert device["steps"] == 3 and device["kernels_per_step"] > 0 and 0 < device["busy_share"] <= 1
    assert 0 <= device["steps_gpu_waited_on_host"] <= device["timed_steps"] == 5


def test_a_report_that_cannot_be_written_is_still_shown_and_the_run_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: object, data: object) -> None:
        raise OutputError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr("tangtoc.cli.render.write_atomic", full)
    out = tmp_path / "r.json"
    assert main(["profile", str(script(tmp_path, LOOP.format(steps=3))), "--warmup", "1", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "verdict: " in captured.out  # the report was shown before the write failed
    assert (
        f"tangtoc profile: the JSON report was not written (it is shown above): cannot write {out}: no space left"
        in captured.err
    )

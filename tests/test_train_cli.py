"""`tangtoc train`: a summary with the numbers that matter, a sample for GPT, JSON that parses, clear usage errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import torch

import tangtoc.cli.train as train_cli
from tangtoc.cli import main
from tangtoc.train import load_checkpoint


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs without --checkpoint-dir save under ./runs: not into the repository


def test_train_gpt_prints_summary_and_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "gpt", "--size", "tiny", "--steps", "6", "--log-every", "3", "--max-bytes", "20000", "--threads",
            "1", "--device", "cpu", "--sample-tokens", "20", "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tangtoc train gpt tiny: 34,688 parameters on cpu" in out
    assert re.search(r"steps: 6 \| train loss \d\.\d{4} \(mean of steps 4 to 6\), last step \d\.\d{4} \|", out)
    assert "tokens/s" in out
    assert f"more text: tangtoc sample {tmp_path / 'step-00000006.pt'} --prompt TEXT" in out
    # no published CPU peak: the summary says so, not a guessed MFU
    assert re.search(r"MFU n/a: no published fp32 peak for .+ \(cpu\) in tangtoc's hardware table", out)
    assert "sample (temperature 0.8, top-k 40, prompt 'def '):\ndef " in out
    assert (tmp_path / "step-00000006.pt").exists() and (tmp_path / "metrics.jsonl").exists()
    assert main([*argv[:5], "12", *argv[6:], "--resume"]) == 0
    assert "steps: 12 (resumed from step 6)" in capsys.readouterr().out


def test_train_mlp_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "mlp", "--size", "tiny", "--steps", "5", "--threads", "1", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "mlp tiny" and data["steps"] == 5 and data["sample"] is None
    assert data["samples_per_s"] > 0 and data["tokens_per_s"] is None and data["mfu"] is None
    assert data["loss_steps"] == [1, 5] and data["last_step_loss"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "gpt", "--size", "huge"], "unknown gpt size 'huge'; the sizes are: gpt2, small, mini, tiny"),
        (["train", "mlp", "--size", "gpt2"], "unknown mlp size 'gpt2'"),
        (["train", "gpt", "--resume"], "--resume needs --checkpoint-dir"),
        (["train", "gpt", "--no-save", "--checkpoint-dir", "x"], "--no-save keeps nothing, so it cannot go with"),
        (["train", "gpt", "--no-save", "--resume"], "--no-save keeps nothing, so it cannot go with"),
        (["train", "mlp", "--size", "tiny", "--data", "x.txt"], "mlp trains on synthetic classification data only"),
        (["train", "gpt", "--size", "tiny", "--data", "/nonexistent/corpus"], "no such file or folder"),
        (["train", "gpt", "--device", "gpu"], "Did you mean 'cuda'?"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_steps_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "gpt", "--steps", "0"])
    assert exc.value.code == 2
    assert "must be >= 1, got 0" in capsys.readouterr().err


def test_in_a_pipe_each_log_point_prints_a_line(tmp_path: Path) -> None:
    # `tangtoc train ... 2>&1 | cat`: no terminal, so no bar; before, nothing came until the summary.
    cmd = [sys.executable, "-m", "tangtoc", "train", "gpt", "--size", "tiny", "--steps", "60", "--log-every", "20",
           "--max-bytes", "20000", "--threads", "1", "--device", "cpu", "--sample-tokens", "5"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    logs = [line for line in lines if line.startswith("train step ")]
    assert [line.split(" | ")[0] for line in logs] == ["train step 20/60", "train step 40/60", "train step 60/60"]
    # The MFU part is the throughput owner's (tests/test_fit_mfu.py): here only that it stays on the one line.
    assert all(
        re.search(r"\| loss \d\.\d{4} \| lr [\d.e+-]+ \| [\d,]+ tok/s \| (MFU [^|]+ \| )?[\d.]+ s elapsed$", line)
        for line in logs
    ), logs
    assert lines.index(logs[-1]) < next(i for i, line in enumerate(lines) if line.startswith("tangtoc train gpt"))
    assert re.fullmatch(r"eval step 60 \| eval loss \d\.\d{4}", lines[lines.index(logs[-1]) + 1])


def test_without_checkpoint_dir_the_run_is_kept_in_its_own_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "mlp", "--size", "tiny", "--steps", "3", "--threads", "1", "--device", "cpu"]
    assert main(argv) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"mlp-tiny-\d{8}-\d{6}", run.name)
    captured = capsys.readouterr()
    assert f"tangtoc train: saving this run in runs/{run.name}/ (--checkpoint-dir to choose, --no-save for none)" in (
        captured.err
    )
    assert f"checkpoint: runs/{run.name}/step-00000003.pt" in captured.out
    assert load_checkpoint(run / "step-00000003.pt")["step"] == 3
    assert main([*argv, "--no-save"]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 1 and "saving" not in capsys.readouterr().err


class _Frozen(datetime):
    """The clock stopped at 2026-11-30 21:00:00 UTC: runs started in the same second."""

    @classmethod
    def now(cls, tz: object = None) -> _Frozen:  # type: ignore[override]
        return cls(2026, 11, 30, 21, 0, 0)


def test_two_runs_in_one_second_get_two_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "datetime", _Frozen)
    argv = ["train", "mlp", "--size", "tiny", "--steps", "2", "--threads", "1", "--device", "cpu", "--json"]
    assert main(argv) == 0 and main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["mlp-tiny-20261130-210000", "mlp-tiny-20261130-210000-2"]


@pytest.mark.parametrize(
    ("in_the_way", "reason"),
    [("runs", "Not a directory"), ("runs/mlp-tiny-20261130-210000", "a file is in the way")],
)
def test_a_run_folder_that_cannot_be_made_is_a_usage_error(
    in_the_way: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train_cli, "datetime", _Frozen)
    (tmp_path / in_the_way).parent.mkdir(exist_ok=True)
    (tmp_path / in_the_way).write_text("not a folder")
    assert main(["train", "mlp", "--size", "tiny", "--steps", "2", "--device", "cpu"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"tangtoc train: error: cannot create the run folder runs/mlp-tiny-20261130-210000: {reason}. Pass "
        "--checkpoint-dir with a writable folder, or --no-save to keep nothing."
    ) in err


def test_a_run_that_fails_leaves_no_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "mlp", "--size", "tiny", "--steps", "2", "--device", "cpu", "--strategy", "fsdp"]) == 2
    assert "strategy='fsdp' needs several processes" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


def test_resume_says_what_it_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "typo"
    argv = ["train", "mlp", "--size", "tiny", "--threads", "1", "--device", "cpu", "--checkpoint-dir", str(ckpt),
            "--resume", "--steps"]  # fmt: skip
    assert main([*argv, "4"]) == 0  # a scheduler's rerun passes --resume from the first run on: it starts, and says so
    assert f"tangtoc train: --resume: no checkpoint in {ckpt} yet, so this run starts at step 0." in (
        capsys.readouterr().err.replace("\n", "")
    )
    assert main([*argv, "4"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"nothing to train: {ckpt / 'step-00000004.pt'} is already at step 4, as many as --steps." in err
    assert main([*argv, "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "step-00000004.pt is at step 4, past --steps 2: there is nothing to train. Fix: --steps above 4" in err


def test_a_checkpoint_dir_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["train", "mlp", "--size", "tiny", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "f")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"tangtoc train: error: cannot write checkpoints to {tmp_path / 'f'}: it is a file, not a folder." in err
    assert "Traceback" not in err

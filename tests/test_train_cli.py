"""`tangtoc train`: a summary with the numbers that matter, a sample for GPT, JSON that parses, clear usage errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tangtoc.cli import main


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_gpt_prints_summary_and_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "gpt", "--size", "tiny", "--steps", "6", "--log-every", "3", "--max-bytes", "20000", "--threads",
            "1", "--device", "cpu", "--sample-tokens", "20", "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tangtoc train gpt tiny: 34,688 parameters on cpu" in out
    assert "steps: 6 | final train loss" in out and "tokens/s" in out
    assert "MFU n/a" in out  # no published CPU peak: said, not guessed
    assert "sample (temperature 0.8, top-k 40, prompt 'def '):\ndef " in out
    assert (tmp_path / "step-00000006.pt").exists() and (tmp_path / "metrics.jsonl").exists()
    assert main([*argv[:5], "12", *argv[6:], "--resume"]) == 0
    assert "steps: 12 (resumed from step 6)" in capsys.readouterr().out


def test_train_mlp_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "mlp", "--size", "tiny", "--steps", "5", "--threads", "1", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "mlp tiny" and data["steps"] == 5 and data["sample"] is None
    assert data["samples_per_s"] > 0 and data["tokens_per_s"] is None and data["mfu"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "gpt", "--size", "huge"], "unknown gpt size 'huge'; the sizes are: gpt2, small, mini, tiny"),
        (["train", "mlp", "--size", "gpt2"], "unknown mlp size 'gpt2'"),
        (["train", "gpt", "--resume"], "--resume needs --checkpoint-dir"),
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

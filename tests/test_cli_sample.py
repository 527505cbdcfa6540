"""`tangtoc sample`: text from the GPT a `tangtoc train gpt` run saved, its size read from the checkpoint."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    argv = ["train", "gpt", "--size", "tiny", "--steps", "4", "--log-every", "2", "--max-bytes", "20000", "--threads",
            "1", "--device", "cpu", "--sample-tokens", "0", "--checkpoint-dir", str(folder), "--json"]  # fmt: skip
    assert main(argv) == 0
    return folder


def test_sample_continues_the_prompt_reproducibly(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = ["sample", str(run_dir / "step-00000004.pt"), "--prompt", "import ", "--tokens", "30", "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("import ") and len(text) > len("import \n")
    assert main([*argv, "--seed", "0"]) == 0 and capsys.readouterr().out == text  # seed 0 is the default
    assert main(["sample", str(run_dir), *argv[2:]]) == 0  # the run's folder: its newest checkpoint
    assert capsys.readouterr().out == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "--prompt is empty; the model needs at least one byte to continue."),
        (["--tokens", "-1"], "--tokens must be >= 0, got -1."),
        (["--temperature", "0"], "--temperature must be a finite number > 0, got 0.0."),
        (["--top-k", "257"], "--top-k must be between 1 and 256 (this model's vocabulary)."),
    ],
)
def test_bad_flags_exit_2(args: list[str], message: str, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--device", "cpu", *args]) == 2
    assert f"tangtoc sample: error: {message}" in " ".join(capsys.readouterr().err.split())


def test_a_path_without_a_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert f"tangtoc sample: error: no checkpoint at {tmp_path / 'nope'}: no such file or folder." in (
        capsys.readouterr().err.replace("\n", "")
    )
    assert main(["sample", str(tmp_path)]) == 2
    assert "holds no checkpoint (no step-NNNNNNNN.pt file)" in capsys.readouterr().err


def test_an_mlp_checkpoint_is_no_gpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "mlp", "--size", "tiny", "--steps", "1", "--threads", "1", "--device", "cpu", "--json"]
    assert main([*argv, "--checkpoint-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path), "--device", "cpu"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "step-00000001.pt holds a MLP(in_features=" in err and "), not a GPT, so the model cannot be rebuilt" in err

"""tangtoc export: a checkpoint's weights as safetensors, loadable without tangtoc into a fresh model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open

from tangtoc.cli import main
from tangtoc.errors import CheckpointError
from tangtoc.export import export_safetensors
from tangtoc.models import GPT, gpt_config
from tangtoc.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT]:
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny"))
    idx = torch.randint(0, model.config.vocab_size, (4, 2, model.config.block_size + 1))
    batches = [(x[:, :-1], x[:, 1:]) for x in idx]
    folder = tmp_path_factory.mktemp("run")
    fit(model, batches, steps=3, log_every=1, progress=False, checkpoint_dir=folder, device="cpu")
    return folder, model


def test_the_weights_load_into_a_fresh_model_without_tangtoc(run_dir: tuple[Path, GPT], tmp_path: Path) -> None:
    folder, trained = run_dir
    out = export_safetensors(folder, tmp_path / "model.safetensors")  # a folder: its newest checkpoint
    fresh = GPT(gpt_config("tiny"))
    fresh.load_state_dict(load_file(str(out)))  # strict: every key the model expects is there
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["tangtoc_step"] == "3" and meta["tangtoc_source"] == "step-00000003.pt"
    if "tangtoc_model" in meta:  # where the checkpoint stores the model's config
        assert json.loads(meta["tangtoc_model"])["class"] == "GPT"


def test_the_cli_writes_and_says_where(
    run_dir: tuple[Path, GPT], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(run_dir[0] / "step-00000003.pt"), "--safetensors", str(tmp_path / "w.st")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'w.st'} (")


def test_not_a_checkpoint_is_refused_with_the_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, bogus)
    with pytest.raises(CheckpointError, match="is not a tangtoc checkpoint"):
        export_safetensors(bogus, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export_safetensors(tmp_path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()

"""tangtoc.train.checkpoint and resume: atomic files, the last K kept, unsafe or damaged files refused."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tangtoc.data import ResidentLoader, synthetic_classification
from tangtoc.errors import CorruptCheckpointError
from tangtoc.models import MLP, MLPConfig
from tangtoc.train import CheckpointError, fit, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tangtoc.train.checkpoint import rng_state, set_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch at one thread for the test


def _state(step: int) -> dict[str, object]:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "rng": {}, "data": {}}


def test_save_is_atomic_and_keeps_the_last_k(tmp_path: Path) -> None:
    (tmp_path / ".step-abandoned.tmp").write_bytes(b"half a checkpoint from a killed run")
    for step in (10, 20, 30, 40):
        save_checkpoint(_state(step), tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030.pt", "step-00000040.pt"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".tangtoc.lock", "step-00000030.pt", "step-00000040.pt"]  # no .tmp left; the lock file stays
    loaded = load_checkpoint(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert loaded["step"] == 40 and torch.equal(loaded["model"]["w"], torch.full((3,), 40.0))


def test_newest_is_chosen_by_step_not_by_name_order(tmp_path: Path) -> None:
    for step in (9, 100_000_000, 10):
        save_checkpoint(_state(step), tmp_path, keep_last=5)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-100000000.pt"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_truncated_checkpoint_is_rejected_clearly(tmp_path: Path) -> None:
    path = save_checkpoint(_state(5), tmp_path, keep_last=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"step-00000005\.pt is corrupt or truncated: .* cut short"):
        load_checkpoint(path)


class _RunsCode:
    """An object whose unpickling would call os.mkdir: a stand-in for a malicious checkpoint."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.target),))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "code-ran"
    path = tmp_path / "step-00000001.pt"
    state = _state(1) | {"format": "tangtoc.checkpoint", "version": 1, "extra": _RunsCode(sentinel)}
    torch.save(state, path)
    # It carries tangtoc's format marker: tangtoc never wrote those objects, so turning the safety off is no fix.
    with pytest.raises(CheckpointError, match=r"refused to load .*could run code \(.*GLOBAL \w+\.mkdir.*\)\. tangtoc "
                       r"never writes such objects.*do not load it with weights_only=False") as refused:  # fmt: skip
        load_checkpoint(path)
    assert not isinstance(refused.value, CorruptCheckpointError)
    assert not sentinel.exists()


def test_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"is not a tangtoc checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")
    torch.save({"format": "tangtoc.checkpoint", "version": 1, "step": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"lacks model, optimizer, rng, data"):
        load_checkpoint(tmp_path / "partial.pt")


def test_rng_states_round_trip_through_a_safe_load(tmp_path: Path) -> None:
    device = torch.device("cpu")
    torch.save(rng_state(device), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), device)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def _train(steps: int, directory: Path) -> MLP:
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3))
    x, y = synthetic_classification(100, features=8, classes=3)
    loader = ResidentLoader(x, y, batch_size=16, seed=2, device="cpu")  # 7 batches: crosses epoch boundaries
    fit(
        model,
        loader,
        loss_fn=F.cross_entropy,
        steps=steps,
        checkpoint_dir=directory,
        checkpoint_every=5,
        progress=False,
        device="cpu",
    )
    return model


def test_resume_in_process_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _train(20, tmp_path / "straight")
    _train(10, tmp_path / "split")
    resumed = _train(20, tmp_path / "split")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert load_checkpoint(latest_checkpoint(tmp_path / "split"))["step"] == 20  # type: ignore[arg-type]


def test_resume_into_another_model_or_afresh_into_a_used_folder_is_refused(tmp_path: Path) -> None:
    _train(5, tmp_path)
    other = MLP(MLPConfig(in_features=8, hidden=32, out_features=3))
    x, y = synthetic_classification(32, features=8, classes=3)
    # The fields that differ, read from the config stored beside the weights (not load_state_dict's tensor dump).
    with pytest.raises(CheckpointError, match=r"it holds a MLP of another shape \(hidden=16 there, 32 here\)\. Fix"):
        fit(other, [(x, y)], loss_fn=F.cross_entropy, steps=10, checkpoint_dir=tmp_path, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"resume=False, but checkpoint_dir already holds .*step-00000005\.pt"):
        fit(
            other,
            [(x, y)],
            loss_fn=F.cross_entropy,
            steps=2,
            checkpoint_dir=tmp_path,
            resume=False,
            progress=False,
            device="cpu",
        )


def test_resume_truncates_the_metrics_log_to_the_checkpoint(tmp_path: Path) -> None:
    _train(10, tmp_path)  # logs at steps 5 and 10: a checkpoint step is also a log point
    (tmp_path / "step-00000010.pt").unlink()  # as if killed after logging step 10 but before its checkpoint
    _train(12, tmp_path)
    steps = [r["step"] for r in load_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [5, 10, 12]


def load_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_checkpoint_without_a_config_still_names_the_tensors_that_differ(tmp_path: Path) -> None:
    _train(5, tmp_path)
    path = latest_checkpoint(tmp_path)
    assert path is not None
    state = load_checkpoint(path)
    assert state["model_config"] == {
        "class": "MLP",
        "config": {"in_features": 8, "hidden": 16, "out_features": 3, "depth": 2},
    }
    del state["model_config"]  # as written before tangtoc stored configs
    path.unlink()
    save_checkpoint(state, tmp_path, keep_last=3)
    other = MLP(MLPConfig(in_features=8, hidden=32, out_features=3))
    x, y = synthetic_classification(32, features=8, classes=3)
    with pytest.raises(CheckpointError, match=r"does not match this model or optimizer: .*size mismatch for net"):
        fit(other, [(x, y)], loss_fn=F.cross_entropy, steps=10, checkpoint_dir=tmp_path, progress=False, device="cpu")


def test_resume_with_fewer_steps_than_done_says_there_is_nothing_to_train(tmp_path: Path) -> None:
    _train(10, tmp_path)
    with pytest.raises(ValueError, match=r"step-00000010\.pt is at step 10, past steps=5: there is nothing to train\. "
                                         r"Fix: steps > 10 \(--steps in the CLI\)"):  # fmt: skip
        _train(5, tmp_path)


def test_resuming_a_finished_run_reports_its_losses_and_adds_no_record(tmp_path: Path) -> None:
    x, y = synthetic_classification(64, features=8, classes=3)

    def finish() -> tuple[float | None, float | None, tuple[int, int] | None]:
        torch.manual_seed(0)
        model = MLP(MLPConfig(in_features=8, hidden=16, out_features=3))
        r = fit(model, [(x[:32], y[:32])], loss_fn=F.cross_entropy, steps=4, log_every=3, eval_data=[(x[32:], y[32:])],
                checkpoint_dir=tmp_path, progress=False, device="cpu")  # fmt: skip
        return r.loss, r.eval_loss, r.loss_steps

    first = finish()
    assert finish() == finish() == first  # the logged losses, not None, and no new evaluation
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 3), ("train", 4), ("eval", 4)]


@pytest.mark.parametrize(
    ("inside", "problem"),
    [(".", "it is a file, not a folder"), ("sub/ckpt", "{file} is a file, so no folder can be made under it")],
)
def test_a_checkpoint_dir_that_cannot_be_used_is_refused_before_training(
    inside: str, problem: str, tmp_path: Path
) -> None:
    file = tmp_path / "taken"
    file.write_text("not a folder")
    where = file / inside if inside != "." else file
    message = f"cannot write checkpoints to {where}: {problem.format(file=file)}. Fix: a folder you can write to"
    with pytest.raises(CheckpointError, match=re.escape(message)):  # was a bare FileExistsError / NotADirectoryError
        _train(1, where)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        save_checkpoint(_state(1), where, keep_last=1)


def test_an_unwritable_checkpoint_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root may write anywhere, so the refusal of the OS is played by os.access (what the check asks).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints to .*: permission denied: it is not writable"):
        _train(1, tmp_path)

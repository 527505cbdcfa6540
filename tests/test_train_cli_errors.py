"""`tangtoc train` when things go wrong: one exit-status rule (2 usage, found before any work; 1 failure), resume
errors worded in flags, --init-from, a checkpoint that cannot be written after training (the result still
printed, the last good checkpoint kept), a non-finite loss that names only what was not tried, --threads,
non-finite numbers and --device meta refused up front."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tangtoc.cli import main
from tangtoc.device import cpu_cores
from tangtoc.train import list_checkpoints, load_checkpoint, save_checkpoint

MLP = ["train", "mlp", "--size", "tiny", "--threads", "1", "--device", "cpu", "--log-every", "2"]
GPT = ["train", "gpt", "--size", "tiny", "--threads", "1", "--device", "cpu", "--log-every", "2", "--max-bytes",
       "20000", "--sample-tokens", "5"]  # fmt: skip
API_WORDS = re.compile(r"resume=|checkpoint_dir|load_state_dict|on_nonfinite|clip_grad|Traceback")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.chdir(tmp_path)  # runs without --checkpoint-dir save under ./runs: not into the repository


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


def _usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error of a command line refused by argparse: exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return _err(capsys)


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """A finished 4-step MLP run's folder."""
    assert main([*MLP, "--steps", "4", "--checkpoint-dir", str(tmp_path / "a"), "--json"]) == 0
    return tmp_path / "a"


# -- one exit-status rule --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "meta"], "--device meta: the meta device holds shapes without data, so nothing can be trained"),
        (["--init-from", "nowhere"], "no checkpoint at nowhere: no such file or folder"),
        (["--init-from", "."], "holds no checkpoint (no step-NNNNNNNN.pt file)"),
        (["--no-save", "--checkpoint-every", "2"], "--no-save keeps nothing, so it cannot go with"),
        (["--nproc", "2", "--device", "meta"], "--device meta"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*MLP, "--steps", "2", *extra]) == 2
    err = _err(capsys)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*GPT, "--sample-tokens", "-5"], "--sample-tokens: must be >= 0, got -5"),  # used only after training
        ([*MLP, "--threads", "100000"], f"--threads: expected 1 to {cpu_cores()} (the cores this process may use)"),
        (["bench", "--threads", "100000"], f"--threads: expected 1 to {cpu_cores()}"),
        (["advise", "--threads", "0"], "--threads: expected 1 to"),
        (["advise", "--launch-us", "inf"], "--launch-us: expected a finite number, got 'inf'"),
        (["advise", "--launch-us", "nan"], "--launch-us: expected a finite number, got 'nan'"),
    ],
)
def test_flags_that_cannot_work_are_refused_when_parsed(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage(argv, capsys)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_threads_up_to_the_cores_are_taken(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*MLP[:-4], "--log-every", "2", "--threads", str(cpu_cores()), "--steps", "2", "--no-save"]) == 0
    assert torch.get_num_threads() == cpu_cores()


# -- --init-from: the weights only -----------------------------------------------------------------------------------


def test_init_from_starts_a_new_run_from_the_weights_only(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    new = tmp_path / "b"
    # New batch size, new learning rate (0: AdamW leaves the weights as loaded), one step, another folder.
    argv = [*MLP, "--steps", "1", "--batch-size", "16", "--lr", "0", "--init-from", str(trained), "--checkpoint-dir"]
    assert main([*argv, str(new)]) == 0
    assert f"starting from the weights of {trained / 'step-00000004.pt'} (its step 4) at step 0, with a fresh " in (
        _err(capsys)
    )
    before, after = load_checkpoint(trained / "step-00000004.pt"), load_checkpoint(new / "step-00000001.pt")
    assert after["step"] == 1  # the step counter started at 0
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert {int(s["step"]) for s in after["optimizer"]["state"].values()} == {1}  # a fresh optimizer: one step


def test_init_from_another_model_is_a_usage_error_naming_size(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["train", "mlp", "--size", "small", "--device", "cpu", "--steps", "2", "--init-from", str(trained)]) == 2
    )
    err = _err(capsys)
    assert (
        f"tangtoc train: error: --init-from: {trained / 'step-00000004.pt'} holds a MLP(in_features=32, hidden=32, "
        "out_features=10, depth=1), and `tangtoc train mlp --size small` builds a MLP of another shape (hidden=32 "
        "there, 512 here; depth=1 there, 4 here). Fix: the model and --size that it was trained with."
    ) in err


def test_init_from_with_resume_starts_once_then_resumes(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*MLP, "--init-from", str(trained), "--resume", "--checkpoint-dir", str(tmp_path / "b"), "--steps"]
    assert main([*argv, "2"]) == 0  # a scheduler's first launch: no checkpoint in b yet
    assert "no checkpoint in" in _err(capsys)
    assert main([*argv, "4"]) == 0  # its rerun continues b, not a
    assert "--resume: continuing from" in _err(capsys)
    assert load_checkpoint(tmp_path / "b" / "step-00000004.pt")["step"] == 4


# -- resume errors in the words of the flags -------------------------------------------------------------------------


def _world_of_two(folder: Path) -> None:
    state = load_checkpoint(folder / "step-00000004.pt")
    (folder / "step-00000004.pt").unlink()
    save_checkpoint({**state, "world_size": 2}, folder, keep_last=3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--batch-size", "16"],
            "--batch-size (256 there, 16 here) differ. Fix: the same --data, --max-bytes, "
            "--batch-size and --seed as the run that wrote it, or, for new data, --init-from",
        ),
        (["--seed", "3"], "--seed (0 there, 3 here) differ"),
        (
            ["--size", "small"],
            "holds a MLP(in_features=32, hidden=32, out_features=10, depth=1), and `tangtoc train "
            "mlp --size small` builds a MLP of another shape",
        ),
        (["--steps", "2"], "is at step 4, past --steps 2: there is nothing to train. Fix: --steps above 4"),
        (
            [],
            "was written by a run of 2 process(es), and this one has 1. Each process's data position and random "
            "state are in it, so resume on as many processes (--nproc, --nnodes), or start a new run from its "
            "weights alone: --init-from",
        ),
    ],
)
def test_resume_errors_name_the_flags(
    extra: list[str], message: str, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not extra:
        _world_of_two(trained)
    argv = ["train", "mlp", "--size", "tiny", "--device", "cpu", "--steps", "8", "--resume", "--checkpoint-dir"]
    capsys.readouterr()
    assert main([*argv, str(trained), *extra]) == 2
    err = _err(capsys)
    assert f"tangtoc train: error: --resume: {trained / 'step-00000004.pt'} " in err
    assert message in err
    assert not API_WORDS.search(err), err


def test_a_new_run_in_a_folder_of_another_run_is_refused_with_the_flags(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main([*MLP, "--steps", "2", "--checkpoint-dir", str(trained)]) == 2
    err = _err(capsys)
    assert f"--checkpoint-dir {trained} already holds checkpoints of another run (newest: step-00000004.pt). Fix: " in (
        err
    )
    assert "--resume to continue that run" in err and not API_WORDS.search(err)


def test_an_unreadable_checkpoint_on_resume_fails_with_the_flags(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (trained / "step-00000004.pt").write_bytes(b"\x00" * 100)
    capsys.readouterr()
    assert main([*MLP, "--steps", "8", "--resume", "--checkpoint-dir", str(trained)]) == 1
    err = _err(capsys)
    assert "step-00000004.pt" in err and not API_WORDS.search(err), err


# -- a non-finite loss -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named", "not_named"),
    [
        (["--no-save"], ["a lower --lr (this run used 1e+06)", "--warmup STEPS", "Nothing was kept (--no-save)."],
         ["--precision", "--checkpoint-every", "--init-from"]),
        (["--warmup", "2", "--precision", "bf16", "--checkpoint-every", "1"],
         ["a lower --lr (this run used 1e+06)", "--precision fp32", "Start from its weights with the change: "
          "--init-from", "/step-00000004.pt and another --checkpoint-dir"],
         ["--warmup STEPS", "--precision bf16"]),
    ],
)  # fmt: skip
def test_a_non_finite_loss_names_only_what_was_not_tried(
    extra: list[str], named: list[str], not_named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = [] if "--no-save" in extra else ["--checkpoint-dir", str(tmp_path / "run")]
    assert main([*MLP[:-2], "--log-every", "1", "--steps", "50", "--lr", "1e6", *extra, *folder]) == 1
    err = _err(capsys)
    assert "tangtoc train: error: the training loss was not finite (NaN or infinite) at step " in err
    for text in named:
        assert text in err
    for text in not_named:
        assert text not in err
    assert not API_WORDS.search(err), err


# -- a checkpoint that cannot be written after training --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs: room for one checkpoint of GPT tiny (0.4 MiB), not for two."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'no permission'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_after_training_prints_the_result_and_keeps_the_last_checkpoint(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = small_disk / "run"
    assert main([*GPT, "--steps", "6", "--checkpoint-every", "2", "--checkpoint-dir", str(run)]) == 1
    captured = capsys.readouterr()
    assert re.search(r"steps: 4 \| train loss \d\.\d{4} \(mean of steps 3 to 4\)", captured.out), captured.out
    assert f"checkpoint: {run / 'step-00000002.pt'}" in captured.out
    err = " ".join(captured.err.split())
    assert re.search(
        rf"tangtoc train: error: could not write the checkpoint of step 4 in {run}: no space left on the device "
        rf"holding {run}, 0\.4 MiB needed \([\d.]+ KiB free\)\. Training reached step 4 of 6 \(summary above\)\. The "
        rf"last good checkpoint is {run / 'step-00000002.pt'}: --resume continues from it",
        err,
    ), err
    assert "Traceback" not in err
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002.pt"]
    assert load_checkpoint(run / "step-00000002.pt")["step"] == 2
    assert not list(run.glob(".step-*.tmp"))  # the partial file is gone


@pytest.fixture
def unwritable() -> Iterator[list[str]]:
    """How to make a folder unwritable here: chattr +i for root (whom chmod does not stop), chmod for others."""
    if os.geteuid() != 0:
        yield ["chmod", "a-w"]
    elif shutil.which("chattr"):
        yield ["chattr", "+i"]
    else:
        pytest.skip("running as root, whom chmod does not stop, and without chattr")


def test_a_folder_made_read_only_during_the_run_gives_the_result_and_keeps_the_last_checkpoint(
    unwritable: list[str], tmp_path: Path
) -> None:
    run, out, err = tmp_path / "run", tmp_path / "out.txt", tmp_path / "err.txt"
    cmd = [sys.executable, "-m", "tangtoc", *MLP, "--steps", "100000000", "--checkpoint-every", "40", "--log-every",
           "20", "--checkpoint-dir", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=tmp_path)
    undo = ["chattr", "-i"] if unwritable[0] == "chattr" else ["chmod", "u+w"]
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list_checkpoints(run), err.read_text()
        subprocess.run([*unwritable, str(run)], check=True)
        kept = list_checkpoints(run)
        proc.send_signal(signal.SIGTERM)  # preempted: the checkpoint it then writes cannot be written
        assert proc.wait(timeout=120) == 1, err.read_text()
    finally:
        subprocess.run([*undo, str(run)], check=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = " ".join(err.read_text().split())
    assert re.search(r"tangtoc train: error: could not write the checkpoint of step \d+: cannot write checkpoints to "
                     rf"{run}: permission denied: it is not writable\. Training reached step \d+ of 100000000 "
                     rf"\(summary above\)\. The last good checkpoint is {kept[-1]}", said), said  # fmt: skip
    assert "Traceback" not in said
    assert "tangtoc train mlp tiny" in out.read_text() and f"checkpoint: {kept[-1]}" in out.read_text()
    assert list_checkpoints(run) == kept
    assert load_checkpoint(kept[-1])["step"] > 0


def test_library_words_become_flags_but_folder_names_stay() -> None:
    from tangtoc.cli.train_resume import for_cli

    said = for_cli(
        "cannot read /x/checkpoint_dir/a.pt. Fix: another checkpoint_dir, or start afresh with resume=False."
    )
    assert said == (
        "cannot read /x/checkpoint_dir/a.pt. Fix: another --checkpoint-dir, or start afresh in another "
        "--checkpoint-dir."
    )


def test_a_busy_folder_is_worded_in_flags(tmp_path: Path) -> None:
    import threading

    from tangtoc.cli.train_resume import for_cli
    from tangtoc.errors import FolderInUseError
    from tangtoc.train.folderlock import FolderLock

    refused: list[FolderInUseError] = []

    def second_run() -> None:  # another thread: the lock is re-entrant only for the thread that holds it
        try:
            FolderLock(tmp_path, "train").release()
        except FolderInUseError as e:
            refused.append(e)

    with FolderLock(tmp_path, "train"):
        t = threading.Thread(target=second_run)
        t.start()
        t.join()
    said = for_cli(str(refused[0]))
    assert "give this run another folder (--checkpoint-dir), or wait" in said
    assert "checkpoint_dir" not in said.replace("--checkpoint-dir", "")


def test_a_resumed_run_whose_checkpoint_fails_says_the_steps_its_loss_is_the_mean_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tangtoc.train import checkpoint

    run = tmp_path / "run"
    assert main([*MLP, "--steps", "4", "--checkpoint-dir", str(run)]) == 0
    capsys.readouterr()
    real = checkpoint.save_checkpoint

    def full_disk(state: dict, directory: object, *, keep_last: int) -> Path:
        if state["step"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, directory, keep_last=keep_last)

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    assert main([*MLP, "--steps", "6", "--checkpoint-dir", str(run), "--resume"]) == 1
    out = capsys.readouterr().out
    # This run trained steps 5 and 6 only: its loss is not a mean from step 1.
    assert re.search(r"steps: 6 \(resumed from step 4\) \| train loss \d\.\d{4} \(mean of steps 5 to 6\)", out), out

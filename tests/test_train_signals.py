"""Real processes, real signals: SIGKILL mid-run then resume gives the uninterrupted result; SIGTERM checkpoints
and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tangtoc.train import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# A tiny GPT with dropout (so the RNG state matters) on a loader whose epoch is 5 batches (so the resumed run
# crosses an epoch boundary). argv: checkpoint_dir, steps, hang_after_checkpoint_at (0 = never), output file.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    from tangtoc.data import ResidentLoader, stdlib_corpus
    from tangtoc.models import GPT, gpt_config
    from tangtoc.train import fit

    ckpt_dir, steps, hang_at, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    cfg = gpt_config("tiny", dropout=0.1)
    x, y = stdlib_corpus(max_bytes=1_000).windows(cfg.block_size)
    model = GPT(cfg)
    loader = ResidentLoader(x, y, batch_size=6, seed=1, device="cpu")

    def on_event(event):
        if event.kind == "log" and event.step == 3:
            print("running", flush=True)
        if event.kind == "checkpoint" and event.step == hang_at:
            print("checkpointed", flush=True)
            time.sleep(120)  # the test kills us here

    result = fit(model, loader, steps=steps, log_every=1, checkpoint_dir=ckpt_dir, checkpoint_every=6,
                 progress=False, callbacks=[on_event])
    torch.save(model.state_dict(), out)
    print("done", result.start_step, result.step, flush=True)
    """
)


def _start(tmp_path: Path, ckpt: str, steps: int, hang_at: int, out: str) -> subprocess.Popen[str]:
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TANGTOC_DEVICE": "cpu"}
    args = [sys.executable, str(script), str(tmp_path / ckpt), str(steps), str(hang_at), str(tmp_path / out)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    for got in proc.stdout:
        if got.strip() == line:
            return
    raise AssertionError(f"the process ended (rc={proc.wait()}) before printing {line!r}: {proc.stderr.read()}")  # type: ignore[union-attr]


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def test_sigkill_then_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _start(tmp_path, "straight", 12, 0, "straight.pt")
    killed = _start(tmp_path, "split", 12, 6, "unused.pt")
    _wait_for(killed, "checkpointed")
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)  # reaps it and closes its pipes
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "split") == tmp_path / "split" / "step-00000006.pt"
    assert "done 0 12" in _finish(straight)
    assert "done 6 12" in _finish(_start(tmp_path, "split", 12, 0, "resumed.pt"))
    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_sigterm_finishes_the_step_checkpoints_and_exits_0(tmp_path: Path) -> None:
    proc = _start(tmp_path, "ckpt", 1_000_000, 0, "unused.pt")
    _wait_for(proc, "running")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "done" not in out  # it exited from inside fit, as a preempted job should
    newest = latest_checkpoint(tmp_path / "ckpt")
    assert newest is not None
    assert 3 <= load_checkpoint(newest)["step"] < 1_000_000

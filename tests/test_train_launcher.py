"""`tangtoc train --nproc 2` as a scheduler treats it: killed outright, its ranks die with it; preempted with
SIGTERM, it exits 0 after the ranks checkpoint. Real processes, real signals, 2 CPU ranks over gloo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

from tangtoc.train import list_checkpoints, load_checkpoint
from tangtoc.train.distributed import LAUNCHER_PID_VAR

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and dist.is_available() and dist.is_gloo_available()),
    reason="needs Linux (/proc, PR_SET_PDEATHSIG) and torch.distributed with gloo",
)

DEADLINE_S = 180  # two ranks of a tiny MLP start in seconds; on a busy 2-core machine, allow for much more
# Never ends by itself: the test stops it. A checkpoint every 40 steps shows whether anything still trains.
ENDLESS = ["train", "mlp", "--size", "tiny", "--steps", "100000000", "--log-every", "20", "--checkpoint-every", "40",
           "--threads", "1", "--device", "cpu", "--nproc", "2"]  # fmt: skip


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TANGTOC_DEVICE")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie left for a container's init to reap does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait(condition: Callable[[], object], what: str, launcher: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if launcher.poll() is not None:
            raise AssertionError(f"the launcher ended (rc={launcher.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE_S} s:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture
def job(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """An endless 2-rank run checkpointing into ``tmp_path/ckpt``, its output in ``tmp_path/out.log``; whatever is
    left of it is killed afterwards, ranks included (torchrun starts them in sessions of their own)."""
    ckpt, log = tmp_path / "ckpt", tmp_path / "out.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "tangtoc", *ENDLESS, "--checkpoint-dir", str(ckpt)],
                                    stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)  # fmt: skip
    ranks: list[int] = []
    try:
        _wait(lambda: list_checkpoints(ckpt), "first checkpoint", launcher, log)
        ranks += _children(launcher.pid)
        assert len(ranks) == 2, ranks
        yield launcher, ckpt, log
    finally:
        for pid in [launcher.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=60)


def test_sigkill_of_the_launcher_kills_its_ranks(job: tuple[subprocess.Popen[bytes], Path, Path]) -> None:
    launcher, ckpt, log = job
    ranks = _children(launcher.pid)
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 10  # the kernel signals them as the launcher exits: at once
    while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in ranks if _alive(pid)], (
        f"ranks still running after their launcher died:\n{log.read_text()}"
    )
    kept = list_checkpoints(ckpt)
    time.sleep(3)  # a rank still training would write a checkpoint every 40 steps: milliseconds apart
    assert list_checkpoints(ckpt) == kept


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])  # Kubernetes/SLURM's kill, SLURM's --signal
def test_preempting_the_launcher_checkpoints_and_exits_0(
    sig: signal.Signals, job: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    launcher, ckpt, log = job
    ranks = _children(launcher.pid)
    launcher.send_signal(sig)
    assert launcher.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    said = re.search(
        rf"tangtoc train: preempted \({sig.name}\), checkpoint at (\S+); rerun with --resume to continue", text
    )
    assert said, text
    newest = Path(said.group(1))
    assert newest == list_checkpoints(ckpt)[-1]
    state = load_checkpoint(newest)
    assert state["world_size"] == 2 and state["step"] % 20 == 0  # written at a log point, by both ranks together
    assert "Traceback" not in text and "error" not in text
    assert not [pid for pid in ranks if _alive(pid)]


SCRIPT = textwrap.dedent(
    """
    import sys
    from tangtoc.train.distributed import die_with_launcher
    try:
        print(die_with_launcher({sys.argv[2]: sys.argv[1]}))
    except Exception as e:
        print(type(e).__name__, e)
    """
)


@pytest.mark.parametrize(
    ("launcher", "said"),
    [
        ("parent", "True"),  # armed: the kernel kills it with its launcher
        ("1", "DistributedError the launcher of this rank (PID 1, TANGTOC_LAUNCHER_PID) is gone, so this rank stops"),
    ],
)
def test_a_rank_dies_with_its_launcher_or_stops_when_it_is_gone(launcher: str, said: str) -> None:
    pid = str(os.getpid()) if launcher == "parent" else launcher
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, pid, LAUNCHER_PID_VAR], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith(said), proc.stdout + proc.stderr


def test_outside_the_launcher_nothing_is_armed() -> None:
    from tangtoc.train.distributed import die_with_launcher

    assert die_with_launcher({}) is False  # a user's own torchrun: its ranks are left as they were

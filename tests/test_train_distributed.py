"""Training on several processes: real torchrun launches of 2 ranks on the CPU (gloo), and the pieces in one process.

Each launch runs ``tests/distributed_worker.py`` (or ``tangtoc train --nproc 2``) through ``python -m
torch.distributed.run`` with a subprocess timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

import distributed_worker as worker
from subprocesses import run_in_session
from tangtoc.cli import build_parser, main
from tangtoc.data import ResidentLoader
from tangtoc.train import (
    CheckpointError,
    DistributedError,
    FitEvent,
    fit,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    torchrun_env,
)
from tangtoc.train.batches import shard_resident
from tangtoc.train.distributed import resolve_strategy
from tangtoc.train.launch import LaunchConfig, check_nproc, check_port_free, launch, torchrun_argv, usable_cpu_cores

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and hasattr(signal, "SIGKILL")),
    reason="needs torch.distributed with gloo and POSIX signals",
)

TESTS = Path(__file__).parent
LAUNCH_TIMEOUT_S = 120  # one torchrun launch of 2 tiny ranks takes seconds; a hang must fail, not block
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _one_thread_no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in TORCHRUN_VARS:  # the tests decide whether this process looks launched by torchrun
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if dist.is_initialized():  # a failed test must not leave its group to the next one
        dist.destroy_process_group()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and k != "TANGTOC_DEVICE"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _launch(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a session of its own (a hang kills the launcher *and* its ranks); a fork refused under load
    is launched again."""
    return run_in_session(cmd, env=_env(), timeout_s=LAUNCH_TIMEOUT_S, cwd=cwd)


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """Two ranks of ``distributed_worker.py args...`` on this machine (a free port each time: --standalone)."""
    return _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(TESTS / "distributed_worker.py"), *args])  # fmt: skip


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _one_process_mlp(steps: int, batch: int) -> dict[str, torch.Tensor]:
    model = worker.mlp_model()
    x, y = worker.mlp_data()
    fit(model, ResidentLoader(x, y, batch_size=batch, seed=1, device="cpu"), optimizer=worker.adamw,
        loss_fn=F.cross_entropy, steps=steps, progress=False, device="cpu")  # fmt: skip
    return model.state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- real launches of 2 ranks ----------------------------------------------------------------------------------------


def test_ddp_on_2_ranks_trains_as_one_process_with_the_global_batch(tmp_path: Path) -> None:
    # Per rank: 2 micro-batches of 4 (no_sync on the first) = a global batch of 16 per step.
    out = _ok(_torchrun("mlp", str(tmp_path), "ddp", "4", "2", "4"))
    assert "rank 0 checkpoint 4" in out and "rank 1 checkpoint 4" in out
    state = load_checkpoint(tmp_path / "step-00000004.pt")
    assert state["world_size"] == 2 and state["strategy"] == "ddp"
    assert [r["data"]["loader"]["rank"] for r in state["ranks"]] == [0, 1]
    assert _max_difference(state["model"], _one_process_mlp(4, 16)) < 1e-6
    # The tolerance tells batches apart: the same steps on batches of 8 land far away.
    assert _max_difference(state["model"], _one_process_mlp(4, 8)) > 1e-4


def test_fsdp2_on_2_ranks_trains_as_one_process_and_resumes_from_its_full_checkpoint(tmp_path: Path) -> None:
    _ok(_torchrun("mlp", str(tmp_path), "fsdp", "2", "1", "8"))
    first = load_checkpoint(tmp_path / "step-00000002.pt")
    assert first["strategy"] == "fsdp" and first["world_size"] == 2
    assert _max_difference(first["model"], _one_process_mlp(2, 16)) < 1e-6
    # A second run continues from it: weights, AdamW's moments (keyed by name) and each rank's data position.
    out = _ok(_torchrun("mlp", str(tmp_path), "fsdp", "4", "1", "8"))
    assert "rank 1 checkpoint 4" in out
    assert _max_difference(load_checkpoint(tmp_path / "step-00000004.pt")["model"], _one_process_mlp(4, 16)) < 1e-6


def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_resumed_run_is_identical(tmp_path: Path) -> None:
    # Rank 1 signals itself after the log point of step 2; the flag reaches rank 0 in the all-reduce of step 4.
    split = tmp_path / "split"
    out = _ok(_torchrun("gpt", str(split), "1000000", "2"))
    assert "rank 0 checkpoint 4" in out and "rank 1 checkpoint 4" in out
    assert "returned" not in out and " end " not in out  # both left from inside fit(), with exit status 0
    assert latest_checkpoint(split) == split / "step-00000004.pt"
    state = load_checkpoint(split / "step-00000004.pt")  # complete: it loads, with both ranks' positions
    assert [r["data"]["position"] for r in state["ranks"]] == [4, 4]
    assert [r["data"]["loader"]["rank"] for r in state["ranks"]] == [0, 1]
    assert "rank 1 checkpoint 8" in _ok(_torchrun("gpt", str(split), "8", "0"))
    _ok(_torchrun("gpt", str(tmp_path / "straight"), "8", "0"))
    resumed = load_checkpoint(split / "step-00000008.pt")["model"]
    straight = load_checkpoint(tmp_path / "straight" / "step-00000008.pt")["model"]
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []


def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path: Path) -> None:
    proc = _torchrun("fail")  # rank 0 would train for a million steps if it were not stopped
    assert proc.returncode != 0
    assert "[rank1]: RuntimeError: rank 1 failed on purpose at step 2" in proc.stderr


def test_cli_nproc_2_trains_and_only_rank_0_reports(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tangtoc", "train", "mlp", "--size", "tiny", "--steps", "4", "--log-every", "2",
           "--device", "cpu", "--json", "--checkpoint-dir", str(tmp_path), "--nproc", "2"]  # fmt: skip
    proc = _launch(cmd)
    summary = json.loads(_ok(proc))  # one JSON document: rank 1 printed nothing
    assert summary["processes"] == 2 and summary["strategy"] == "ddp" and summary["steps"] == 4
    assert load_checkpoint(tmp_path / "step-00000004.pt")["world_size"] == 2


def test_cli_nproc_without_checkpoint_dir_keeps_the_run_in_one_folder(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tangtoc", "train", "mlp", "--size", "tiny", "--steps", "4", "--log-every", "2",
           "--device", "cpu", "--json", "--nproc", "2"]  # fmt: skip
    proc = _launch(cmd, cwd=tmp_path)
    summary = json.loads(_ok(proc))
    (run,) = (tmp_path / "runs").iterdir()  # named once, by the launcher: not one folder per rank
    assert summary["checkpoint"] == f"runs/{run.name}/step-00000004.pt"
    assert load_checkpoint(run / "step-00000004.pt")["world_size"] == 2
    assert f"tangtoc train: saving this run in runs/{run.name}/" in proc.stderr


def test_cli_nproc_reports_the_rank_that_failed(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tangtoc", "train", "gpt", "--size", "tiny", "--data", "/nonexistent/corpus",
           "--device", "cpu", "--nproc", "2"]  # fmt: skip
    proc = _launch(cmd, cwd=tmp_path)
    assert proc.returncode == 2  # a rank refused its command line: a usage error, as it is on one process
    err = " ".join(proc.stderr.split())
    assert "tangtoc train: error (rank 1 of 2): no such file or folder: '/nonexistent/corpus'" in err
    assert re.search(r"tangtoc train: error: rank [01] exited with 2, so torchrun stopped the other ranks", err)
    assert list((tmp_path / "runs").iterdir()) == []  # the folder named for the run is gone with it


# -- the pieces, in one process ---------------------------------------------------------------------------------------


def _torchrun_vars(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int, port: int) -> None:
    values = {
        "RANK": rank,
        "WORLD_SIZE": world_size,
        "LOCAL_RANK": rank,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def _tiny_fit(**kwargs: object) -> object:
    x, y = worker.mlp_data()
    options = {"loss_fn": F.cross_entropy, "steps": 4, "log_every": 4, "progress": False, "device": "cpu", **kwargs}
    return fit(worker.mlp_model(), ResidentLoader(x, y, batch_size=4, device="cpu"), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "1"}, "found RANK=1 but not WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
        ({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
         "WORLD_SIZE must be an integer, got 'two'"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
         "RANK=2 must be below WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
          "MASTER_PORT": "1"}, "LOCAL_RANK=2 must be below LOCAL_WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
         r"MASTER_PORT must be a TCP port \(1..65535\), got 70000"),
    ],
)  # fmt: skip
def test_torchrun_env_refuses_a_partial_or_inconsistent_environment(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        torchrun_env(environ)


def test_torchrun_env_reads_what_torchrun_sets() -> None:
    assert torchrun_env({"PATH": "/bin"}) is None
    env = torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})  # fmt: skip
    assert env is not None and (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.master_addr, env.master_port) == ("node0", 29500)


def test_strategy_needs_a_distributed_context() -> None:
    assert resolve_strategy("auto", None) is None
    with pytest.raises(ValueError, match=r"strategy='fsdp' needs several processes, and this one was not started"):
        _tiny_fit(strategy="fsdp")
    with pytest.raises(ValueError, match=r"strategy must be one of auto, ddp, fsdp, got 'zero'"):
        _tiny_fit(strategy="zero")


def test_unreachable_master_gives_a_clear_message_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()  # nothing listens there: rank 1 retries until its timeout
    _torchrun_vars(monkeypatch, 1, 2, port)
    with pytest.raises(DistributedError, match=rf"could not reach the master at 127.0.0.1:{port} within 2 s"):
        _tiny_fit(dist_timeout_s=2)
    assert not dist.is_initialized()


def test_master_alone_says_how_many_processes_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_vars(monkeypatch, 0, 2, _free_port())
    with pytest.raises(DistributedError, match=r"only 1 of the 2 processes reached the master at 127.0.0.1:\d+"):
        _tiny_fit(dist_timeout_s=1)


def test_port_in_use_gives_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the launch names a run folder under ./runs before it fails
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DistributedError, match=rf"port {port} on this machine is already in use.*--master-port"):
            check_port_free(port)
        assert main(["train", "mlp", "--device", "cpu", "--nproc", "1", "--master-port", str(port)]) == 1
        assert f"tangtoc train: error: port {port} on this machine is already in use" in capsys.readouterr().err
        _torchrun_vars(monkeypatch, 0, 2, port)
        with pytest.raises(DistributedError, match=rf"port {port} on 127.0.0.1 is already in use, so the master"):
            _tiny_fit(dist_timeout_s=5)


def test_launcher_says_when_the_master_cannot_be_reached() -> None:
    port = _free_port()
    config = LaunchConfig(nproc=1, nnodes=2, node_rank=1, master_addr="127.0.0.1", master_port=port, join_timeout_s=2)
    with pytest.raises(DistributedError, match=rf"could not reach the master at 127.0.0.1:{port} within 2 s"):
        launch(config, ["tangtoc", "--version"])


def _world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_vars(monkeypatch, 0, 1, _free_port())


def test_ddp_accumulation_all_reduces_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _world_of_one(monkeypatch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = _tiny_fit(strategy="ddp", grad_accum=2)
    counts = collections.Counter(e.name for e in prof.events())
    # DDP's once per step (4; without no_sync, once per micro-batch: 8) + the one of the single log point.
    assert counts["gloo:all_reduce"] == 4 + 1
    assert (result.strategy, result.world_size) == ("ddp", 1)  # type: ignore[attr-defined]
    assert not dist.is_initialized()  # fit() created the group, and destroyed it


def test_the_group_is_destroyed_when_fit_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _world_of_one(monkeypatch)

    def fail(event: FitEvent) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        _tiny_fit(strategy="ddp", callbacks=[fail])
    assert not dist.is_initialized()


def test_a_group_the_caller_made_is_used_and_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    events: list[FitEvent] = []
    result = _tiny_fit(strategy="ddp", callbacks=[events.append])
    assert result.strategy == "ddp" and events[-1].rank == 0  # type: ignore[attr-defined]
    assert dist.is_initialized()


def test_fsdp_refuses_an_optimizer_built_on_the_unsharded_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    _world_of_one(monkeypatch)
    model = worker.mlp_model()
    x, y = worker.mlp_data()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"fully_shard replaces the model's parameters .* optimizer=lambda params:"):
        fit(model, ResidentLoader(x, y, batch_size=4, device="cpu"), optimizer=sgd, loss_fn=F.cross_entropy, steps=1,
            progress=False, device="cpu", strategy="fsdp")  # fmt: skip
    assert not dist.is_initialized()


def test_fsdp_refuses_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    _world_of_one(monkeypatch)
    with pytest.raises(ValueError, match=r"strategy='fsdp' with precision='fp16' is not supported"):
        _tiny_fit(strategy="fsdp", precision="fp16")


@pytest.mark.cuda
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_group_of_one_trains_checkpoints_and_resumes(
    strategy: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _world_of_one(monkeypatch)
    options = {"strategy": strategy, "device": "cuda", "precision": "bf16", "checkpoint_dir": tmp_path}
    first = _tiny_fit(**options)
    assert (first.strategy, first.world_size, first.device) == (strategy, 1, "cuda:0")  # type: ignore[attr-defined]
    again = _tiny_fit(**options, steps=6)
    assert (again.start_step, again.step) == (4, 6)  # type: ignore[attr-defined]
    assert load_checkpoint(tmp_path / "step-00000006.pt")["strategy"] == strategy
    assert not dist.is_initialized()


def test_resume_refuses_another_world_size_or_strategy_family(tmp_path: Path) -> None:
    _tiny_fit(checkpoint_dir=tmp_path)
    path = latest_checkpoint(tmp_path)
    assert path is not None
    state = load_checkpoint(path)
    assert (state["world_size"], state["strategy"]) == (1, "single")
    state.update(step=5, world_size=2)
    save_checkpoint(state, tmp_path, keep_last=3)
    with pytest.raises(CheckpointError, match=r"written by a run of 2 process\(es\); this one has 1"):
        _tiny_fit(checkpoint_dir=tmp_path, steps=8)
    state.update(step=6, world_size=1, strategy="fsdp")
    save_checkpoint(state, tmp_path, keep_last=3)
    with pytest.raises(CheckpointError, match=r"written with strategy 'fsdp', whose optimizer state this run"):
        _tiny_fit(checkpoint_dir=tmp_path, steps=8)


def test_resident_loader_is_sharded_once_and_a_foreign_shard_is_refused() -> None:
    x, y = worker.mlp_data()
    loader = ResidentLoader(x, y, batch_size=4, device="cpu")
    assert len(loader) == 24
    shard_resident(loader, 1, 2, "data")
    assert (loader.rank, loader.world_size, len(loader)) == (1, 2, 12)
    shard_resident(loader, 1, 2, "data")  # already this shard: left alone
    with pytest.raises(ValueError, match=r"data is a ResidentLoader for rank 1 of 2, but this process is rank 0 of 4"):
        shard_resident(loader, 0, 4, "data")
    shard_resident([(x, y)], 0, 2, "data")  # other iterables are the caller's to shard


# -- the launcher ---------------------------------------------------------------------------------------------------


def test_nproc_beyond_the_cpu_cores_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    cores = usable_cpu_cores()
    assert main(["train", "mlp", "--device", "cpu", "--nproc", str(cores + 1)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"--nproc {cores + 1} asks for {cores + 1} processes on the CPU, but this process may use {cores} core(s)"
        in err
    )
    assert f"Fix: --nproc {cores} or fewer." in err


def test_nproc_beyond_the_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tangtoc.train import launch

    monkeypatch.setattr(launch, "cuda_facts", lambda: argparse.Namespace(device_count=2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"--nproc 4 .* has 2 CUDA GPU\(s\) visible \(CUDA_VISIBLE_DEVICES=0,1\)"):
        check_nproc(4, torch.device("cuda", 0))
    check_nproc(2, torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"torch\.distributed has no backend for meta"):
        check_nproc(1, torch.device("meta"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc", "1", "--nnodes", "2"], "--nnodes 2 needs --master-addr"),
        (["--nproc", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "n0"],
         "--node-rank must be in 0..1 for --nnodes 2, got 2"),
        (["--master-port", "29555"], "--master-port only make sense with --nproc"),
        (["--nproc", "1", "--nnodes", "2", "--master-addr", "n0"],
         "on several machines, pass --checkpoint-dir (one folder that every machine shares) or --no-save."),
    ],
)  # fmt: skip
def test_launch_flags_that_cannot_work_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "mlp", "--device", "cpu", *argv]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_under_torchrun_the_run_folder_is_named_by_the_user(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _torchrun_vars(monkeypatch, 1, 2, 29500)  # each process would name its own folder after its own start time
    assert main(["train", "mlp", "--device", "cpu"]) == 2
    assert (
        "tangtoc train: error (rank 1 of 2): under torchrun, pass --checkpoint-dir (one folder that every process "
        "shares) or --no-save." in " ".join(capsys.readouterr().err.split())
    )


def test_nproc_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _torchrun_vars(monkeypatch, 1, 2, 29500)
    assert main(["train", "mlp", "--nproc", "2"]) == 2
    assert "this process already runs under it (rank 1 of 2)" in " ".join(capsys.readouterr().err.split())


def test_ranks_get_the_flags_given_minus_the_launch_flags() -> None:
    parser = build_parser()
    argv = ["train", "gpt", "--size", "tiny", "--steps", "7", "--json", "--strategy", "fsdp", "--nproc", "2",
            "--nnodes", "2", "--node-rank", "1", "--master-addr", "n0", "--master-port", "29555"]  # fmt: skip
    args = parser.parse_args(argv)
    from tangtoc.cli.train import worker_argv

    ranks = worker_argv(args, args.parser)
    assert ranks == ["train", "gpt", "--size", "tiny", "--steps", "7", "--json", "--strategy", "fsdp"]
    again = vars(parser.parse_args(ranks))
    launch_flags = {"nproc", "nnodes", "node_rank", "master_addr", "master_port", "parser", "run"}
    assert {k: v for k, v in again.items() if k not in launch_flags} == {
        k: v for k, v in vars(args).items() if k not in launch_flags
    }


def test_torchrun_arguments() -> None:
    one = torchrun_argv(LaunchConfig(nproc=2), ["tangtoc", "train", "gpt"])
    assert one == ["--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0", "--standalone", "--module",
                   "tangtoc", "train", "gpt"]  # fmt: skip
    many = torchrun_argv(LaunchConfig(nproc=8, nnodes=2, node_rank=1, master_addr="n0", join_timeout_s=60), ["m"])
    assert many == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr", "n0",
                    "--master-port", "29500", "--rdzv-conf", "timeout=60", "--module", "m"]  # fmt: skip

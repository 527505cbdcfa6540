"""Training on many processes: torchrun's environment, the process group's life, and the few collectives fit()
needs. PyTorch's own engine does the work (``torch.distributed``: NCCL on CUDA, gloo on the CPU); nothing here
launches processes or implements a collective.

* :func:`torchrun_env` reads what torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``) and refuses a partial or inconsistent set with the variable named.
* :func:`session` joins the process group with a bounded timeout (an unreachable master or a port in use becomes
  a :class:`DistributedError` that says which, within that time), places the rank on ``cuda:LOCAL_RANK``, and
  destroys the group on every way out, errors included. A group the caller initialised is used and left alone.
* :class:`Distributed` holds the rank and offers what the loop needs at its bounded-frequency points (log
  points, evaluation, checkpoints): a sum over ranks of one tensor, gathering small objects on rank 0, a barrier.
  How the model is wrapped (DDP or FSDP2) is in :mod:`tangtoc.train.strategies`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from tangtoc.device import DeviceLike, cuda_facts, resolve
from tangtoc.errors import DistributedError

STRATEGIES = ("auto", "ddp", "fsdp")
#: How long a rank waits to join the others, and later for any one collective, before it fails with a message
#: instead of hanging. NCCL's own default; it must cover the longest time one rank can spend alone between two
#: collectives (rank 0 writing a checkpoint, the first step's compilation).
DEFAULT_TIMEOUT_S = 600.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Set by ``tangtoc train --nproc`` for its ranks: the launcher's PID, which they must not outlive.
LAUNCHER_PID_VAR = "TANGTOC_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class TorchrunEnv:
    """This process's place in a job, as torchrun describes it in the environment."""

    rank: int  # 0..world_size-1 over all machines
    world_size: int
    local_rank: int  # 0..local_world_size-1 on this machine: the GPU index
    local_world_size: int
    master_addr: str
    master_port: int


def _int_var(environ: Mapping[str, str], name: str, *, default: int | None = None, low: int = 0) -> int:
    raw = environ.get(name)
    if raw is None:
        assert default is not None, name
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}. torchrun sets it; do not set it by hand.") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    return value


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """What torchrun (or ``tangtoc train --nproc``) set for this process; ``None`` when none of ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` is set (a plain single-process run).

    Raises ``ValueError`` naming the variable when the set is partial, not integers, or inconsistent.
    """
    env = os.environ if environ is None else environ
    present = [name for name in _TORCHRUN_VARS if name in env]
    if not present:
        return None
    missing = [name for name in (*_TORCHRUN_VARS, "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        found = ", ".join(f"{name}={env[name]}" for name in present)
        raise ValueError(
            f"a distributed run needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which torchrun sets "
            f"together; found {found} but not {', '.join(missing)}. Fix: launch with `torchrun --nproc-per-node N "
            "...` or `tangtoc train ... --nproc N`, or unset the stray variables for a single-process run."
        )
    world_size = _int_var(env, "WORLD_SIZE", low=1)
    rank = _int_var(env, "RANK")
    if rank >= world_size:
        raise ValueError(f"RANK={rank} must be below WORLD_SIZE={world_size}.")
    local_world_size = _int_var(env, "LOCAL_WORLD_SIZE", default=world_size, low=1)
    local_rank = _int_var(env, "LOCAL_RANK")
    if local_rank >= local_world_size:
        raise ValueError(f"LOCAL_RANK={local_rank} must be below LOCAL_WORLD_SIZE={local_world_size}.")
    port = _int_var(env, "MASTER_PORT", low=1)
    if port > 65535:
        raise ValueError(f"MASTER_PORT must be a TCP port (1..65535), got {port}.")
    return TorchrunEnv(rank, world_size, local_rank, local_world_size, env["MASTER_ADDR"], port)


def device_for_rank(device: DeviceLike | None, env: TorchrunEnv | None = None) -> torch.device:
    """The device this process trains on. Under torchrun, CUDA means ``cuda:LOCAL_RANK`` (one GPU per process,
    whatever index was asked for); the CPU stays the CPU. Other accelerators are refused: torch.distributed has
    a backend for CUDA (NCCL) and CPU tensors (gloo) only."""
    env = torchrun_env() if env is None else env
    chosen = resolve(device)
    if env is None:
        return chosen
    if chosen.type == "cuda":
        count = cuda_facts().device_count
        if env.local_rank >= count:
            raise DistributedError(
                f"this is local rank {env.local_rank} (LOCAL_RANK) but the machine shows {count} CUDA GPU(s) to it, "
                "and each rank needs its own GPU. Fix: launch at most that many processes per machine (--nproc), "
                "and check CUDA_VISIBLE_DEVICES."
            )
        return torch.device("cuda", env.local_rank)
    if chosen.type != "cpu":
        raise DistributedError(
            f"distributed training runs on CUDA GPUs (NCCL) or on the CPU (gloo); torch.distributed has no backend "
            f"for {chosen.type}. Fix: device='cpu' (--device cpu), or a single process on {chosen.type}."
        )
    return chosen


def die_with_launcher(environ: Mapping[str, str] | None = None) -> bool:
    """Have the kernel SIGKILL this rank when the ``tangtoc train --nproc`` launcher that started it dies, however
    it dies: SIGKILL included, which gives torchrun's agent no chance to stop the ranks (torchrun starts them in
    sessions of their own, so they do not share the launcher's process group either). Without this they train
    on, orphaned, and keep writing checkpoints. Returns whether the request was made.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and in processes that ``TANGTOC_LAUNCHER_PID`` does not
    mark as the launcher's ranks (a user's own torchrun), it does nothing and returns False: on macOS and Windows
    the ranks of a launcher killed outright run on until they finish or are killed themselves.

    Raises :class:`DistributedError` when the launcher is already gone (this process's parent is another), since
    the kernel would then never send the signal.
    """
    env = os.environ if environ is None else environ
    launcher = env.get(LAUNCHER_PID_VAR)
    if launcher is None or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False  # a kernel that refuses it (seccomp): the rank works as before
    if str(os.getppid()) != launcher:  # it died before the request: no signal will come
        raise DistributedError(
            f"the launcher of this rank (PID {launcher}, {LAUNCHER_PID_VAR}) is gone, so this rank stops instead of "
            "training alone. Start the job again (with --resume to continue from its newest checkpoint)."
        )
    return True


def connect_error(error: BaseException, addr: str, port: int, timeout_s: float) -> DistributedError:
    """Turn a failure to form the process group (or torchrun's rendezvous) into a message that says what went
    wrong and what to change. ``error`` is what torch raised; its text decides which case it is."""
    text = " ".join(str(error).split())
    where = f"{addr}:{port}"
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        return DistributedError(
            f"port {port} on {addr} is already in use, so the master (rank 0) cannot listen on it ({text}). Fix: "
            f"another port (--master-port, or MASTER_PORT), or stop what holds it (`ss -ltnp | grep :{port}` "
            "shows it; often an earlier run that is still alive)."
        )
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined:
        return DistributedError(
            f"only {joined.group(1)} of the {joined.group(2)} processes reached the master at {where} within "
            f"{timeout_s:g} s ({text}). Fix: start every machine with the same --nnodes, --master-addr and "
            f"--master-port, and check that {where} is reachable from each of them (firewall, and an address of "
            "machine 0 that the others can route to)."
        )
    if "timed out" in text.lower() or "connect" in text.lower() or "refused" in text.lower():
        return DistributedError(
            f"could not reach the master at {where} within {timeout_s:g} s ({text}). Fix: --master-addr "
            "(MASTER_ADDR) must be machine 0's address as the other machines see it (127.0.0.1 only works on one "
            "machine), machine 0 must be started, and the port must be open in its firewall."
        )
    return DistributedError(f"could not form the process group with the master at {where}: {text}")


@dataclass(slots=True)
class Distributed:
    """This process's rank in a running process group, and the collectives fit() uses outside DDP/FSDP."""

    rank: int
    world_size: int
    device: torch.device  # cuda:LOCAL_RANK or the CPU
    strategy: str  # "ddp" or "fsdp"
    closers: list[Callable[[], None]] = field(default_factory=list)  # run by session() before the group goes

    def close(self) -> None:
        """Run what was registered in :attr:`closers`, newest first; :func:`session` calls it on every way out."""
        while self.closers:
            self.closers.pop()()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, draws the progress bar and writes metrics and checkpoints."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (an all-reduce; the input is not modified)."""
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list indexed by rank, on rank 0; ``None`` on the others. Pickles: for small
        host-side state only (random states, loader positions)."""
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` as a list indexed by rank, on every rank (small host-side objects only)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"fit: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")


def resolve_strategy(strategy: str, env: TorchrunEnv | None) -> str | None:
    """``"ddp"`` or ``"fsdp"`` for a distributed run, ``None`` for a single process.

    ``"auto"`` is DDP under torchrun with more than one process (or a process group of more than one the caller
    initialised), else a single process. An explicit ``"ddp"``/``"fsdp"`` needs one of those, even of one
    process (useful to measure what the wrapper costs).
    """
    check_strategy(strategy)
    group = dist.is_available() and dist.is_initialized()
    if env is None and not group:
        if strategy == "auto":
            return None
        raise ValueError(
            f"fit: strategy={strategy!r} needs several processes, and this one was not started by torchrun (no RANK, "
            "WORLD_SIZE, LOCAL_RANK in the environment) nor given a process group. Fix: `torchrun --nproc-per-node N "
            "script.py`, `tangtoc train ... --nproc N`, or strategy='auto'."
        )
    world = dist.get_world_size() if group else env.world_size  # type: ignore[union-attr]
    if strategy == "auto":
        return "ddp" if world > 1 else None
    return strategy


@contextlib.contextmanager
def session(strategy: str, device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Distributed | None]:
    """The distributed context of one fit() call: ``None`` for a single process, else a :class:`Distributed`
    whose process group exists for the duration of the ``with`` block, on ``device`` (resolved by the caller)
    or, for CUDA under torchrun, this rank's GPU.

    Under torchrun the group is created here (NCCL on CUDA, gloo on the CPU; joining and every collective bounded
    by ``timeout_s``) and destroyed on exit, whether the block returns, raises or exits. A group that already
    exists (the caller's own ``init_process_group``) is used as it is and left for the caller to destroy.
    """
    if not dist.is_available():
        if strategy != "auto":
            raise DistributedError(f"fit: strategy={strategy!r}, but this PyTorch build has no torch.distributed.")
        yield None
        return
    env = torchrun_env()
    chosen = resolve_strategy(strategy, env)
    if chosen is None:
        yield None
        return
    placed = device_for_rank(device, env)
    owned = not dist.is_initialized()
    if owned:
        assert env is not None  # resolve_strategy returns a strategy only with an environment or a group
        _init_group(env, placed, timeout_s)
    elif placed.type == "cuda" and "nccl" not in (backend := dist.get_backend()):
        raise DistributedError(f"fit: the process group uses {backend}, which cannot reduce CUDA tensors; use nccl.")
    parallel = Distributed(dist.get_rank(), dist.get_world_size(), placed, chosen)
    try:
        yield parallel
    finally:
        try:
            parallel.close()
        finally:
            if owned and dist.is_initialized():
                dist.destroy_process_group()


def _init_group(env: TorchrunEnv, device: torch.device, timeout_s: float) -> None:
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        # One GPU per process, set before NCCL creates its communicator (else every rank would start on cuda:0);
        # device_id binds the communicator to it eagerly.
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout, **kwargs)
    except RuntimeError as e:  # torch.distributed.DistError and its subclasses are RuntimeErrors
        raise connect_error(e, env.master_addr, env.master_port, timeout_s) from e

"""Start a command on several processes through torchrun's own entry point, ``torch.distributed.run``, after
refusing up front what cannot work: more processes than devices, an inconsistent set of machines, a master port
already taken. What ``tangtoc train --nproc N`` uses; ``torchrun ... -m tangtoc train ...`` does the same."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from tangtoc.device import cpu_cores as usable_cpu_cores  # the one count of the cores this process may use
from tangtoc.device import cuda_facts
from tangtoc.errors import DistributedError, UsageError
from tangtoc.train.distributed import LAUNCHER_PID_VAR, connect_error
from tangtoc.train.signals import PREEMPTION_SIGNALS

#: torchrun's port for the static rendezvous of several machines when none is given.
DEFAULT_MASTER_PORT = 29500
#: How long the machines of a job wait for each other to start (torchrun's default is 600 s).
DEFAULT_JOIN_TIMEOUT_S = 300


@dataclass(kw_only=True, slots=True)
class LaunchConfig:
    """Where the processes of a job run. One machine: ``nproc`` alone (torchrun then picks a free port itself).
    Several: the same ``nnodes``, ``master_addr`` and ``master_port`` on every machine, each with its
    ``node_rank`` (0 for the machine at ``master_addr``)."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("nproc", "nnodes", "join_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}.")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"--node-rank must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, got {self.node_rank}."
            )
        if self.nnodes > 1 and not self.master_addr:
            raise ValueError(
                f"--nnodes {self.nnodes} needs --master-addr: the address of machine 0 (--node-rank 0) as the other "
                "machines reach it, the same on every machine."
            )
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise ValueError(f"--master-port must be a TCP port (1..65535), got {self.master_port}.")


def check_nproc(nproc: int, device: torch.device) -> None:
    """Refuse more processes than this machine has devices for, before anything starts.

    On CUDA each process trains on its own GPU, so ``nproc`` may not exceed the GPUs visible. On the CPU each
    needs a core of its own: ranks that outnumber the cores only take turns on them, and every all-reduce waits
    for the slowest, so ``nproc`` may not exceed the cores this process may use. Other devices have no
    ``torch.distributed`` backend.
    """
    if device.type == "cuda":
        gpus = cuda_facts().device_count
        if nproc > gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
            raise ValueError(
                f"--nproc {nproc} asks for {nproc} processes on this machine, but it has {gpus} CUDA GPU(s) visible"
                f"{shown}, and each process trains on its own GPU. Fix: --nproc {gpus} or fewer; for more GPUs, add "
                "machines with --nnodes."
            )
    elif device.type == "cpu":
        cores = usable_cpu_cores()
        if nproc > cores:
            raise ValueError(
                f"--nproc {nproc} asks for {nproc} processes on the CPU, but this process may use {cores} core(s). On "
                "the CPU each rank needs a core of its own: more ranks than cores only take turns on them, and every "
                f"all-reduce waits for the slowest. Fix: --nproc {cores} or fewer."
            )
    else:
        raise ValueError(
            f"--nproc needs CUDA GPUs or the CPU: torch.distributed has no backend for {device.type}. "
            "Fix: --device cpu."
        )


def check_port_free(port: int) -> None:
    """Raise :class:`DistributedError` when ``port`` cannot be listened on here (the master's rendezvous store
    listens on every interface), instead of letting every process start first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the store does: a port left in TIME_WAIT by an earlier run is free, one that is listened on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise connect_error(e, "this machine", port, 0) from e


def torchrun_argv(config: LaunchConfig, command: Sequence[str]) -> list[str]:
    """The arguments of ``torch.distributed.run`` that run ``python -m <command...>`` as ``config`` says."""
    argv = ["--nproc-per-node", str(config.nproc), "--nnodes", str(config.nnodes), "--node-rank", str(config.node_rank)]
    if config.nnodes == 1 and config.master_port is None:
        argv.append("--standalone")  # a free port of its own: two jobs on one machine do not collide
    else:
        argv += [
            "--master-addr",
            config.master_addr or "127.0.0.1",
            "--master-port",
            str(config.master_port or DEFAULT_MASTER_PORT),
            "--rdzv-conf",
            f"timeout={config.join_timeout_s}",  # the static rendezvous waits this long for the other machines
        ]
    return [*argv, "--module", *command]


#: The signals torchrun's agent turns into an exception and passes on to the ranks; its default lacks SIGUSR1 (SLURM's
#: --signal), which would otherwise end the launcher at once (and with it, its ranks, unwarned). Given through the
#: variable that sets the default of torchrun's --signals-to-handle; a torch whose torchrun lacks that option
#: ignores it, and forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT only.
_FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", *(["SIGUSR1"] if hasattr(signal, "SIGUSR1") else []))


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` (which torchrun copies into each rank's) for the block, then restored."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(config: LaunchConfig, command: Sequence[str]) -> signal.Signals | None:
    """Run ``python -m <command...>`` on ``config.nproc`` processes of this machine, joined with those of the
    other machines, through ``torch.distributed.run`` in this process (it becomes torchrun's agent: it starts
    the ranks, watches them, and stops them all when one fails). Returns ``None`` when every rank exited with 0.

    A preemption signal (SIGTERM, or SIGUSR1 where the platform and torchrun's ``--signals-to-handle`` have it) to
    the launcher is passed on to every rank, which finish their step, checkpoint at their next log point (when they
    have a checkpoint dir) and exit; torchrun gives them 30 s before it kills them. Then the signal is returned: the
    job was preempted, not failed.
    The ranks get the launcher's PID (``TANGTOC_LAUNCHER_PID``) so that they die with it when it is killed
    outright (see :func:`~tangtoc.train.distributed.die_with_launcher`).

    Raises :class:`~tangtoc.errors.UsageError` when a rank exited with 2 (it refused its command line; its message
    is on stderr), :class:`DistributedError` when a rank fails otherwise (naming it and its exit code; its own
    error is already on stderr, prefixed with its rank), when the machines cannot meet within ``join_timeout_s``,
    or when another signal (SIGINT, SIGHUP, SIGQUIT) stops the launcher, after torchrun has stopped the ranks.
    """
    if config.node_rank == 0 and config.master_port is not None:
        check_port_free(config.master_port)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    env = {LAUNCHER_PID_VAR: str(os.getpid())}
    if "PET_SIGNALS_TO_HANDLE" not in os.environ:  # the user's own choice stands
        env["PET_SIGNALS_TO_HANDLE"] = ",".join(_FORWARDED)
    try:
        with _environment(env):
            torchrun(torchrun_argv(config, command))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
        message = (
            f"rank {rank} {how}, so torchrun stopped the other ranks; that rank's own error is printed above, "
            f"prefixed with [rank{rank}] or after its 'error' line."
        )
        raise (UsageError if failure.exitcode == 2 else DistributedError)(message) from e
    except SignalException as e:
        if e.sigval in PREEMPTION_SIGNALS:
            return e.sigval
        raise DistributedError(
            f"the launcher received {e.sigval.name}; torchrun passed it on to every rank and then stopped them. "
            "Rerun with --resume to continue from the newest checkpoint."
        ) from e
    except RuntimeError as e:  # the rendezvous: torch.distributed.DistError and its subclasses
        raise connect_error(
            e, config.master_addr or "127.0.0.1", config.master_port or DEFAULT_MASTER_PORT, config.join_timeout_s
        ) from e
    return None

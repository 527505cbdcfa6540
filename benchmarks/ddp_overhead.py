"""What DDP's gradient all-reduce costs per step: 2 ranks (gloo) vs 1 process on the CPU; DDP of world size 1 vs
plain ``fit()`` on one GPU; and, from a single-GPU step time, a projection of 8-GPU scaling efficiency.

CPU (default). Weak scaling: each rank trains on the same per-rank batch as the single process, so a 2-rank step
is the single step plus DDP's all-reduce of the gradients (in buckets, overlapped with the backward pass where it
can be). Each round launches the single process (``fit()``, no process group) and the 2 ranks (``python -m
torch.distributed.run --standalone --nproc-per-node 2``, DDP through ``fit(strategy="auto")``), in alternating
order; each process times two complete ``fit()`` runs, T(short) and T(long), and reports (T(long) - T(short)) /
(long - short): set-up cancels. The ratio 2-rank / 1-process step is taken within each round. One torch thread
per process: the 2 ranks take the machine's 2 cores, the single process one of them. Workloads: GPT ``mini``
(0.84M parameters, a realistic step) and the ``tiny`` MLP (microsecond steps: the collective's fixed latency).

GPU (``--gpu``, or ``--single --device D``). One process on one device, GPT-2 124M (``--size``), bf16 on CUDA:
``fit()`` vs ``fit(strategy="ddp")`` in a process group of one (NCCL; gloo on the CPU), rounds of T(short)/T(long)
in rotating order, so the ratio is the wrapper's own cost (bucketing, hooks, a trivial all-reduce). The model is
built once, on the device; every run trains a copy of it. The JSON is rewritten after every round and SIGTERM ends
the run with the rounds done written. ``--gpu`` exits 0 with a note when there is no CUDA device. It then prints
the projection below from the measured plain step.

Projection (``--project --step-ms T --params N``, also printed by ``--gpu``). Ring all-reduce sends and receives
2(n-1)/n times the gradient bytes per GPU (fp32 gradients: 4 bytes per parameter), so with link bandwidth B per
direction t_comm = 2(n-1)/n x 4N / B. Scaling efficiency of n GPUs at the same per-GPU batch lies between
t / (t + t_comm) (no overlap of the all-reduce with the backward pass) and t / max(t, t_comm) (full overlap).
It is a projection, not a measurement: it ignores NCCL's protocol overhead, the bucket that cannot overlap (the
last one), stragglers and the data pipeline.

Run:  python benchmarks/ddp_overhead.py [--rounds N] [--json PATH]
      python benchmarks/ddp_overhead.py --gpu [--rounds N] [--json PATH]
      python benchmarks/ddp_overhead.py --single --device cpu --size tiny   (the GPU mode, rehearsed on the CPU)
      python benchmarks/ddp_overhead.py --project --step-ms 35.6 --params 124439808
It is a measurement: it exits 0 and prints what it measured (143 when SIGTERM cut it short).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

from _train_bench import metadata, per_step_rounds, wall
from tangtoc.models import GPT, MLP, gpt_config, mlp_config
from tangtoc.train import fit
from tangtoc.train.signals import Terminated, sigterm_as_interrupt

HERE = Path(__file__).resolve()
RANKS = 2
#: name -> (short steps, long steps, log_every). Log points are an all-reduce of their own under DDP; every 50
#: steps keeps them a small share, as in a real run.
WORKLOADS = {"gpt-mini": (2, 12, 50), "mlp-tiny": (20, 420, 50)}
GPT_BATCH, MLP_BATCH, N_BATCHES = 16, 64, 32

#: Link bandwidth per direction, bytes/s. NVLink 4 on the H200 SXM: 900 GB/s per GPU, both directions together
#: (NVIDIA H200 Tensor Core GPU datasheet, nvidia.com/en-us/data-center/h200/), so 450 GB/s each way. PCIe 5.0
#: x16: 32 GT/s per lane x 16 lanes x 128/130 encoding / 8 bits = 63.0 GB/s each way (PCI-SIG, PCI Express Base
#: Specification 5.0; the same datasheet lists "PCIe Gen5: 128 GB/s" for both directions).
LINKS = {"NVLink 4 (H200 SXM, 450 GB/s each way)": 450e9, "PCIe 5.0 x16 (63 GB/s each way)": 63.0e9}
GRAD_BYTES_PER_PARAM = 4  # DDP all-reduces gradients in the parameters' dtype: fp32 under autocast


# -- the models and the timed runs -----------------------------------------------------------------------------------


def _model(workload: str, device: torch.device) -> torch.nn.Module:
    """``mlp-tiny`` or ``gpt-<size>``, built on ``device`` directly (no host copy of 124M parameters)."""
    torch.manual_seed(0)
    with torch.device(device):
        if workload == "mlp-tiny":
            return MLP(mlp_config("tiny"))
        return GPT(gpt_config(workload.removeprefix("gpt-")))


def _batches(workload: str, device: torch.device, seed: int) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    if workload == "mlp-tiny":
        cfg = mlp_config("tiny")
        x = torch.randn(N_BATCHES, MLP_BATCH, cfg.in_features, generator=g)
        y = torch.randint(0, cfg.out_features, (N_BATCHES, MLP_BATCH), generator=g)
        return list(zip(x.unbind(), y.unbind(), strict=True))
    cfg = gpt_config(workload.removeprefix("gpt-"))
    batch = GPT_BATCH if workload == "gpt-mini" else 8
    out = []
    for _ in range(N_BATCHES if workload == "gpt-mini" else 4):
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=g)
        out.append((tokens[:, :-1].to(device), tokens[:, 1:].to(device)))
    return out


def _runner(workload: str, device: torch.device, strategy: str, precision: str, log_every: int):
    batches = _batches(workload, device, seed=int(os.environ.get("RANK", "0")))
    loss_fn = F.cross_entropy if workload == "mlp-tiny" else None
    prototype = _model(workload, device)  # built once; every run trains a fresh copy of the same weights

    def run(steps: int) -> None:
        model = copy.deepcopy(prototype)
        fit(model, batches, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, fused=device.type == "cuda"),
            loss_fn=loss_fn, steps=steps, log_every=log_every, device=device, precision=precision, progress=False,
            strategy=strategy)  # fmt: skip

    return run


def _worker(workload: str, out: Path) -> None:
    """One process (or one rank under torchrun): seconds per step of fit() as (T(long) - T(short)) / (long - short)."""
    torch.set_num_threads(1)
    short, long, log_every = WORKLOADS[workload]
    launched = "RANK" in os.environ
    if launched:
        dist.init_process_group("gloo")  # once, so that neither run times joining; fit() uses this group
    run = _runner(workload, torch.device("cpu"), "auto", "fp32", log_every)
    run(short)  # warm-up: first-call paths, the allocator
    seconds = (wall(lambda: run(long)) - wall(lambda: run(short))) / (long - short)
    if launched:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps({"step_s": seconds}))


def _launch(workload: str, ranks: int, out: Path) -> float:
    script = [str(HERE), "--worker", workload, "--out", str(out)]
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    cmd = [*head, *script] if ranks > 1 else [sys.executable, *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, timeout=600, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ddp_overhead: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(json.loads(out.read_text())["step_s"])


def grad_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad) * GRAD_BYTES_PER_PARAM


# -- modes ------------------------------------------------------------------------------------------------------------


def cpu_mode(rounds: int, out_dir: Path, json_path: Path | None) -> None:
    results: dict[str, dict[str, list[float]]] = {w: {"1 process": [], f"{RANKS} ranks": []} for w in WORKLOADS}
    for r in range(rounds):
        for workload in WORKLOADS:
            order = [1, RANKS] if r % 2 == 0 else [RANKS, 1]
            for ranks in order:
                key = "1 process" if ranks == 1 else f"{RANKS} ranks"
                results[workload][key].append(_launch(workload, ranks, out_dir / f"{workload}-{ranks}.json"))
    meta = metadata(rounds=rounds, ranks=RANKS, workloads={k: list(v) for k, v in WORKLOADS.items()})
    console = Console(highlight=False, width=140)
    console.print(
        f"{meta['cpu_model']}, {meta['cpu_cores']} cores, torch {meta['torch']}, Python {meta['python']}, load "
        f"average {meta['load_average_1_5_15']}; 1 torch thread per process",
        markup=False,
    )
    table = Table(title=f"DDP on {RANKS} CPU ranks (gloo) vs 1 process, same per-rank batch", title_justify="left")
    for col in ("workload", "1 process / step", f"{RANKS} ranks / step", "ratio (median of rounds)", "min–max",
                "extra / step", "gradients all-reduced", "implied all-reduce rate"):  # fmt: skip
        table.add_column(col, justify="left" if col == "workload" else "right")
    summary: dict[str, Any] = {}
    for workload, times in results.items():
        one, many = times["1 process"], times[f"{RANKS} ranks"]
        ratios = [m / o for o, m in zip(one, many, strict=True)]
        extra = statistics.median(many) - statistics.median(one)
        nbytes = grad_bytes(_model(workload, torch.device("cpu")))
        traffic = 2 * (RANKS - 1) / RANKS * nbytes
        rate = f"{traffic / extra / 1e6:.1f} MB/s" if extra > 0 else "n/a (no extra time measured)"
        t1, t2 = statistics.median(one), statistics.median(many)
        unit, scale = ("µs", 1e6) if t1 < 1e-3 else ("ms", 1e3)
        table.add_row(workload, f"{t1 * scale:.1f} {unit}", f"{t2 * scale:.1f} {unit}",
                      f"{statistics.median(ratios):.3f}×", f"{min(ratios):.3f}–{max(ratios):.3f}×",
                      f"{extra * scale:+.1f} {unit}", f"{nbytes / 1e6:.3f} MB", rate)  # fmt: skip
        summary[workload] = {"step_s": times, "ratio_median": statistics.median(ratios), "ratios": ratios,
                             "extra_s": extra, "grad_bytes": nbytes}  # fmt: skip
    console.print(table)
    console.print(
        f"ratio = {RANKS}-rank step time / 1-process step time (1.000× = free); the {RANKS}-rank job does {RANKS}× the "
        f"samples per step, so its throughput is {RANKS}/ratio × the single process's."
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"metadata": meta, "results": summary}, indent=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_device_mode(device: torch.device, size: str, rounds: int, json_path: Path | None) -> int:
    """``fit()`` vs ``fit(strategy="ddp")`` in a process group of one on ``device``; the JSON is rewritten after
    every round, and SIGTERM ends the run with the rounds done written (``"complete": false``)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1, **({"device_id": device} if device.type == "cuda" else {}))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({metadata()['cpu_model']})"
    precision = "bf16" if device.type == "cuda" else "fp32"
    workload = f"gpt-{size}"
    names = ("fit()", f"fit(strategy='ddp'), 1 {device.type}")
    times: dict[str, list[float]] = {n: [] for n in names}
    payload: dict[str, Any] = {"metadata": metadata(rounds=rounds, device=name, workload=workload, backend=backend),
                               "complete": False, "step_s": times, "ratios": []}  # fmt: skip

    def save() -> None:
        plain, ddp = times[names[0]], times[names[1]]
        payload["ratios"] = [d / p for p, d in zip(plain, ddp, strict=False)]  # DDP time / plain time, per round
        payload["throughput_ddp_over_plain"] = statistics.median(p / d for p, d in zip(plain, ddp, strict=False)) \
            if ddp else None  # fmt: skip
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(payload, indent=2))

    status = 0
    try:
        with sigterm_as_interrupt():
            # strategy="auto" in a group of one is plain fit(); "ddp" wraps it anyway: the wrapper's cost alone.
            contenders = {names[0]: _runner(workload, device, "auto", precision, 10),
                          names[1]: _runner(workload, device, "ddp", precision, 10)}  # fmt: skip
            for r in range(rounds):  # one round at a time, so that each is saved as soon as it is measured
                for n, values in per_step_rounds(contenders, 3, 13, 1, offset=r, warm_up=r == 0).items():
                    times[n] += values
                save()
        payload["complete"] = True
    except Terminated:
        print("ddp_overhead: terminated (SIGTERM): writing the rounds measured", file=sys.stderr)
        status = 143
    finally:
        dist.destroy_process_group()
        save()
    if times[names[1]]:
        plain = statistics.median(times[names[0]])
        ratios = payload["ratios"]
        print(f"{name}, torch {torch.__version__}: GPT {size}, batch 8 x block tokens, {precision}, AdamW")
        print(f"  fit(): {plain * 1e3:.1f} ms/step; DDP of world size 1 / plain time: {statistics.median(ratios):.3f}x "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f}x); throughput DDP / plain "
              f"{payload['throughput_ddp_over_plain']:.3f}x")  # fmt: skip
        params = sum(p.numel() for p in _model(workload, torch.device("meta")).parameters())
        projection = project(plain, params, 8)
        print_projection(plain, params, 8, projection)
        payload["projection_8_gpus"] = projection
        save()
    return status


def project(step_s: float, params: int, n: int) -> dict[str, dict[str, float]]:
    """Projected n-GPU scaling efficiency at the same per-GPU batch, for each link in :data:`LINKS`."""
    traffic = 2 * (n - 1) / n * params * GRAD_BYTES_PER_PARAM  # bytes each GPU sends (and receives) per step
    out = {}
    for link, bandwidth in LINKS.items():
        comm = traffic / bandwidth
        out[link] = {"comm_s": comm, "no_overlap": step_s / (step_s + comm), "full_overlap": step_s / max(step_s, comm)}
    return out


def print_projection(step_s: float, params: int, n: int, projection: dict[str, dict[str, float]]) -> None:
    traffic = 2 * (n - 1) / n * params * GRAD_BYTES_PER_PARAM
    print(f"PROJECTION (not a measurement), {n} GPUs, ring all-reduce of {params:,} fp32 gradients "
          f"({traffic / 1e6:.0f} MB sent per GPU per step), single-GPU step {step_s * 1e3:.2f} ms:")  # fmt: skip
    for link, p in projection.items():
        print(f"  {link}: all-reduce {p['comm_s'] * 1e3:.2f} ms/step -> efficiency {p['no_overlap']:.1%} "
              f"(no overlap) to {p['full_overlap']:.1%} (full overlap)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="DDP world size 1 vs plain fit() on cuda:0 (--single there)")
    p.add_argument("--single", action="store_true", help="DDP world size 1 vs plain fit() on --device")
    p.add_argument("--device", default="cuda:0", help="device of --gpu/--single (default cuda:0)")
    p.add_argument("--size", default="gpt2", help="GPT size of --gpu/--single (default gpt2: 124M)")
    p.add_argument("--project", action="store_true", help="only print the projection for --step-ms and --params")
    p.add_argument("--step-ms", type=float, help="single-GPU step time for --project")
    p.add_argument("--params", type=int, help="trainable parameters for --project")
    p.add_argument("--gpus", type=int, default=8, help="GPUs for --project (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    p.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)  # what each launched process runs
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.out)
    elif args.project:
        if not (args.step_ms and args.step_ms > 0 and args.params and args.params > 0 and args.gpus > 1):
            p.error("--project needs --step-ms > 0, --params > 0 and --gpus > 1")
        step_s = args.step_ms / 1e3
        print_projection(step_s, args.params, args.gpus, project(step_s, args.params, args.gpus))
    elif args.gpu or args.single:
        if args.gpu and not torch.cuda.is_available():
            print("ddp_overhead --gpu: no CUDA device here, nothing measured. (--single --device cpu rehearses it.)")
            return 0
        return single_device_mode(torch.device(args.device), args.size, args.rounds, args.json)
    else:
        with tempfile.TemporaryDirectory(prefix="ddp_overhead-") as scratch:  # where each process leaves its time
            cpu_mode(args.rounds, Path(scratch), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

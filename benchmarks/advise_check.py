"""Check ``tangtoc advise``'s GPU prediction against a measurement on the GPU that is here.

For the small MLP, the small CNN and GPT-2 124M (batch 8 x 1024 tokens; 2 on GPUs under 40 GB), on the first
CUDA device: count the training step, predict it for this GPU from the hardware table (link bandwidth measured
here with a pinned copy), measure it with ``tangtoc.bench.measure`` (fp32 with the batch copied every step, fp32,
tf32 and bf16 with the data resident), and report predicted / measured. The goal: within a factor of 1.5 (issue
7; ``gpu_check`` judges it). Bounded to about ``--budget-s`` seconds (default 40): models that would start after
it are skipped and say so. The JSON is rewritten after every measured row, and SIGTERM ends the run with what was
measured written (``"complete": false``).

On a machine without CUDA it prints a "no GPU" note and exits 0 (``--dry-run-on-cpu`` exercises the script on the
CPU against the H100's prediction, with tiny models; the ratios then mean nothing).

Run:  python benchmarks/advise_check.py [--json PATH] [--budget-s S]   (benchmarks/gpu_check.sh runs it)
It is a measurement: it exits 0 whatever the ratios are, 1 when a case crashed, 143 when SIGTERM cut it short.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tangtoc.advise.count import count_step
from tangtoc.advise.predict import Assumptions, low_precision, predict
from tangtoc.advise.recommend import measure_link, measure_step
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec, lookup
from tangtoc.models import GPT, MLP, MLPConfig, gpt_config
from tangtoc.models.cnn import CNN, CNNConfig
from tangtoc.train.signals import Terminated, sigterm_as_interrupt

GOAL = 1.5  # predicted within this factor of measured, for compute-bound models


def workloads(dry_run: bool, big_gpu: bool) -> list[tuple[str, Any, Any, Any]]:
    """(name, model, batch, loss_fn) for each model checked."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp_batch = (torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen))
    cnn_batch = (torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen))
    gpt_name, gpt_batch = ("tiny", 4) if dry_run else ("gpt2", 8 if big_gpu else 2)
    cfg = gpt_config(gpt_name)
    idx = torch.randint(0, cfg.vocab_size, (gpt_batch, cfg.block_size + 1), generator=gen)
    return [
        ("mlp small (batch 64)", MLP(MLPConfig()), mlp_batch, F.cross_entropy),
        ("cnn small (batch 64)", CNN(CNNConfig()), cnn_batch, F.cross_entropy),
        (f"gpt {gpt_name} (batch {gpt_batch} x {cfg.block_size})", GPT(cfg), (idx[:, :-1], idx[:, 1:]), None),
    ]


def check(
    name: str, model: Any, batch: Any, loss_fn: Any, device: torch.device, spec: HardwareSpec, a: Assumptions
) -> Iterator[dict[str, Any]]:
    """One row per variant, yielded as soon as it is measured."""
    counts = {"fp32": count_step(model, batch, loss_fn=loss_fn)}
    counts["bf16"] = count_step(model, batch, loss_fn=loss_fn, precision="bf16")
    low = low_precision(spec)
    variants = [("fp32", "copied"), ("fp32", "resident"), ("tf32", "resident"), (low, "resident")]
    for precision, data in variants:
        count = counts["bf16" if precision in ("bf16", "fp16") else "fp32"]
        p = predict(count, spec, precision=precision, assumptions=a)
        m = measure_step(
            model, batch, device, precision=precision, data=data, loss_fn=loss_fn, min_time=0.2, max_time=1.0
        )
        yield {
            "model": name,
            "precision": precision,
            "data": data,
            "predicted_s": p.step_s(data),
            "measured_s": m.median,
            "ratio": p.step_s(data) / m.median,
            "limited_by": p.limited_by,
            "kernels": p.kernels,
            "flops": p.flops,
            "bytes": p.bytes,
            "measurement": m.to_dict(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows and the machine they came from")
    parser.add_argument(
        "--budget-s", type=float, default=40.0, help="skip models that would start after this many seconds (default 40)"
    )
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="exercise the script without a GPU")
    args = parser.parse_args(argv)
    if args.dry_run_on_cpu:
        device, spec, gpu_name = torch.device("cpu"), BY_SHORT_NAME["h100"], "none (dry run: CPU vs h100 prediction)"
    elif not torch.cuda.is_available():
        print("advise_check: no GPU here (torch.cuda.is_available() is False): nothing to check. It compares the")
        print("predicted GPU step of `tangtoc advise` with a measured one, so it needs an NVIDIA GPU.")
        return 0
    else:
        device = torch.device("cuda", 0)
        gpu_name = torch.cuda.get_device_name(device)
        found = lookup(gpu_name)
        if found is None:
            print(f"advise_check: {gpu_name} is not in tangtoc's hardware table, so there is no prediction to check.")
            return 0
        spec = found
    a = Assumptions()
    link = "assumed"
    if device.type == "cuda":
        bw = measure_link(device)
        a = Assumptions(link_bandwidth=bw, link_name=f"measured on {device}, pageable")
        link = f"{bw / 1e9:.1f} GB/s measured"
    big = device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= 40e9
    started, rows, failed, skipped = time.perf_counter(), [], [], []
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "gpu": gpu_name,
        "dry_run_on_cpu": args.dry_run_on_cpu,
        "spec": spec.name,
        "link": link,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "assumptions": list(a.lines(spec)),
    }

    def save(complete: bool) -> None:
        """Rewrite the JSON with every row so far: a run cut short still leaves its measurements."""
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {"meta": {**meta, "wall_s": time.perf_counter() - started}, "complete": complete,
                       "goal_factor": GOAL, "rows": rows, "failed": failed, "skipped": skipped}  # fmt: skip
            args.json.write_text(json.dumps(payload, indent=2))

    status = 0
    try:
        with sigterm_as_interrupt():
            for name, model, batch, loss_fn in workloads(args.dry_run_on_cpu, big):
                if time.perf_counter() - started > args.budget_s:
                    skipped.append(name)
                    continue
                try:
                    for row in check(name, model, batch, loss_fn, device, spec, a):
                        rows.append(row)
                        save(complete=False)
                except Exception as e:  # one model failing (out of memory, say) must not hide the others
                    failed.append(f"{name}: {type(e).__name__}: {e}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        save(complete=True)
    except Terminated:
        print("advise_check: terminated (SIGTERM): writing what was measured", file=sys.stderr)
        save(complete=False)
        status = 143
    wall = time.perf_counter() - started
    print(f"advise_check on {gpu_name} ({spec.name} in the table; host link {link}); torch {torch.__version__}")
    print(f"{'model':<34} {'precision':<9} {'data':<9} {'predicted':>10} {'measured':>10} {'pred/meas':>9}  limited by")
    for r in rows:
        print(
            f"{r['model']:<34} {r['precision']:<9} {r['data']:<9} {r['predicted_s'] * 1e3:>8.3f}ms "
            f"{r['measured_s'] * 1e3:>8.3f}ms {r['ratio']:>9.2f}  {r['limited_by']}"
        )
    within = [r for r in rows if 1 / GOAL <= r["ratio"] <= GOAL]
    ratios = ", ".join(f"{r['ratio']:.2f}" for r in rows) or "none"
    print(f"{len(within)}/{len(rows)} predictions within {GOAL}x of measured (issue 7's goal); all ratios: {ratios}")
    for s in skipped:
        print(f"skipped (over the {args.budget_s:.0f} s budget): {s}")
    for f in failed:
        print(f"FAILED: {f}")
    print(f"done in {wall:.0f} s")
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())

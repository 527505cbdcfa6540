"""How much does ``tangtoc.to_device`` cost compared with the alternatives, on one realistic nested batch?

Contenders, all timed in one run on the same batch and the same ``torch.device`` object:

1. ``tangtoc.to_device(batch, device)``
2. a hand-written recursive walk (the natural code a user writes: isinstance checks, ``.to(device)``)
3. ``accelerate.utils.send_to_device(batch, device)``            (skipped if accelerate is not installed)
4. Lightning's ``move_data_to_device(batch, device)``             (skipped if lightning is not installed)

Scenarios:

* ``cpu -> cpu``  : nothing moves, every tensor is already there; this is the pure walk overhead.
* ``cpu -> meta`` : every tensor is re-created on another device (``meta`` stands in for a second device on
  a CPU-only machine: the dispatch and allocation path of a real move, without copying any bytes).
* ``cpu -> cuda`` : only when CUDA is available; each call is followed by ``torch.cuda.synchronize()`` so
  the copies are included, which then dominate the time.

Method: every contender's output is checked first (same structure, every tensor on the target device) so a
wrong result is never timed. After a discarded warm-up, for ``--rounds`` rounds, every contender is timed
once per round with ``torch.utils.benchmark.Timer.blocked_autorange``, in a rotating order, so machine noise
hits all of them alike; the table reports the median over rounds. One torch thread.

Run:  python benchmarks/move_overhead.py [--quick] [--min-run-time S] [--rounds N] [--json PATH]
It is a measurement: it exits 0 whether or not the goals are met, and prints the verdict as measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench

import tangtoc

RATIO_GOAL = 1.3  # to_device may cost at most this many times the hand-written walk
HAND = "hand-written walk"
TANGTOC = "tangtoc.to_device"
ACCELERATE = "accelerate send_to_device"
LIGHTNING = "lightning move_data_to_device"
TITLES = {
    "cpu→cpu": "cpu → cpu: nothing moves (pure walk overhead)",
    "cpu→meta": "cpu → meta: every tensor re-created on another device",
    "cpu→cuda": "cpu → cuda: copies included (synchronized after each call); the copy dominates",
}


# ----------------------------------------------------------------------------------------------------------
# The batch


Targets = namedtuple("Targets", ["boxes", "classes", "weights"])


def make_batch(batch_size: int = 32, seq_len: int = 128) -> dict[str, Any]:
    """A realistic nested batch, built on the CPU: 16 tensors, 32 strings and a few plain numbers."""
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, 30_000, (batch_size, seq_len), generator=g, dtype=torch.int64),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.int64),
        "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.int64),
        "labels": torch.randint(0, 10, (batch_size,), generator=g, dtype=torch.int64),
        "targets": Targets(
            boxes=torch.rand(batch_size, 4, generator=g),
            classes=torch.randint(0, 80, (batch_size,), generator=g),
            weights=torch.rand(batch_size, generator=g),
        ),
        "crops": [torch.rand(3, 32, 32, generator=g) for _ in range(8)],
        "extra": {
            "pixel_values": torch.rand(batch_size, 3, 32, 32, generator=g),
            "lengths": torch.full((batch_size,), seq_len, dtype=torch.int64),
        },
        "ids": [f"sample-{i:05d}" for i in range(batch_size)],
        "epoch": 3,
        "step": 1200,
        "split": "train",
    }


def count_leaves(obj: Any) -> tuple[int, int]:
    """(tensors, other leaves) in a batch."""
    if isinstance(obj, torch.Tensor):
        return 1, 0
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        sums = [count_leaves(v) for v in obj]
        return sum(s[0] for s in sums), sum(s[1] for s in sums)
    return 0, 1


# ----------------------------------------------------------------------------------------------------------
# The contenders


def hand_walk(obj: Any, device: torch.device) -> Any:
    """The recursive walk a user would write by hand."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: hand_walk(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [hand_walk(v, device) for v in obj]
    if isinstance(obj, tuple):
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*(hand_walk(v, device) for v in obj))
        return tuple(hand_walk(v, device) for v in obj)
    return obj


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def load_contenders() -> tuple[dict[str, Callable[[Any, torch.device], Any]], dict[str, str]]:
    """The callables to time, and for each framework that is missing, why it is skipped."""
    fns: dict[str, Callable[[Any, torch.device], Any]] = {TANGTOC: tangtoc.to_device, HAND: hand_walk}
    skipped: dict[str, str] = {}
    try:
        from accelerate.utils import send_to_device

        fns[ACCELERATE] = send_to_device
    except ImportError as e:
        skipped[ACCELERATE] = f"not installed ({e})"
    move = None
    errors = []
    for module in ("lightning.fabric.utilities.apply_func", "lightning_fabric.utilities.apply_func"):
        try:
            move = __import__(module, fromlist=["move_data_to_device"]).move_data_to_device
            break
        except ImportError as e:
            errors.append(str(e))
    if move is not None:
        fns[LIGHTNING] = move
    else:
        skipped[LIGHTNING] = f"not installed ({'; '.join(errors)})"
    return fns, skipped


# ----------------------------------------------------------------------------------------------------------
# Correctness, checked before anything is timed


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def check_same(ref: Any, out: Any, device: torch.device, path: str = "batch") -> None:
    """Assert ``out`` is ``ref`` rebuilt with the same structure and every tensor on ``device``."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(out, torch.Tensor), f"{path}: expected a tensor, got {type(out).__name__}"
        assert _on(out, device), f"{path}: tensor on {out.device}, expected {device}"
        assert out.shape == ref.shape and out.dtype == ref.dtype, f"{path}: shape/dtype changed"
        if device.type != "meta":
            assert torch.equal(out.cpu(), ref), f"{path}: values changed"
        return
    assert type(out) is type(ref), f"{path}: type {type(out).__name__}, expected {type(ref).__name__}"
    if isinstance(ref, dict):
        assert list(out) == list(ref), f"{path}: keys {list(out)}, expected {list(ref)}"
        for k in ref:
            check_same(ref[k], out[k], device, f"{path}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(out) == len(ref), f"{path}: length {len(out)}, expected {len(ref)}"
        for i, (r, o) in enumerate(zip(ref, out, strict=True)):
            check_same(r, o, device, f"{path}[{i}]")
    else:
        assert out == ref, f"{path}: {out!r} != {ref!r}"


# ----------------------------------------------------------------------------------------------------------
# Timing


def time_scenario(
    fns: dict[str, Callable[[Any, torch.device], Any]],
    batch: Any,
    device: torch.device,
    rounds: int,
    min_run_time: float,
    sync: bool,
) -> dict[str, dict[str, Any]]:
    """Per contender: the per-call median of each round (seconds) and the runs behind it."""
    stmt = "fn(batch, device); torch.cuda.synchronize()" if sync else "fn(batch, device)"
    timers = {
        name: tbench.Timer(stmt=stmt, globals={"fn": fn, "batch": batch, "device": device}, num_threads=1)
        for name, fn in fns.items()
    }
    names = list(fns)
    for name in names:  # warm-up, discarded: caches, branch predictors, CPU clock ramp-up
        timers[name].blocked_autorange(min_run_time=min(0.2, min_run_time))
    per_round: dict[str, list[float]] = {n: [] for n in names}
    runs: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotate the order: each contender takes every position in turn
            m = timers[name].blocked_autorange(min_run_time=min_run_time)
            per_round[name].append(m.median)
            runs[name].append(m.number_per_run * len(m.raw_times))
    return {n: {"round_medians_s": per_round[n], "calls_per_round": runs[n]} for n in names}


def summarise(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    hand = raw[HAND]["round_medians_s"]
    out = {}
    for name, r in raw.items():
        t = r["round_medians_s"]
        # The ratio measured inside each round (same moment, same machine state), then its median.
        ratios = [a / b for a, b in zip(t, hand, strict=True)]
        out[name] = {
            **r,
            "median_us": statistics.median(t) * 1e6,
            "min_us": min(t) * 1e6,
            "max_us": max(t) * 1e6,
            "ratio_to_hand": statistics.median(t) / statistics.median(hand),
            "round_ratios_to_hand": ratios,
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# Goals


def check_goals(results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> list[dict[str, Any]]:
    goals = []
    for scenario, res in results.items():
        td = res[TANGTOC]
        ratios = td["round_ratios_to_hand"]
        goals.append(
            {
                "scenario": scenario,
                "goal": f"to_device ≤ {RATIO_GOAL}× hand-written walk",
                "met": td["ratio_to_hand"] <= RATIO_GOAL,
                "detail": f"{td['ratio_to_hand']:.2f}× (ratio within each round: {min(ratios):.2f}–{max(ratios):.2f}×)",
            }
        )
        for other in (ACCELERATE, LIGHTNING):
            if other in skipped:
                goals.append(
                    {
                        "scenario": scenario,
                        "goal": f"to_device faster than {other}",
                        "met": None,
                        "detail": skipped[other],
                    }
                )
                continue
            o = res[other]
            pairs = zip(td["round_medians_s"], o["round_medians_s"], strict=True)
            faster_rounds = sum(a < b for a, b in pairs)
            goals.append(
                {
                    "scenario": scenario,
                    "goal": f"to_device faster than {other}",
                    "met": td["median_us"] < o["median_us"],
                    "detail": (
                        f"{td['median_us']:.1f} µs vs {o['median_us']:.1f} µs "
                        f"({o['median_us'] / td['median_us']:.2f}× as fast; faster in {faster_rounds}/"
                        f"{len(td['round_medians_s'])} rounds)"
                    ),
                }
            )
    return goals


# ----------------------------------------------------------------------------------------------------------
# Output


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def metadata(args: argparse.Namespace, batch: Any) -> dict[str, Any]:
    n_tensors, n_other = count_leaves(batch)
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "tangtoc": _version("tangtoc"),
        "accelerate": _version("accelerate"),
        "lightning": _version("lightning", "lightning-fabric"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "batch": {"tensors": n_tensors, "non_tensor_leaves": n_other},
    }


def print_report(
    results: dict[str, dict[str, Any]], skipped: dict[str, str], goals: list[dict[str, Any]], meta: dict
) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None

    header = (
        f"torch {meta['torch']}, Python {meta['python']}, {meta['cpu_model']}, "
        f"{meta['cpus_usable']} usable cores, "
        f"{meta['torch_threads']} torch thread; batch: {meta['batch']['tensors']} tensors + "
        f"{meta['batch']['non_tensor_leaves']} other leaves; {meta['rounds']} rounds × "
        f"min_run_time {meta['min_run_time_s']} s, median over rounds"
    )
    console = Console() if Console is not None else None
    print(header)
    for scenario, res in results.items():
        rows = [
            (
                name,
                f"{r['median_us']:.1f}",
                f"{r['min_us']:.1f}–{r['max_us']:.1f}",
                f"{r['ratio_to_hand']:.2f}×",
            )
            for name, r in res.items()
        ]
        rows += [(name, "not installed", "", "") for name in skipped]
        cols = ("contender", "µs / call", "min–max", "× hand-written")
        title = TITLES[scenario]
        if console is not None:
            table = Table(title=title, title_justify="left")
            for i, c in enumerate(cols):
                table.add_column(c, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        else:
            print(f"\n{title}")
            widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
            for row in (cols, *rows):
                print(
                    "  ".join(
                        str(x).ljust(w) if i == 0 else str(x).rjust(w)
                        for i, (x, w) in enumerate(zip(row, widths, strict=True))
                    )
                )
    print("\nGoals:")
    for g in goals:
        verdict = "NOT CHECKED" if g["met"] is None else "MET" if g["met"] else "MISSED"
        print(f"  [{g['scenario']}] {g['goal']}: {verdict} — {g['detail']}")
    checked = [g for g in goals if g["met"] is not None]
    missed = [g for g in checked if not g["met"]]
    if not checked:
        print("Verdict: no goal could be checked.")
    elif missed:
        print(f"Verdict: {len(missed)} of {len(checked)} checked goals MISSED.")
    else:
        print(f"Verdict: all {len(checked)} checked goals met.")


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing (default 0.5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, median reported (default 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 0.1 s (overrides both)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number and the metadata here")
    args = p.parse_args(argv)
    if args.quick:
        args.min_run_time, args.rounds = 0.1, 3
    if args.rounds < 1 or args.min_run_time <= 0:
        p.error("--rounds must be >= 1 and --min-run-time > 0")

    torch.set_num_threads(1)
    started = time.perf_counter()
    fns, skipped = load_contenders()
    batch = make_batch()

    scenarios: list[tuple[str, torch.device, bool]] = [
        ("cpu→cpu", torch.device("cpu"), False),
        ("cpu→meta", torch.device("meta"), False),
    ]
    if torch.cuda.is_available():
        scenarios.append(("cpu→cuda", torch.device("cuda"), True))

    # Never time a wrong result: every contender must rebuild the batch with every tensor on the target.
    for _, device, _sync in scenarios:
        for name, fn in fns.items():
            try:
                check_same(batch, fn(batch, device), device)
            except AssertionError as e:
                raise AssertionError(f"{name} gave a wrong result for {device}: {e}") from e

    results = {}
    for scenario, device, sync in scenarios:
        results[scenario] = summarise(time_scenario(fns, batch, device, args.rounds, args.min_run_time, sync))
    meta = metadata(args, batch)
    meta["wall_time_s"] = round(time.perf_counter() - started, 1)
    goals = check_goals(results, skipped)
    print_report(results, skipped, goals, meta)
    print(f"(wall time {meta['wall_time_s']} s)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"metadata": meta, "skipped": skipped, "results": results, "goals": goals}
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

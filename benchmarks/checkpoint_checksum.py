"""What the tensor checksums cost a checkpoint save (issue 13 item 5).

A GPT's model and AdamW state (after one step, so the optimizer holds its moments) is saved with
``tangtoc.train.save_checkpoint`` into a temporary folder; separately, the part the checksums add (a CRC-32 over
every tensor's bytes, :func:`tangtoc.train.integrity.tensor_checksums`) is timed on the same state. Both are the
median of ``--rounds`` runs on one torch thread, on the host clock of ``tangtoc.clock``. The save includes the
fsyncs, so it depends on the disk; the checksums only on the CPU.

Run:  python benchmarks/checkpoint_checksum.py [--sizes tiny mini small] [--rounds N]
It is a measurement: it prints the numbers and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from tangtoc.clock import now
from tangtoc.models import GPT, gpt_config
from tangtoc.train import load_checkpoint, save_checkpoint
from tangtoc.train.integrity import tensor_checksums


def _median_s(action: Callable[[], object], rounds: int) -> float:
    action()  # warm-up: first-touch allocations, imports
    times = []
    for _ in range(rounds):
        started = now()
        action()
        times.append(now() - started)
    return statistics.median(times)


def measure(size: str, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = GPT(gpt_config(size))
    optimizer = torch.optim.AdamW(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()  # any gradient: AdamW's step makes its moments
    optimizer.step()
    state = {"step": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": {}, "data": {}}
    moments = [t for per_param in optimizer.state.values() for t in per_param.values()]
    nbytes = sum(t.numel() * t.element_size() for t in [*state["model"].values(), *moments])
    with tempfile.TemporaryDirectory() as folder:
        save_s = _median_s(lambda: save_checkpoint(state, folder, keep_last=1), rounds)
        path = Path(folder) / "step-00000001.pt"
        load_s = _median_s(lambda: load_checkpoint(path), rounds)
    crc_s = _median_s(lambda: tensor_checksums(state), rounds)
    return {"mib": nbytes / 2**20, "save_s": save_s, "crc_s": crc_s, "load_s": load_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mini", "small"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'size':>6} {'tensors MiB':>12} {'save ms':>9} {'of it CRC ms':>13} {'CRC share':>10} {'load ms':>9}")
    for size in args.sizes:
        m = measure(size, args.rounds)
        print(
            f"{size:>6} {m['mib']:>12.2f} {m['save_s'] * 1e3:>9.2f} {m['crc_s'] * 1e3:>13.2f} "
            f"{m['crc_s'] / m['save_s']:>10.1%} {m['load_s'] * 1e3:>9.2f}"
        )


if __name__ == "__main__":
    main()

"""A deliberately sync-heavy training loop, and the same loop fixed (seed 3.2 and 6.3).

    python examples/sync_heavy.py                     # trains; every classic hidden sync and copy is planted
    tangtoc audit examples/sync_heavy.py --steps 5    # finds each one at its line
    tangtoc audit examples/sync_heavy.py --fixed --steps 5

Every planted line ends with a ``# planted: <what tangtoc audit reports>`` comment; tests/test_cli_audit.py
checks that the audit reports exactly these lines and nothing else. On a CPU-only machine nothing actually
waits or moves, and the audit reports what each line *would* do on a GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import tangtoc as tt


def make_model(device: torch.device) -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)


def train_sync_heavy(steps: int, batch_size: int, device: torch.device) -> float:
    data = torch.randn(4096, 32)  # planted: torch.randn
    labels = (data[:, 0] > 0).long()
    model = make_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = 0.0
    for step in range(steps):
        i = (step * batch_size) % len(data)
        x = data[i : i + batch_size].to(device)  # planted: .to()
        y = labels[i : i + batch_size].to(device)  # planted: .to()
        noise = torch.randn(x.shape) * 0.01  # planted: torch.randn
        logits = model(x + noise.to(device))  # planted: .to()
        loss = F.cross_entropy(logits, y, reduction="none")
        hard = loss[loss > loss.mean()]  # planted: x[bool mask]
        loss = loss.mean() + 0.1 * hard.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()  # planted: .item()
        accuracy = (logits.argmax(1) == y).float().mean().item()  # planted: .item()
        if loss < 1e-3:  # planted: bool(tensor) / if tensor:
            break
        print(f"step {step}: loss {loss:.4f}, accuracy {accuracy:.2f}")  # planted: format(tensor) / f-string
    return total / max(steps, 1)


def train_fixed(steps: int, batch_size: int, device: torch.device, log_every: int = 10) -> float:
    # The data set fits on the device: create it there once, slice batches there (no copy per step).
    data = torch.randn(4096, 32, device=device)
    labels = (data[:, 0] > 0).long()
    model = make_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = torch.zeros((), device=device)  # accumulate on the device; read at log intervals
    for step in range(steps):
        i = (step * batch_size) % len(data)
        x, y = data[i : i + batch_size], labels[i : i + batch_size]
        logits = model(x + torch.randn(x.shape, device=device) * 0.01)
        loss = F.cross_entropy(logits, y, reduction="none")
        hard_weight = (loss > loss.mean()).float()  # a mask with a fixed shape: no data-dependent size
        loss = loss.mean() + 0.1 * (loss * hard_weight).sum() / hard_weight.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.detach()
        if (step + 1) % log_every == 0:
            loss_v, acc_v = tt.fetch(loss, (logits.argmax(1) == y).float().mean())  # one transfer, one sync
            print(f"step {step}: loss {loss_v:.4f}, accuracy {acc_v:.2f}")
    (mean,) = tt.fetch(total / max(steps, 1))
    return float(mean)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fixed", action="store_true", help="run the fixed loop instead")
    args = p.parse_args()
    device = tt.pick_device()
    train = train_fixed if args.fixed else train_sync_heavy
    mean = train(args.steps, args.batch_size, device)
    print(f"{'fixed' if args.fixed else 'sync-heavy'} loop on {device}: mean loss {mean:.4f}")


if __name__ == "__main__":
    main()

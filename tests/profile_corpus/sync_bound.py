"""Sync-bound on a GPU: a loss read with .item() every step, so host and device take turns."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

device = torch.device(args.device)
model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(1024, 1024), nn.ReLU())], nn.Linear(1024, 10))
model.to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(512, 1024, device=device)
y = torch.randint(0, 10, (512,), device=device)
losses = []
for _ in range(1000):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())  # every step: the host waits for the whole step's kernels
    if torch.isnan(loss):  # and again: a Python `if` on a device tensor
        break

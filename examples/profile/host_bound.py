"""Host-bound: a tiny model of many small layers, a few samples per step: hundreds of tiny operations."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

device = torch.device(args.device)
layers = []
for _ in range(40):
    layers += [nn.Linear(8, 8), nn.LayerNorm(8), nn.GELU()]
model = nn.Sequential(*layers, nn.Linear(8, 2)).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(4, 8, device=device)
y = torch.randint(0, 2, (4,), device=device)
for _ in range(1000):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

"""Compute-bound: a wide MLP on data that stays on the device, sliced there."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--width", type=int, default=1024)
parser.add_argument("--batch", type=int, default=256)
args = parser.parse_args()

device = torch.device(args.device)
width = args.width
data = torch.randn(4096, width, device=device)
labels = torch.randint(0, 10, (4096,), device=device)
model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
model.to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
batch = args.batch
for step in range(1000):
    i = (step * batch) % len(data)
    loss = nn.functional.cross_entropy(model(data[i : i + batch]), labels[i : i + batch])
    opt.zero_grad()
    loss.backward()
    opt.step()

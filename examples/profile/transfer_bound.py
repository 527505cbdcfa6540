"""Transfer-bound on a GPU: a large batch kept in pageable host memory, copied to the device every step."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

device = torch.device(args.device)
host_batch = torch.randn(256, 3, 224, 224)  # 154 MB of float32 in pageable memory
model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 10)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
y = torch.randint(0, 10, (256,), device=device)
for _ in range(1000):
    x = host_batch.to(device)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

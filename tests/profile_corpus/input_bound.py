"""Input-bound: a Dataset doing per-sample Python work, read with no workers, feeding a small model."""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
args = parser.parse_args()


class Noisy(Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        features = [((i * 7919 + j * 104729) % 1000) / 1000.0 for j in range(32)]
        for _ in range(80):  # per-sample feature work in pure Python: the classic slow __getitem__
            features = [0.5 * f + 0.25 * (f * f) for f in features]
        return torch.tensor(features), i % 4


device = torch.device(args.device)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(Noisy(), batch_size=32, shuffle=True)
for x, y in loader:
    x, y = x.to(device), y.to(device)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

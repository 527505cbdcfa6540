"""Input-bound: a Dataset doing per-sample Python work, read with no workers, feeding a small model.

tangtoc profile examples/profile/input_bound.py --steps 10               # input-bound: the loop waits for data
tangtoc profile examples/profile/input_bound.py --workers 2 --steps 10   # the fix the verdict names
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Noisy(Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        features = [((i * 7919 + j * 104729) % 1000) / 1000.0 for j in range(32)]
        for _ in range(80):  # per-sample feature work in pure Python: the classic slow __getitem__
            features = [0.5 * f + 0.25 * (f * f) for f in features]
        return torch.tensor(features), i % 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Noisy(), batch_size=32, shuffle=True, num_workers=args.workers)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":  # DataLoader workers started by spawn import this file: they must not train
    main()

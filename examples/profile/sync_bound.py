"""Sync-bound on a GPU: every step reads the predictions on the host to update a confusion matrix in Python.

`logits.argmax(1).tolist()` waits for the whole step to finish on the GPU; then the GPU idles while Python counts.
Host and device take turns instead of overlapping. Counting on the device (`torch.bincount(t * k + p)`) and reading
the matrix at log intervals lets them overlap. `tangtoc audit` names the line; `tangtoc profile` says what it costs.
"""

import argparse

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=1)  # GPU work per sample near the host's counting
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = 10
    blocks = [m for _ in range(args.layers) for m in (nn.Linear(1024, 1024), nn.ReLU())]
    model = nn.Sequential(*blocks, nn.Linear(1024, classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch, 1024, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    targets = y.tolist()
    confusion = [[0] * classes for _ in range(classes)]
    for _ in range(1000):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for p, t in zip(logits.argmax(1).tolist(), targets, strict=True):  # the host waits, then counts alone
            confusion[t][p] += 1


if __name__ == "__main__":
    main()

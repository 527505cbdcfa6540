"""Sync-bound on a GPU: a check in every layer reads a device tensor on the host, so host and device take turns.

Each `if not torch.isfinite(x).all()` waits for the layer to finish on the GPU before Python launches the next one;
the loss is read with `.item()` every step too. `tangtoc audit` names each line; `tangtoc profile` says what it costs.
"""

import argparse

import torch
from torch import nn


class Checked(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear(x))
        if not torch.isfinite(x).all():  # a Python `if` on a device tensor: the host waits for the GPU
            raise FloatingPointError("non-finite activations")
        return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)  # on an H200: 2048 is host-bound, 6144 compute-bound
    args = parser.parse_args()
    device = torch.device(args.device)
    model = nn.Sequential(*[Checked(1024) for _ in range(24)], nn.Linear(1024, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch, 1024, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    losses = []
    for _ in range(1000):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())  # every step: the host waits for the whole step's kernels


if __name__ == "__main__":
    main()

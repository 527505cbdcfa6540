"""A classifier fed by a Dataset that builds its tensors in __getitem__, through a DataLoader, with the batch
moved by `.to(device, non_blocking=True)` from unpinned memory. The model keeps one tensor as a registered
buffer (moved with the model) and a 0-dim one as a plain attribute (a scalar to GPU kernels): no finding.

    tangtoc audit tests/audit_corpus/dataset_getitem.py --steps 3

Each line the audit must report ends with ``# planted: <op>``.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset


class NoisyPoints(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.points = torch.randn(n, 16, generator=g).numpy()
        self.labels = (self.points[:, 0] > 0).astype("int64")

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.points[i])
        noise = torch.randn(16) * 0.05  # planted: torch.randn
        return x + noise, torch.tensor(self.labels[i])


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
        self.register_buffer("scale", torch.full((16,), 0.5))
        self.temperature = torch.tensor(2.0)  # 0-dim: GPU kernels take it as a plain scalar, no copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale) / self.temperature


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = DataLoader(NoisyPoints(256), batch_size=16, shuffle=True)
    model = Classifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(3):
        correct = torch.zeros((), device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # planted: .to()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(1) == y).sum()
        print(f"epoch {epoch}: accuracy {correct.item() / len(loader.dataset):.2f}")


if __name__ == "__main__":
    main()

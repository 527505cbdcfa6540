"""A sequence classifier: an LSTM over padded batches packed with pack_padded_sequence, whose lengths must
stay on the CPU, fed by a DataLoader over a TensorDataset.

    tangtoc audit tests/audit_corpus/lstm_packed.py --steps 3

Each line the audit must report ends with ``# planted: <op>``. The lengths stay on the host by design (no
finding for them); pack_padded_sequence's own copy of the sort order to the device is reported at the line that
calls it.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, TensorDataset

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
x = torch.randn(128, 10, 8)  # planted: torch.randn
lengths = torch.randint(1, 11, (128,))
y = torch.randint(0, 3, (128,))  # planted: torch.randint
loader = DataLoader(TensorDataset(x, lengths, y), batch_size=16, shuffle=True)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)  # planted: .to()
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


model = Net().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
criterion = nn.CrossEntropyLoss()
for epoch in range(2):
    for i, (xb, lb, yb) in enumerate(loader):
        xb, yb = xb.to(device), yb.to(device)  # planted: .to()
        loss = criterion(model(xb, lb), yb)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if i % 2 == 0:
            print(f"epoch {epoch} it {i} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]}")  # planted: .item()

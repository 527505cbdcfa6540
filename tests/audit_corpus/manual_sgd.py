"""Linear regression trained by hand, without an optimizer: `p.data.add_(p.grad, alpha=-lr)` after each
backward(), as in the classic PyTorch tutorials.

    tangtoc audit tests/audit_corpus/manual_sgd.py --steps 3

With no optimizer.step() to count, the audit counts the backward() calls whose gradients were used. Each
line the audit must report ends with ``# planted: <op>``.
"""

import torch
from torch import nn

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
true_w = torch.randn(8, 1)
X = torch.randn(512, 8)
Y = X @ true_w + 0.1 * torch.randn(512, 1)
X, Y = X.to(device), Y.to(device)
model = nn.Linear(8, 1).to(device)
lr = 0.1
history = []
for _epoch in range(50):
    loss = ((model(X) - Y) ** 2).mean()
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    history.append(loss.item())  # planted: .item()
    if loss < 1e-3:  # planted: bool(tensor) / if tensor:
        break
print(f"final loss {history[-1]:.4f} after {len(history)} epochs")

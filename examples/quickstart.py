"""The seed's four steps (3.1) with tangtoc: set up on the CPU, move, compute on the device, bring back.

Run: python examples/quickstart.py   (TANGTOC_DEVICE=cpu forces the CPU)
"""

from collections import namedtuple

import numpy as np
import torch
from torch import nn

import tangtoc as tt

Extra = namedtuple("Extra", "weights note")

# 1. Create the model and a batch on the CPU: a realistic batch mixes tensors, NumPy and plain Python.
device = tt.pick_device()
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
batch = {
    "x": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32),  # NumPy: .to() cannot move it
    "y": [0, 1, 2, 3, 0, 1, 2, 3],  # a Python list: neither can it
    "extra": Extra(weights=torch.ones(4), note="epoch 1"),
}
print(f"device: {device} ({tt.describe(device).name})")

# 2. Move model and batch: one call for any nest; lists become tensors with tt.as_tensor.
model = tt.to_device(model, device)
batch = tt.to_device(batch, device)
targets = tt.as_tensor(batch["y"], device)
print(f"model on {tt.device_of(model)}, batch on {tt.device_of(batch)}, targets on {targets.device}")

# 3. Compute on the device; data created there directly needs no transfer (seed 4.3).
noise = torch.randn(8, 16, device=device) * 0.01
logits = model(batch["x"] + noise)
loss = nn.functional.cross_entropy(logits, targets, weight=batch["extra"].weights)
accuracy = (logits.argmax(1) == targets).float().mean()

# 4. Bring results back: two scalars with one transfer, and the logits as a NumPy array.
loss_v, acc_v = tt.fetch(loss, accuracy)
probs = tt.to_numpy(logits.softmax(1))
print(f"loss {loss_v:.4f}, accuracy {acc_v:.2f}, probabilities {probs.shape} {probs.dtype} "
      f"(note kept: {batch['extra'].note!r})")

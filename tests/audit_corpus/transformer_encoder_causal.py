"""A next-token model around nn.TransformerEncoder with a causal mask, as in PyTorch's word_language_model
example: the mask is built once on the device and passed at every call.

    tangtoc audit tests/audit_corpus/transformer_encoder_causal.py --steps 3

Each line the audit must report ends with ``# planted: <op>``. The encoder compares the mask with a causal
one on the host at every call (``bool((mask == causal).all())`` in ``_detect_is_causal_mask``): reported at
the user's line that calls the encoder, in ``forward``, naming that function. The log line reads the loss
every 2nd step only.
"""

import math

import torch
from torch import nn

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ntokens, d_model, seq_len, batch_size = 50, 32, 12, 8


class TransformerModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(ntokens, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, ntokens)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(src) * math.sqrt(d_model)
        return self.decoder(self.encoder(x, mask=src_mask))  # planted: bool(tensor) / if tensor:


model = TransformerModel().to(device)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
src_mask = nn.Transformer.generate_square_subsequent_mask(seq_len, device=device)
data = torch.randint(0, ntokens, (64, seq_len + 1), device=device)  # the whole corpus, resident on the device

model.train()
for step in range(100):
    batch = data[(step * batch_size) % 64 :][:batch_size]
    inputs, targets = batch[:, :-1], batch[:, 1:]
    output = model(inputs, src_mask)
    loss = criterion(output.reshape(-1, ntokens), targets.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    optimizer.step()
    if step % 2 == 0:
        print(f"step {step}: loss {loss.item():.3f}")  # planted: .item()

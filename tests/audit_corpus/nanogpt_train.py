"""A nanoGPT-style train.py: config globals overridden from the command line, np.memmap batches, a tiny GPT,
gradient accumulation, a GradScaler, eval losses collected in a CPU tensor.

    python tests/audit_corpus/nanogpt_train.py --device=cpu --max_iters=20
    tangtoc audit tests/audit_corpus/nanogpt_train.py --device=cpu --steps 3

Each line the audit must report ends with ``# planted: <op>`` (``# planted on cuda:`` for the branch only a
GPU run takes); tests/test_cli_audit.py checks that exactly these are reported. The eval losses
(``losses = torch.zeros(eval_iters)``, ``losses[k] = ...``), the batch index into the memmap (``ix``) and the
causal-mask buffer stay on the CPU or move with the model: no finding.
"""

import argparse
import math
import os
import tempfile
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# default config values, overridden from the command line as --key=value
out_dir = tempfile.mkdtemp(prefix="nanogpt-")
eval_interval = 50
log_interval = 1
eval_iters = 3
gradient_accumulation_steps = 2
batch_size = 4
block_size = 16
n_layer = 1
n_head = 2
n_embd = 32
dropout = 0.0
learning_rate = 6e-4
max_iters = 20
weight_decay = 1e-1
grad_clip = 1.0
device = "cuda"  # 'cpu', 'cuda', 'cuda:1', 'mps'...
dtype = "float32"
# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser()
for key, value in list(globals().items()):
    if not key.startswith("_") and isinstance(value, (int, float, str)):
        parser.add_argument(f"--{key}", type=type(value), default=value)
globals().update(vars(parser.parse_args()))
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str))}


class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        # causal mask to ensure that attention is only applied to the left in the input sequence
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        k = k.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, n_head, C // n_head).transpose(1, 2)
        v = v.view(B, T, n_head, C // n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block() for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        device = idx.device
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=device)  # shape (t)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


# poor man's data set: token ids in a uint16 file, read through np.memmap like nanoGPT's prepare.py output
vocab_size = 65
for split, n in (("train", 4096), ("val", 1024)):
    np.random.default_rng(0).integers(0, vocab_size, n, dtype=np.uint16).tofile(os.path.join(out_dir, f"{split}.bin"))
device_type = "cuda" if "cuda" in device else "cpu"  # for later use in torch.autocast
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = nullcontext() if device_type == "cpu" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)


def get_batch(split: str):
    # We recreate np.memmap every batch to avoid a memory leak, as per
    # https://stackoverflow.com/questions/45132940/numpy-memmap-memory-usage-want-to-iterate-once/61472122#61472122
    data = np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy((data[i : i + block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + block_size]).astype(np.int64)) for i in ix])
    if device_type == "cuda":
        # pin arrays x,y, which allows us to move them to GPU asynchronously (non_blocking=True)
        x = x.pin_memory().to(device, non_blocking=True)  # planted on cuda: .to()
        y = y.pin_memory().to(device, non_blocking=True)  # planted on cuda: .to()
    else:
        x, y = x.to(device), y.to(device)  # planted on cpu: .to()
    return x, y


torch.manual_seed(1337)
model = GPT(vocab_size)
model.to(device)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.95))


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss.item()  # planted: .item()
        out[split] = losses.mean()
    model.train()
    return out


X, Y = get_batch("train")  # fetch the very first batch
iter_num = 0
best_val_loss = 1e9
while True:
    if iter_num % eval_interval == 0:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if losses["val"] < best_val_loss:
            best_val_loss = losses["val"]
    for _micro_step in range(gradient_accumulation_steps):
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # scale the loss to account for gradient accumulation
        # immediately async prefetch next batch while model is doing the forward pass on the GPU
        X, Y = get_batch("train")
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if iter_num % log_interval == 0:
        # get loss as float. note: this is a CPU-GPU sync point
        lossf = loss.item() * gradient_accumulation_steps  # planted: .item()
        print(f"iter {iter_num}: loss {lossf:.4f}")
    iter_num += 1
    if iter_num > max_iters:
        break

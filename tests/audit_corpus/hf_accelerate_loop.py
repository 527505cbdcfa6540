"""A custom Hugging Face training loop with accelerate: a tiny GPT-2 built from its config (nothing downloaded),
variable-length samples padded in a collate function into a BatchEncoding, and the loop from accelerate's
examples.

    tangtoc audit tests/audit_corpus/hf_accelerate_loop.py --steps 3

Each line the audit must report ends with ``# planted: <op>``. Two are inside the libraries and reported at
the line that called them: accelerate's DataLoader copies every batch to the device, and transformers reads
the padding mask on the host to decide whether it can drop it.
"""

import argparse

import torch
from accelerate import Accelerator
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers import BatchEncoding, GPT2Config, GPT2LMHeadModel


def collate(samples: list[list[int]]) -> BatchEncoding:
    ids = [torch.tensor(s) for s in samples]
    masks = [torch.ones(len(s), dtype=torch.long) for s in samples]  # planted: torch.ones
    input_ids = pad_sequence(ids, batch_first=True, padding_value=0)
    labels = pad_sequence(ids, batch_first=True, padding_value=-100)
    attention_mask = pad_sequence(masks, batch_first=True, padding_value=0)
    return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()

    accelerator = Accelerator()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 12, (64,), generator=g).tolist()
    samples = [torch.randint(1, 100, (n,), generator=g).tolist() for n in lengths]
    train_dataloader = DataLoader(samples, batch_size=args.batch_size, shuffle=True, collate_fn=collate)

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)

    model.train()
    for epoch in range(args.epochs):
        total_loss = 0
        for step, batch in enumerate(train_dataloader):  # planted: .to()
            outputs = model(**batch)  # planted: bool(tensor) / if tensor:
            loss = outputs.loss
            total_loss += loss.detach().float()
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            accelerator.print(f"epoch {epoch} step {step}: loss {loss.item():.4f}")  # planted: .item()
        accelerator.print(f"epoch {epoch}: mean loss {total_loss.item() / (step + 1):.4f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A trained MiniCPM-shaped test model, for studies that need a perplexity that means something.

usage: train_minicpm.py [--steps N] [OUT_DIR]   (default tests/data/families/minicpm-trained)

tests/data/families/minicpm has random weights (its goldens test the forward pass, not
quality). This script starts from that model's config (MiniCPM scalings: scale_emb, scale_depth,
dim_model_base; tied head; 3 layers of hidden 64) and trains it from a fixed seed with AdamW on
tests/data/tiny-a/calib.ids.u32 (the tiny-a tokenizer's ids, vocab 4096), so that the tiny-a
tokenizer, copied beside it, reads and writes its text. Writes OUT_DIR/{config.json,
generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json} in BF16 as
save_pretrained does, and prints the loss curve and the held-out loss on val.ids.u32.

Development machine only (PyTorch, transformers); exaq never needs Python. docs/models.md
("AWQ study on MiniCPM") records the command and what was measured on the result.
"""
import argparse
import math
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import minicpm_ref  # noqa: E402  (registers model_type minicpm)
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


def lm_loss(model, x):
    """Mean next-token cross-entropy of x [B][T] (the reference's forward returns logits only)."""
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             x[:, 1:].reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "tests/data/families/minicpm-trained"))
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    src = os.path.join(ROOT, "tests/data/families/minicpm")
    cfg = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    data = torch.from_numpy(np.fromfile(os.path.join(ROOT, "tests/data/tiny-a/calib.ids.u32"),
                                        dtype="<u4").astype(np.int64))
    val = torch.from_numpy(np.fromfile(os.path.join(ROOT, "tests/data/tiny-a/val.ids.u32"),
                                       dtype="<u4").astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    warm = max(1, a.steps // 20)
    model.train()
    for step in range(a.steps):
        lr = a.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        starts = torch.randint(0, data.numel() - a.seq - 1, (a.batch,), generator=g)
        x = torch.stack([data[s:s + a.seq] for s in starts.tolist()])
        loss = lm_loss(model, x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {lr:.2e}", flush=True)
    model.eval()
    with torch.no_grad():
        n = (min(val.numel(), 64 * a.seq) // a.seq) * a.seq
        v = val[:n].view(-1, a.seq)
        vl = sum(lm_loss(model, v[i:i + 8]).item()
                 for i in range(0, v.shape[0], 8)) / math.ceil(v.shape[0] / 8)
    print(f"held-out loss {vl:.4f} (ppl {math.exp(vl):.2f}) over {n} tokens of val.ids.u32")
    os.makedirs(a.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "tests/data/tiny-exaone4", f), os.path.join(a.out, f))


if __name__ == "__main__":
    main()

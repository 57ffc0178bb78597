#!/usr/bin/env python3
"""Gradient goldens for worker/train/grad.c from PyTorch autograd (tests/unit/train/test_grad.c).

usage: make_grad_goldens.py   (from the repository root; writes tests/data/grad/)

Two models:
  tiny    tests/data/tiny-exaone4 (the trained tiny-a: all full attention with RoPE, tied head),
          the first T = 48 ids of tests/data/tiny-a/val.ids.u32 -> tiny_grads.safetensors;
  hybrid  a small random EXAONE-4 made here with transformers and saved to tests/data/grad/hybrid/
          (BF16, transformers-5 config style): hidden 32, 3 layers (sliding window 4 with RoPE,
          sliding, then a global NoPE layer), 4 query heads on 2 KV heads of 8, MLP 48, vocab 61,
          untied lm_head, weights N(0, 0.3^2) and norms 1 + N(0, 0.2^2) so every path carries
          gradient; T = 40 seeded random ids -> hybrid_grads.safetensors.
Each checkpoint is loaded with transformers (Exaone4ForCausalLM, eager attention) in float64, so
the reference carries no rounding of its own at fp32 scale, and the file holds, for two losses:
  ce  mean next-token cross-entropy over the T - 1 positions;
  kd  ce_weight * CE + (1 - ce_weight) * temperature^2 * mean KL(teacher || student at
      temperature), both over the positions where `mask` is 1 (mask[t] = 0 for t % 5 == 2 and
      for t = T - 1), ce_weight 0.5, temperature 2; the teacher is the same model with every
      weight perturbed by 5% of its tensor's standard deviation (seeded normal noise), and its
      log-probabilities at the temperature are stored (F32) and used as stored on both sides;
the loss ("<loss>.loss", F32 [1]), and for every parameter the gradient at the fixed subset of
flat indices range(0, n, max(1, n // 1024)) ("<loss>.<name>", F32) and the L2 norm of its whole
gradient ("<loss>.norm.<name>", F32 [1]). Also "ids" (I32 [T]), "mask" (I32 [T]),
"teacher_logp" (F32 [T, V]), "temperature" and "ce_weight" (F32 [1]). The tied lm_head has no
entry of its own: its gradient is part of model.embed_tokens.weight's, as in exaq (the hybrid
model's untied lm_head.weight has its own).

Needs torch, transformers, safetensors, numpy (development machine only; the tests read the
committed file).
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, Exaone4Config, Exaone4ForCausalLM

T = 48
TEMPERATURE = 2.0
CE_WEIGHT = 0.5
PERTURB = 0.05
SEED = 20261207


def subset(n):
    return np.arange(0, n, max(1, n // 1024))


def grads(model, ids, loss_fn):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=torch.tensor(ids[None, :], dtype=torch.long)).logits[0]
    loss = loss_fn(logits)
    loss.backward()
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().reshape(-1).numpy()
        out[name] = g
    return float(loss.item()), out


def make_golden(model_dir, ids, out):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager")
    model.eval()
    T = ids.size

    # Teacher: perturbed copy, log-probabilities at the temperature, rounded to fp32.
    teacher = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager")
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, p in sorted(teacher.named_parameters()):
            p.add_(PERTURB * p.std() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        tl = teacher(input_ids=torch.tensor(ids[None, :])).logits[0]
        teacher_logp = torch.log_softmax(tl / TEMPERATURE, dim=-1).float().numpy()
    tlp = torch.tensor(teacher_logp, dtype=torch.float64)

    mask = np.array([0 if (t % 5 == 2 or t == T - 1) else 1 for t in range(T)], dtype=np.int32)
    targets = torch.tensor(ids[1:])

    def ce_loss(logits):
        lp = torch.log_softmax(logits[:-1], dim=-1)
        return -lp.gather(1, targets[:, None]).mean()

    def kd_loss(logits):
        on = torch.tensor(mask[:-1] == 1)
        lp = torch.log_softmax(logits[:-1], dim=-1)
        ce = -lp.gather(1, targets[:, None])[:, 0][on].mean()
        ls = torch.log_softmax(logits[:-1] / TEMPERATURE, dim=-1)
        pt = tlp[:-1].exp()
        kl = (pt * (tlp[:-1] - ls)).sum(-1)[on].mean()
        return CE_WEIGHT * ce + (1 - CE_WEIGHT) * TEMPERATURE ** 2 * kl

    tensors = {
        "ids": ids.astype(np.int32),
        "mask": mask,
        "teacher_logp": teacher_logp.astype(np.float32),
        "temperature": np.array([TEMPERATURE], dtype=np.float32),
        "ce_weight": np.array([CE_WEIGHT], dtype=np.float32),
    }
    for tag, fn in (("ce", ce_loss), ("kd", kd_loss)):
        loss, g = grads(model, ids, fn)
        tensors[tag + ".loss"] = np.array([loss], dtype=np.float32)
        for name, v in g.items():
            tensors[f"{tag}.{name}"] = v[subset(v.size)].astype(np.float32)
            tensors[f"{tag}.norm.{name}"] = np.array([np.linalg.norm(v)], dtype=np.float32)
        print(f"{model_dir} {tag}: loss {loss:.6f}, {len(g)} parameters")
    save_file(tensors, out, metadata={"source": "tests/tools/make_grad_goldens.py"})
    os.chmod(out, 0o644)
    print("wrote", out)


def make_hybrid(out_dir):
    cfg = Exaone4Config(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)
    gen = torch.Generator().manual_seed(SEED + 1)
    model = Exaone4ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.to(torch.bfloat16).save_pretrained(out_dir)
    for f in os.listdir(out_dir):
        os.chmod(os.path.join(out_dir, f), 0o644)


def main():
    os.makedirs("tests/data/grad", exist_ok=True)
    ids = np.fromfile("tests/data/tiny-a/val.ids.u32", dtype="<u4")[:T].astype(np.int64)
    make_golden("tests/data/tiny-exaone4", ids, "tests/data/grad/tiny_grads.safetensors")
    make_hybrid("tests/data/grad/hybrid")
    rng = np.random.default_rng(SEED)
    hids = rng.integers(0, 61, size=40).astype(np.int64)
    make_golden("tests/data/grad/hybrid", hids, "tests/data/grad/hybrid_grads.safetensors")


if __name__ == "__main__":
    main()

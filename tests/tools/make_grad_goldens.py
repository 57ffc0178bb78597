#!/usr/bin/env python3
"""Gradient goldens for worker/train/grad.c from PyTorch autograd (tests/unit/train/test_grad.c).

usage: make_grad_goldens.py [MODEL_DIR] [IDS_FILE] [OUT]
       (defaults: tests/data/tiny-exaone4 tests/data/tiny-a/val.ids.u32
        tests/data/grad/tiny_grads.safetensors)

Loads the checkpoint with transformers (Exaone4ForCausalLM, eager attention) in float64, so the
reference carries no rounding of its own at fp32 scale, takes the first T = 48 ids of IDS_FILE
and writes, for two losses:
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
entry of its own: its gradient is part of model.embed_tokens.weight's, as in exaq.

Needs torch, transformers, safetensors, numpy (development machine only; the tests read the
committed file).
"""
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

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


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tiny-exaone4"
    ids_file = sys.argv[2] if len(sys.argv) > 2 else "tests/data/tiny-a/val.ids.u32"
    out = sys.argv[3] if len(sys.argv) > 3 else "tests/data/grad/tiny_grads.safetensors"
    torch.manual_seed(SEED)
    ids = np.fromfile(ids_file, dtype="<u4")[:T].astype(np.int64)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float64, attn_implementation="eager")
    model.eval()

    # Teacher: perturbed copy, log-probabilities at the temperature, rounded to fp32.
    teacher = AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float64, attn_implementation="eager")
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
        print(f"{tag}: loss {loss:.6f}, {len(g)} parameters")
    save_file(tensors, out, metadata={"source": "tests/tools/make_grad_goldens.py"})
    print("wrote", out)


if __name__ == "__main__":
    main()
